"""Conformance of the small public modules a user's own code calls, against their docstrings:
captum_global.maps, captum_global.targets, captum_global.contract (scoring, seeding) and
captum_global.lineup (targets, model state, global RNG, the documented method settings).

Only what tests/test_internals.py, test_contract.py, test_target_classes.py and test_benchmark.py
do not already check."""
import random

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import nn

from captum_global.contract import (
    index_additional_args,
    iter_scores,
    make_generator,
    parse_target,
    preserved_global_rng,
    score_all,
    seeded_global_rng,
)
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError
from captum_global.maps import NO_SIGNAL_RTOL, minmax_normalise, otsu_threshold, resize_maps, to_heatmap
from captum_global.targets import target_classes

# ---------------------------------------------------------------- maps.to_heatmap

# [N=2, C=2, H=1, W=3]; channel sums: example 0 -> [3, -1, 0], example 1 -> [-4, 2, 0]
_ATTR = torch.tensor([[[[1.0, -2.0, 1.0]], [[2.0, 1.0, -1.0]]],
                      [[[-1.0, 1.0, 0.5]], [[-3.0, 1.0, -0.5]]]])
_SUMS = torch.tensor([[[3.0, -1.0, 0.0]], [[-4.0, 2.0, 0.0]]])
_EXPECTED = {
    "positive": torch.tensor([[[3.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]]),
    "absolute": torch.tensor([[[3.0, 1.0, 0.0]], [[4.0, 2.0, 0.0]]]),
    "all": _SUMS,
}


@pytest.mark.parametrize("sign", ["positive", "absolute", "all"])
def test_to_heatmap_every_sign_on_every_documented_shape(sign):
    expected = _EXPECTED[sign]
    assert torch.equal(to_heatmap(_ATTR, sign=sign), expected)  # input-shaped [N, C, H, W]
    assert torch.equal(to_heatmap((_ATTR,), sign=sign), expected)  # Captum's 1-tuple
    layer_shaped = _SUMS.unsqueeze(1)  # [N, 1, h, w]
    assert torch.equal(to_heatmap(layer_shaped, sign=sign), expected)
    assert torch.equal(to_heatmap((layer_shaped,), sign=sign), expected)
    assert torch.equal(to_heatmap(_SUMS, sign=sign), expected)  # already [N, H, W]
    assert to_heatmap(_ATTR.double(), sign=sign).dtype == torch.float64


def test_to_heatmap_refusals():
    with pytest.raises(InvalidArgumentError, match="2-tuple"):
        to_heatmap((_ATTR, _ATTR))
    with pytest.raises(InvalidArgumentError, match="0-tuple"):
        to_heatmap(())
    with pytest.raises(InvalidArgumentTypeError, match="got ndarray"):
        to_heatmap(_ATTR.numpy())
    with pytest.raises(InvalidArgumentError, match=r"\(2, 2, 1, 3, 1\)"):
        to_heatmap(_ATTR.unsqueeze(-1))
    with pytest.raises(InvalidArgumentError, match="sign must be"):
        to_heatmap(_ATTR, sign="negative")


# ---------------------------------------------------------------- maps.minmax_normalise


def test_minmax_hand_computed_negative_and_mixed_maps():
    maps = torch.tensor([[[-4.0, -2.0], [-3.0, -1.0]],  # all negative: min -4, span 3
                         [[-1.0, 1.0], [0.0, 3.0]]])  # mixed: min -1, span 4
    expected = torch.tensor([[[0.0, 2 / 3], [1 / 3, 1.0]], [[0.0, 0.5], [0.25, 1.0]]])
    assert torch.allclose(minmax_normalise(maps), expected)


def test_minmax_constant_and_zero_maps_are_zero_whatever_their_sign_or_dtype():
    for dtype in (torch.float32, torch.float64):
        maps = torch.stack([torch.zeros(2, 2), torch.full((2, 2), -5.0), torch.full((2, 2), 1e-30)]).to(dtype)
        out = minmax_normalise(maps)
        assert out.dtype == dtype and torch.equal(out, torch.zeros_like(maps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minmax_no_signal_tolerance_is_relative_to_the_magnitude(dtype):
    base = 1000.0
    below = torch.full((1, 1, 4), base, dtype=dtype)
    below[0, 0, 0] += 0.5 * NO_SIGNAL_RTOL * base  # spread half the tolerance: no signal
    assert torch.equal(minmax_normalise(below), torch.zeros_like(below))
    above = torch.full((1, 1, 4), base, dtype=dtype)
    above[0, 0, 0] += 4 * NO_SIGNAL_RTOL * base  # four times the tolerance: a real (if small) signal
    assert torch.equal(minmax_normalise(above), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]], dtype=dtype))
    # tiny magnitudes keep their map: the tolerance is relative, never absolute
    tiny = torch.tensor([[[0.0, 1e-13, 3e-13, 4e-13]]], dtype=dtype)
    assert torch.allclose(minmax_normalise(tiny), torch.tensor([[[0.0, 0.25, 0.75, 1.0]]], dtype=dtype))


