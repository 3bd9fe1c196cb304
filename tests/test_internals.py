"""Heat-map operations (captum_global.maps) and the model-state guard (captum_global.contract)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from captum_global.maps import minmax_normalise, otsu_threshold, resize_maps, to_heatmap
from captum_global.contract import HookBag, find_module, preserved_model_state
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError


def test_to_heatmap_reductions():
    attr = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]])  # [1, 2, 1, 2]
    assert torch.equal(to_heatmap(attr), torch.tensor([[[2.0, 0.0]]]))
    assert torch.equal(to_heatmap(attr, sign="absolute"), torch.tensor([[[2.0, 2.0]]]))
    assert torch.equal(to_heatmap((attr,), sign="all"), torch.tensor([[[2.0, -2.0]]]))
    with pytest.raises(ValueError, match="sign"):
        to_heatmap(attr, sign="bogus")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        to_heatmap(torch.zeros(3))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.floats(0.1, 100), st.floats(-50, 50))
def test_minmax_is_affine_invariant(n, scale, shift):
    x = torch.rand(n, 5, 6, generator=torch.Generator().manual_seed(n))
    ref = minmax_normalise(x)
    assert torch.allclose(minmax_normalise(x * scale + shift), ref, atol=1e-4)
    flat = ref.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(n))
    assert torch.allclose(flat.max(1).values, torch.ones(n))


def test_minmax_constant_map_is_zero_not_nan():
    out = minmax_normalise(torch.full((2, 3, 3), 7.0))
    assert torch.equal(out, torch.zeros(2, 3, 3))


def test_minmax_refuses_non_finite_maps_instead_of_zeroing_them():
    from captum_global.errors import NonFiniteOutputError

    maps = torch.zeros(3, 2, 2)
    maps[0] = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    maps[2, 0, 1] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"maps \[2\]"):
        minmax_normalise(maps)
    maps[2] = float("inf")
    maps[1] = float("nan")
    with pytest.raises(NonFiniteOutputError, match=r"maps \[1, 2\]"):
        minmax_normalise(maps)
    maps[1:] = 0.0
    assert torch.equal(minmax_normalise(maps)[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))


def test_resize_matches_captum_interpolate():
    from captum.attr import LayerAttribution

    maps = torch.rand(2, 3, 4, 5)
    ours = resize_maps(maps, (16, 20))
    theirs = LayerAttribution.interpolate(maps, (16, 20), interpolate_mode="bilinear")
    assert torch.allclose(ours, theirs)


def _between_class_variance(values: np.ndarray, threshold: float) -> float:
    high = values > threshold
    w = high.mean()
    if w in (0.0, 1.0):
        return 0.0
    return w * (1 - w) * (values[high].mean() - values[~high].mean()) ** 2


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_otsu_is_as_good_as_scikit_image(seed):
    # Binning conventions differ by a bin or two, so compare what Otsu
    # optimises: the between-class variance of the split, measured exactly.
    filters = pytest.importorskip("skimage.filters")
    gen = torch.Generator().manual_seed(seed)
    maps = torch.rand(2, 24, 24, generator=gen) ** 2
    ours = otsu_threshold(maps)
    for i in range(2):
        values = maps[i].numpy().astype(np.float64)
        theirs = filters.threshold_otsu(values, nbins=256)
        # where the objective is flat the two optima can lie several bins apart
        assert abs(float(ours[i]) - theirs) <= 16 / 255
        assert _between_class_variance(values, float(ours[i])) >= 0.99 * _between_class_variance(values, theirs)


def test_otsu_separates_two_modes():
    maps = torch.cat([torch.full((1, 50), 0.1), torch.full((1, 50), 0.9)], dim=1)
    t = otsu_threshold(maps)
    assert ((maps > t[:, None]).sum() == 50).item()


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).mean((2, 3))


def test_preserved_state_restores_flags_even_on_error():
    model = _Tiny().train()
    model.conv.weight.requires_grad_(False)
    with pytest.raises(RuntimeError):
        with preserved_model_state(model):
            assert not model.training and not model.bn.training
            for p in model.parameters():
                p.requires_grad_(True)
            raise RuntimeError("boom")
    assert model.training and model.bn.training
    assert not model.conv.weight.requires_grad and model.conv.bias.requires_grad


def test_hookbag_removes_hooks():
    model = _Tiny()
    with HookBag() as bag:
        bag.add(model.conv.register_forward_hook(lambda *a: None))
        assert len(model.conv._forward_hooks) == 1
    assert len(model.conv._forward_hooks) == 0


def test_find_module_errors_name_the_argument():
    model = _Tiny()
    assert find_module(model, "conv") is model.conv
    with pytest.raises(InvalidArgumentError, match="layers='nope' is not a submodule name"):
        find_module(model, "nope", argument="layers")
    with pytest.raises(InvalidArgumentError, match="layer must be a submodule of the model"):
        find_module(model, nn.Conv2d(1, 1, 1))
    with pytest.raises(InvalidArgumentTypeError, match="layer must be an nn.Module or a dotted module name"):
        find_module(model, 3)


def test_minmax_round_off_is_no_signal():
    base = torch.full((1, 4, 4), 3.0)
    noise = base + torch.rand(1, 4, 4) * 3.0 * 1e-7  # float round-off scale
    assert torch.equal(minmax_normalise(noise), torch.zeros(1, 4, 4))
    signal = base.clone()
    signal[0, 0, 0] += 1e-3
    out = minmax_normalise(signal)
    assert out[0, 0, 0] == 1.0 and out.sum() == 1.0


def test_preserved_model_state_can_freeze_parameters_and_gives_the_flags_back():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).train()
    model[0].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="stop"):
        with preserved_model_state(model, freeze_parameters=True):
            assert [p.requires_grad for p in model.parameters()] == [False, False, False, False]
            assert not model.training
            raise RuntimeError("stop")
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True]
    assert model.training and model[1].training