def test_minmax_float64_keeps_its_precision_and_maps_are_independent():
    maps = torch.tensor([[1.0, 1.0 + 3e-4], [0.0, 7.0]], dtype=torch.float64)  # spread 3e-4 of the magnitude
    out = minmax_normalise(maps)
    assert out.dtype == torch.float64 and out.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_minmax_start_dim_normalises_each_channel_separately():
    maps = torch.tensor([[[[0.0, 2.0]], [[10.0, 20.0]]]])  # [1, 2, 1, 2]
    assert torch.equal(minmax_normalise(maps, start_dim=2), torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]]))
    assert torch.allclose(minmax_normalise(maps), torch.tensor([[[[0.0, 0.1]], [[0.5, 1.0]]]]))


# ---------------------------------------------------------------- maps.resize_maps


def test_resize_maps_is_captum_bilinear_for_up_down_and_non_square_sizes():
    maps = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    for size in ((16, 9), (3, 4), (5, 14)):
        ours = resize_maps(maps, size)
        theirs = LayerAttribution.interpolate(maps, size, interpolate_mode="bilinear")
        assert ours.shape == (2, 3, *size) and torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(resize_maps(maps, (5, 7)), maps)
    # align_corners=False by hand: a [1, 2] map doubled to [1, 4] is [a, (3a+b)/4, (a+3b)/4, b]
    two = torch.tensor([[[[0.0, 4.0]]]])
    assert torch.equal(resize_maps(two, (1, 4)), torch.tensor([[[[0.0, 1.0, 3.0, 4.0]]]]))


# ---------------------------------------------------------------- maps.otsu_threshold


def _otsu_by_hand(values, bins):
    """Textbook Otsu over the levels 0, 1/(bins-1), ..., 1: the level maximising w0 w1 (mu0 - mu1)^2."""
    levels = [round(v * (bins - 1)) for v in values]
    best, best_level = -1.0, 0
    for t in range(bins):
        low = [v for v in levels if v <= t]
        high = [v for v in levels if v > t]
        if not low or not high:
            continue
        w0, w1 = len(low) / len(levels), len(high) / len(levels)
        between = w0 * w1 * (sum(low) / len(low) - sum(high) / len(high)) ** 2
        if between > best + 1e-12:
            best, best_level = between, t
    return best_level / (bins - 1)


def test_otsu_matches_a_hand_computed_otsu_on_tiny_histograms():
    # bins=4: levels 0, 1/3, 2/3, 1. Map 0 (level indices [0, 0, 0, 1, 3, 3]): a split after level 0 gives
    # (1/2)(1/2)(0 - 7/3)^2 = 1.36, after level 1 (2/3)(1/3)(1/4 - 3)^2 = 1.68, so t = 1/3
    maps = torch.tensor([[0.0, 0.0, 0.0, 1 / 3, 1.0, 1.0],
                         [0.0, 2 / 3, 2 / 3, 2 / 3, 1.0, 1.0],
                         [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    t = otsu_threshold(maps, bins=4)
    expected = [_otsu_by_hand(row.tolist(), 4) for row in maps]
    assert expected == [1 / 3, 0.0, 0.0]
    assert torch.allclose(t, torch.tensor(expected))
    # the foreground is maps > t
    assert (maps > t[:, None]).sum(1).tolist() == [2, 5, 1]


def test_otsu_accepts_any_map_shape_and_keeps_the_dtype():
    maps = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    maps[:, :, :2] = 0.9
    t = otsu_threshold(maps)
    assert t.shape == (2,) and t.dtype == torch.float64
    assert ((maps > t.view(2, 1, 1, 1)).sum((1, 2, 3)) == 8).all()


# ---------------------------------------------------------------- targets.target_classes


@pytest.mark.parametrize("target, expected", [
    (torch.tensor([[2]]), [2, 2, 2]),  # one element, any shape, as Captum
    (np.array([1, 0, 4], dtype=np.int32), [1, 0, 4]),
    (np.int32(-2), [3, 3, 3]),
    ([np.int64(4), (0,), -5], [4, 0, 0]),
    (torch.tensor([-1, 0, 1], dtype=torch.int32), [4, 0, 1]),
    ((np.int64(2),), [2, 2, 2]),
])
def test_target_classes_more_formats(target, expected):
    assert target_classes(target, 3, num_classes=5) == expected


@pytest.mark.parametrize("target, match", [
    (torch.tensor([True, False, True]), "integer tensor"),
    (np.bool_(True), "integer indices"),
    ("2", "integer indices"),
    (np.array([1.0, 2.0, 3.0]), "integer class indices"),
    (np.array([1, 2]), "NumPy array of 2 entries.*torch.as_tensor"),
    (torch.tensor([[1, 2, 3]]), r"shape \[N\]"),
    ([1, 2, 3, 4], "list of 4 entries"),
    ([(1,), (2, 0), (3,)], "same number of dimensions"),
    ([1, 2, 5], r"target 5 \(example 2\) is out of range"),
    ({1: 2}, "integer indices"),
])
def test_target_classes_refusals_name_target(target, match):
    with pytest.raises(InvalidArgumentError, match=match) as info:
        target_classes(target, 3, num_classes=5)
    assert "target" in str(info.value)


def test_target_classes_sizes_refuse_bools_and_floats():
    with pytest.raises(InvalidArgumentTypeError, match="num_examples"):
        target_classes(0, True, num_classes=5)
    with pytest.raises(InvalidArgumentTypeError, match="num_classes"):
        target_classes(0, 2, num_classes=2.0)
    assert target_classes(1, np.int64(2), num_classes=np.int32(2)) == [1, 1]


# ---------------------------------------------------------------- contract: scoring


class _Echo(nn.Module):
    """Returns its extra argument as the class scores: the score is the routed argument itself."""

    def forward(self, x, extra, offset=0.0):
        return extra + offset + 0 * x.flatten(1).sum(1, keepdim=True)


def _build_copies(x, n):
    def build(flat):
        examples = flat % n
        return x[examples], examples

    return build


@pytest.mark.parametrize("target", [1, [0, 2, 1], torch.tensor([2, 2, 0]), [(1,), (0,), (2,)]])
def test_per_example_forward_args_follow_their_example_for_every_chunk_size(target):
    n, total = 3, 10
    x = torch.zeros(n, 2)
    extra = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])  # [N, classes]
    targets = parse_target(target, n)
    classes = targets.checked((n, 3)).classes()
    flat = torch.arange(total)
    expected = torch.tensor([extra[i % n, classes[i % n]].item() + 0.5 for i in range(total)])
    results = []
    for chunk in (1, 2, 3, 4, 7, 10, 64):
        scores = score_all(_Echo(), total, _build_copies(x, n), targets, additional_forward_args=(extra, 0.5),
                           chunk_size=chunk)
        results.append(scores)
        assert torch.equal(scores, expected), chunk
        chunks = list(iter_scores(_Echo(), total, lambda f: (*_build_copies(x, n)(f), f * 2), targets,
                                  additional_forward_args=(extra, 0.5), chunk_size=chunk))
        assert torch.equal(torch.cat([c.flat for c in chunks]), flat)
        assert torch.equal(torch.cat([c.examples for c in chunks]), flat % n)
        assert all(torch.equal(c.payload, c.flat * 2) for c in chunks)
        assert torch.equal(torch.cat([c.scores for c in chunks]), expected)


def test_a_single_extra_tensor_is_routed_like_a_tuple():
    extra = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    scores = score_all(_Echo(), 4, _build_copies(torch.zeros(2, 1), 2), parse_target(1, 2),
                       additional_forward_args=extra, chunk_size=3)
    assert scores.tolist() == [2.0, 4.0, 2.0, 4.0]


def test_index_additional_args_routes_only_per_example_tensors():
    per_example = torch.tensor([10.0, 20.0, 30.0])
    shared = torch.tensor([1.0, 2.0])  # first dimension is not N: passed as is
    scalar = torch.tensor(5.0)
    rows = torch.tensor([2, 0, 0, 1])
    routed = index_additional_args((per_example, shared, scalar, "text", 3), rows, 3)
    assert routed[0].tolist() == [30.0, 10.0, 10.0, 20.0]
    assert routed[1] is shared and routed[2] is scalar and routed[3:] == ("text", 3)
    assert index_additional_args(None, rows, 3) is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_raise_whatever_the_chunk(bad):
    extra = torch.tensor([[1.0, 2.0], [3.0, bad]])
    for chunk in (1, 3, 8):
        with pytest.raises(NonFiniteOutputError, match=r"example\(s\) \[1\]"):
            score_all(_Echo(), 4, _build_copies(torch.zeros(2, 1), 2), parse_target(1, 2), (extra,),
                      chunk_size=chunk)
    # a NaN outside the target column is never selected, so it is not an error
    assert score_all(_Echo(), 2, _build_copies(torch.zeros(2, 1), 2), parse_target(0, 2), (extra,)).tolist() == \
        [1.0, 3.0]


def test_no_inputs_give_no_scores():
    assert score_all(_Echo(), 0, None, parse_target(0, 1)).shape == (0,)
    assert list(iter_scores(_Echo(), 0, None, parse_target(0, 1))) == []


# ---------------------------------------------------------------- contract: seeding


def test_make_generator_never_consumes_the_global_rng():
    state = torch.get_rng_state()
    a = torch.rand(4, generator=make_generator(11))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(a, torch.rand(4, generator=make_generator(12)))


def test_seeded_global_rng_is_the_seeds_state_and_the_callers_comes_back():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    with seeded_global_rng(42):
        drawn = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(42)
    random.seed(42)
    np.random.seed(42)
    assert torch.equal(drawn[0], torch.rand(3)) and drawn[1] == random.random() and drawn[2] == np.random.rand()
    torch.set_rng_state(before[0])
    random.setstate(before[1])
    np.random.seed(3)
    with pytest.raises(KeyError):
        with seeded_global_rng(7):
            raise KeyError("boom")
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    # nested: the inner block restores the outer one's state
    with preserved_global_rng():
        torch.manual_seed(5)
        inner = torch.get_rng_state()
        with seeded_global_rng(9):
            torch.rand(10)
        assert torch.equal(torch.get_rng_state(), inner)
    assert torch.equal(torch.get_rng_state(), before[0])


# ---------------------------------------------------------------- lineup

H = 16


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def _images(n=2):
    return torch.rand(n, 3, H, H, generator=torch.Generator().manual_seed(7))


_FAST = ["Grad-CAM", "Occlusion", "Integrated Gradients", "SISE (budget 25%)"]


@pytest.fixture(scope="module")
def lineup():
    from captum_global.lineup import build_lineup

    model = _bn_net().eval()
    return model, build_lineup(model, _images(1))


@pytest.mark.parametrize("name", _FAST)
def test_lineup_explain_honours_every_target_format(lineup, name):
    model, explainers = lineup
    x = _images()
    reference = explainers[name](x, torch.tensor([2, 2]))
    for target in (2, -1, (2,), np.int64(2), [2, -1], [(2,), (-1,)], torch.tensor([2]), torch.tensor(2),
                   np.array([2, 2])):
        assert torch.allclose(explainers[name](x, target), reference, atol=1e-6), (name, target)
    per_example = explainers[name](x, [0, 1])
    assert torch.allclose(per_example[0], explainers[name](x[:1], 0)[0], atol=1e-5)
    assert torch.allclose(per_example[1], explainers[name](x[1:], 1)[0], atol=1e-5)
    for bad, match in ((3, "target 3"), ([0], "list of 1"), (1.0, "target must hold"), (None, "target is required")):
        with pytest.raises(InvalidArgumentError, match=match):
            explainers[name](x, bad)


@pytest.mark.parametrize("name", _FAST + ["SISE"])
def test_lineup_leaves_the_model_and_the_global_rng_as_found(name):
    from captum_global.lineup import build_lineup

    model = _bn_net().train()
    model[4].weight.requires_grad_(False)
    model[1].eval()  # a mixed state must come back as is
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    training = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    rng = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    explain = build_lineup(model, _images(1), [name])[name]
    out = explain(_images(), [1, 0])
    assert torch.isfinite(out).all()
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # BN statistics included
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())


def test_lineup_settings_are_the_documented_ones(lineup):
    """docs/measurements/benchmark.md's table: Grad-CAM on lineup.last_spatial_layer, ReLU, bilinear
    interpolate; Occlusion window 1/8 of the side, stride half of it, all channels; IG 50 steps, black
    baseline; SISE with the package defaults, the budget entry with max_maps_per_layer=0.25, the paper
    entry with SISE_PAPER_SETTINGS."""
    from captum_global.attr import SISE
    from captum_global.lineup import LINEUP, SISE_PAPER_SETTINGS, build_lineup, last_spatial_layer

    model, explainers = lineup
    x, t = _images(), torch.tensor([1, 2])
    assert [(s.name, s.family) for s in LINEUP] == [
        ("SISE", "ours"), ("SISE (paper settings)", "ours"), ("SISE (budget 25%)", "ours"),
        ("Grad-CAM", "captum"), ("Occlusion", "captum"), ("Integrated Gradients", "captum")]
    assert SISE_PAPER_SETTINGS == {"similarity_threshold": None, "fusion": "otsu", "score": "logit"}
    layer = last_spatial_layer(model, x)
    assert layer is model[5]
    cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
    assert torch.allclose(explainers["Grad-CAM"](x, t),
                          LayerAttribution.interpolate(cam, (H, H), interpolate_mode="bilinear"), atol=1e-6)
    occ = Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3, 2, 2), strides=(3, 1, 1))
    assert torch.allclose(explainers["Occlusion"](x, t), occ, atol=1e-5)
    ig = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=50)
    assert torch.allclose(explainers["Integrated Gradients"](x, t), ig, atol=1e-5)
    assert not torch.allclose(explainers["Integrated Gradients"](x, t),
                              IntegratedGradients(model).attribute(x, target=t, n_steps=32), atol=1e-5)
    sise = SISE(model)
    assert torch.allclose(explainers["SISE (budget 25%)"](x, t),
                          sise.attribute(x, target=t, max_maps_per_layer=0.25), atol=1e-5)
    small = _images(1)
    paper = build_lineup(model, small, ["SISE (paper settings)", "SISE"])
    assert torch.allclose(paper["SISE (paper settings)"](small, 1),
                          sise.attribute(small, target=1, **SISE_PAPER_SETTINGS), atol=1e-5)
    assert torch.allclose(paper["SISE"](small, 1), sise.attribute(small, target=1), atol=1e-5)


def test_occlusion_window_scales_with_the_image_side():
    """'black square window of 1/8 of the image side, stride half the window': at 32 px, 4 px and 2 px."""
    from captum_global.lineup import build_lineup

    model = _bn_net().eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = build_lineup(model, x, ["Occlusion"])["Occlusion"](x, 0)
    theirs = Occlusion(model).attribute(x, target=0, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_otsu_refuses_nan_maps_and_degenerate_bins_instead_of_crashing():
    maps = torch.tensor([[0.2, 0.8], [0.1, float("nan")]])
    with pytest.raises(NonFiniteOutputError, match=r"maps \[1\]"):
        otsu_threshold(maps)
    with pytest.raises(InvalidArgumentError, match="bins must be >= 2"):
        otsu_threshold(maps[:1], bins=1)
    # infinities are clamped into [0, 1] like any value outside it
    assert otsu_threshold(torch.tensor([[float("-inf"), 0.0, 1.0, float("inf")]]), bins=2).tolist() == [0.0]
