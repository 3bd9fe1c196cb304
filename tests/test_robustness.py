"""Adversarial model manipulation (captum_global.robustness) on tiny models and a few steps."""
import random

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_global.attr import SISE
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError
from captum_global.robustness import (
    SUCCESS,
    GradCAMExplanation,
    GradientExplanation,
    SoftSISESurrogate,
    border_region,
    center_of_mass,
    center_of_mass_shift,
    fooling_penalty,
    fooling_statistic,
    fooling_success,
    location_loss,
    manipulate_model,
    rank_correlation,
    top_k_mass,
    top_k_overlap,
)

SIZE = 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is many times faster than several contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )


def planted_data(n: int, seed: int):
    """Class 1: a bright 4x4 square planted near the centre of a dark noisy image; class 0: none."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i] == 1:
            r, c = (int(v) for v in torch.randint(5, 8, (2,), generator=g))
            x[i, :, r:r + 4, c:c + 4] = 1.0
    return x, y


@pytest.fixture(scope="module")
def trained():
    """The tiny net, trained to see the planted square (one second of training)."""
    model = tiny_net()
    x, y = planted_data(32, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def batches(x, y, size=16):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


# --- measures: hand-computed values ---------------------------------------------------------------

def test_location_loss_and_border_region_by_hand():
    region = border_region(4, 4, 0.25)
    assert int(region.sum()) == 12 and not bool(region[1:3, 1:3].any())
    maps = torch.zeros(2, 4, 4)
    maps[0][region] = 1.0            # exactly the region: loss 0
    maps[1, 1:3, 1:3] = 2.0          # exactly the complement: every pixel wrong
    assert torch.allclose(location_loss(maps, region), torch.tensor([0.0, 1.0]))
    # mass share: 12 of 12 units inside, 0 of 4 inside
    assert torch.allclose(top_k_mass(maps, region), torch.tensor([1.0, 0.0]))


def test_top_k_overlap_center_of_mass_and_shift_by_hand():
    before = torch.zeros(1, 4, 4)
    before[0, 0, 0], before[0, 0, 1] = 1.0, 0.9          # top 2 of 16 = 12.5%
    after = torch.zeros(1, 4, 4)
    after[0, 0, 0], after[0, 3, 3] = 1.0, 0.9
    assert top_k_overlap(after, before, 0.125).item() == pytest.approx(0.5)
    single = torch.zeros(1, 4, 4)
    single[0, 0, 3] = 5.0
    assert torch.allclose(center_of_mass(single), torch.tensor([[0.125, 0.875]]))
    other = torch.zeros(1, 4, 4)
    other[0, 3, 3] = 1.0
    assert center_of_mass_shift(single, other).item() == pytest.approx(0.75)
    assert torch.allclose(center_of_mass(torch.zeros(1, 4, 4)), torch.tensor([[0.5, 0.5]]))  # no signal


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=9, max_size=9), st.lists(st.integers(0, 4), min_size=9, max_size=9))
def test_rank_correlation_matches_scipy_with_ties(a, b):
    scipy_stats = pytest.importorskip("scipy.stats")
    ta, tb = torch.tensor(a, dtype=torch.float32).view(1, 3, 3), torch.tensor(b, dtype=torch.float32).view(1, 3, 3)
    got = rank_correlation(ta, tb).item()
    if len(set(a)) == 1 or len(set(b)) == 1:
        assert got == 0.0                       # no ranking: no correlation
    else:
        assert got == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-5)


def test_fooling_success_thresholds():
    assert fooling_success("location", torch.tensor([0.1, 0.3])).tolist() == [True, False]
    assert fooling_success("top_k", torch.tensor([0.29, 0.31])).tolist() == [True, False]
    assert fooling_success("center_mass", torch.tensor([0.3, 0.2])).tolist() == [True, False]
    assert fooling_success("active", torch.tensor([0.1, -0.1])).tolist() == [True, False]
    assert set(SUCCESS) == {"location", "top_k", "center_mass", "active"}
    assert not fooling_success("active", torch.tensor([float("nan")])).item()
    h1, h2 = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    h1[0, 0] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    h2[0, 3] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # the new c1 map IS the old c2 map: a perfect swap scores 1, an unchanged map -1
    assert fooling_statistic("active", h2, h1, other_reference=h2).item() == pytest.approx(1.0)
    assert fooling_statistic("active", h1, h1, other_reference=h2).item() == pytest.approx(-1.0)
    # halfway: rho(h', h2) - rho(h', h1) over 1 - rho(h1, h2), by hand
    mixed = h1 + h2
    rho = rank_correlation
    expected = (rho(mixed, h2) - rho(mixed, h1)) / (1 - rho(h1, h2))
    assert fooling_statistic("active", mixed, h1, other_reference=h2).item() == pytest.approx(expected.item())
    # two original maps that rank pixels alike (rho > 0.8) cannot show a swap: NaN, not fooled
    alike = fooling_statistic("active", h2, h1, other_reference=h1 + 0.01 * h2)
    assert torch.isnan(alike).all() and not fooling_success("active", alike).any()


def test_penalties_by_hand():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0                                  # centre of mass at (1/8, 1/8)
    far = fooling_penalty("center_mass", maps, maps)     # far corner (1, 1): 7/8 + 7/8
    assert far.item() == pytest.approx(1.75)
    ref = torch.zeros(1, 4, 4)
    ref[0, 0, :2] = 1.0                                  # top 2 pixels of the reference
    assert fooling_penalty("top_k", maps, ref, top_k_fraction=0.125).item() == pytest.approx(1.0)
    a, b = torch.rand(2, 4, 4), torch.rand(2, 4, 4)
    assert fooling_penalty("active", b, a, maps_second=a, reference_second=b).item() == pytest.approx(0.0, abs=1e-7)


# --- differentiable explanations -------------------------------------------------------------------

def test_grad_cam_and_gradient_equal_captums(trained):
    x, y = planted_data(4, seed=2)
    layer = trained[5]
    captum_cam = LayerAttribution.interpolate(
        LayerGradCam(trained, layer).attribute(x, target=y, relu_attributions=True), (SIZE, SIZE),
        interpolate_mode="bilinear")[:, 0]
    assert torch.allclose(GradCAMExplanation("5")(trained, x, y), captum_cam, atol=1e-6)
    assert torch.allclose(GradCAMExplanation(layer)(trained, x, y), captum_cam, atol=1e-6)
    captum_grad = Saliency(trained).attribute(x, target=y, abs=True).sum(1)
    assert torch.allclose(GradientExplanation()(trained, x, y), captum_grad, atol=1e-6)


def test_soft_sise_surrogate_with_every_mask_is_sises_soft_variant(trained):
    x, y = planted_data(3, seed=3)
    layers = ["2", "5"]
    sise = SISE(trained, layers=layers).attribute(x, target=y, fusion="soft-otsu", similarity_threshold=None)[:, 0]
    surrogate = SoftSISESurrogate(layers, masks_per_layer=8)(trained, x, y)  # 8 >= channels: every kept map
    assert torch.allclose(surrogate, sise, atol=1e-5)
    assert surrogate.requires_grad


@pytest.mark.parametrize("fooling, explanation", [
    ("location", GradCAMExplanation("5")), ("top_k", GradCAMExplanation("5")),
    ("center_mass", GradientExplanation()), ("active", GradientExplanation()),
    ("location", SoftSISESurrogate(["2", "5"], 2)), ("top_k", SoftSISESurrogate(["2", "5"], 2)),
])
def test_penalty_is_differentiable_in_the_weights(trained, fooling, explanation):
    model = tiny_net(1).eval()
    x, y = planted_data(4, seed=4)
    reference = explanation(trained, x, y).detach()
    if fooling == "active":
        loss = fooling_penalty("active", explanation(model, x, 0), explanation(trained, x, 0).detach(),
                               maps_second=explanation(model, x, 1), reference_second=explanation(trained, x, 1).detach())
    else:
        loss = fooling_penalty(fooling, explanation(model, x, y), reference, region=border_region(SIZE, SIZE))
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


# --- manipulate_model ------------------------------------------------------------------------------

def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()))


def test_original_model_untouched_and_accuracy_reported(trained):
    model = tiny_net(2)
    model.load_state_dict(trained.state_dict())
    model.train()                                  # a model handed over in train mode, one weight frozen
    model[0].bias.requires_grad_(False)
    before = _state(model)
    x, y = planted_data(32, seed=5)
    with torch.no_grad():
        expected = (model.eval()(x).argmax(1) == y).float().mean().item()
    model.train()
    torch.manual_seed(123)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=True)
    result = manipulate_model(model, loader, "grad_cam", "top_k", steps=4, lr=1e-2, eval_every=2)
    after = _state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])   # weights and BN statistics
    assert before[1:] == after[1:]                                          # flags, requires_grad, hooks
    assert torch.equal(rng[0], torch.get_rng_state()) and rng[1] == random.getstate()
    assert np.array_equal(rng[2], np.random.get_state()[1])
    assert result.accuracy_before == pytest.approx(expected)
    with torch.no_grad():
        assert result.accuracy_after == pytest.approx((result.model(x).argmax(1) == y).float().mean().item())
    assert result.model is not model and not result.model.training
    assert [p.requires_grad for p in result.model.parameters()] == before[2]   # the copy's flags are the original's
    assert any(not torch.equal(p, q) for p, q in zip(result.model.parameters(), model.parameters()))
    assert [c["step"] for c in result.checkpoints] == [2, 4] and result.kept_step == 4
    assert len(result.history["fooling_loss"]) == 4 and result.seconds > 0
    assert result.as_dict()["accuracy_drop"] == pytest.approx(result.accuracy_before - result.accuracy_after)


def test_location_fooling_moves_grad_cam_to_the_region(trained):
    x, y = planted_data(48, seed=6)
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[:, :6] = True                           # the left side; the planted squares sit in the middle
    explain = GradCAMExplanation("5")
    result = manipulate_model(trained, batches(x, y), explain, "location", region=region, steps=60, lr=1e-2,
                              fooling_weight=5.0, eval_every=10)
    eval_x = x[y == 1]
    before, after = explain(trained, eval_x, 1).detach(), explain(result.model, eval_x, 1).detach()
    assert top_k_mass(before, region).mean() < 0.35
    assert top_k_mass(after, region).mean() > top_k_mass(before, region).mean() + 0.2
    assert location_loss(after, region).mean() < location_loss(before, region).mean()
    assert result.fooling_loss_after < result.fooling_loss_before
    assert result.accuracy_before == 1.0


def test_accuracy_guard_keeps_an_earlier_step_or_the_original(trained):
    x, y = planted_data(32, seed=7)
    result = manipulate_model(trained, batches(x, y), "gradient", "location", steps=4, lr=1.0, fooling_weight=100.0,
                              eval_every=2, max_accuracy_drop=0.0)
    assert result.accuracy_after >= result.accuracy_before
    if result.kept_step == 0:
        assert all(torch.equal(p, q) for p, q in zip(result.model.parameters(), trained.parameters()))


# --- errors ----------------------------------------------------------------------------------------

def test_non_differentiable_explanations_are_refused(trained):
    data = batches(*planted_data(8, seed=8))
    with pytest.raises(InvalidArgumentTypeError, match="not differentiable.*soft_sise"):
        manipulate_model(trained, data, SISE(trained), steps=1)
    with pytest.raises(InvalidArgumentTypeError, match="LayerGradCam is not differentiable"):
        manipulate_model(trained, data, LayerGradCam(trained, trained[5]), steps=1)

    def detached(model, inputs, target):
        return GradCAMExplanation("5")(model, inputs, target).detach()

    with pytest.raises(InvalidArgumentError, match="'detached' is not differentiable"):
        manipulate_model(trained, data, detached, steps=1)

    def constant(model, inputs, target):
        return inputs.sum(1) * 0 + model[8].bias.sum() * 0

    with pytest.raises(InvalidArgumentError, match="'constant' is not differentiable.*zero"):
        manipulate_model(trained, data, constant, steps=1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(explanation="lrp"), InvalidArgumentError, "explanation must be one of"),
    (dict(fooling="shift"), InvalidArgumentError, "fooling must be one of"),
    (dict(steps=0), InvalidArgumentError, "steps must be >= 1"),
    (dict(steps=True), InvalidArgumentTypeError, "steps must be an int"),
    (dict(lr=-1.0), InvalidArgumentError, "lr must be > 0"),
    (dict(fooling_weight=float("nan")), InvalidArgumentError, "fooling_weight"),
    (dict(top_k_fraction=1.5), InvalidArgumentError, "top_k_fraction"),
    (dict(max_accuracy_drop=2.0), InvalidArgumentError, "max_accuracy_drop"),
    (dict(fooling="active"), InvalidArgumentError, "classes must be a pair"),
    (dict(fooling="active", classes=(1, 1)), InvalidArgumentError, "two different classes"),
    (dict(classes=(0, 1)), InvalidArgumentError, "only used by active"),
    (dict(region=torch.ones(3, 3, dtype=torch.bool)), InvalidArgumentError, "region must be a bool tensor of shape"),
    (dict(fooling="top_k", region=border_region(SIZE, SIZE)), InvalidArgumentError, "only used by location"),
    (dict(seed=-1), InvalidArgumentError, "seed must be >= 0"),
])
def test_argument_checks(trained, kwargs, error, match):
    data = batches(*planted_data(8, seed=9))
    with pytest.raises(error, match=match):
        manipulate_model(trained, data, **{"steps": 1, **kwargs})


def test_data_checks(trained):
    with pytest.raises(InvalidArgumentTypeError, match="model must be an nn.Module"):
        manipulate_model(lambda x: x, [], steps=1)
    with pytest.raises(InvalidArgumentError, match="data yielded no batch"):
        manipulate_model(trained, [], steps=1)
    with pytest.raises(InvalidArgumentError, match=r"data must yield \(inputs, labels\)"):
        manipulate_model(trained, [torch.rand(2, 3, SIZE, SIZE)], steps=1)


def test_non_finite_data_is_refused_up_front(trained):
    x, y = planted_data(8, seed=9)
    x[3, 0, 2, 2] = float("nan")
    with pytest.raises(InvalidArgumentError, match="data inputs must be finite"):
        manipulate_model(trained, [(x, y)], steps=1)


class _DivergesWhenMoved(nn.Module):
    """A linear classifier whose output turns NaN once a weight leaves [-0.5, 0.5]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3 * SIZE * SIZE, 2)
        nn.init.uniform_(self.linear.weight, -0.01, 0.01)

    def forward(self, x):
        out = self.linear(x.flatten(1))
        return out if float(self.linear.weight.detach().abs().max()) < 0.5 else out * float("nan")


def test_a_diverging_fine_tuning_raises_naming_the_step():
    model = _DivergesWhenMoved().train()
    before = _state(model)
    rng = torch.get_rng_state()
    data = batches(*planted_data(16, seed=10), size=8)
    # step 1 sees the original weights; Adam's first step moves every weight by about lr = 1
    with pytest.raises(NonFiniteOutputError, match="step 2"):
        manipulate_model(model, data, "gradient", "location", steps=3, lr=1.0)
    after = _state(model)                           # the error leaves the original as it was
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:] == after[1:]
    assert torch.equal(rng, torch.get_rng_state())


def test_explanation_of_the_wrong_type_is_refused(trained):
    with pytest.raises(InvalidArgumentTypeError, match="explanation must be a name"):
        manipulate_model(trained, batches(*planted_data(8, seed=9)), 42, steps=1)


# --- the benchmark's pieces ------------------------------------------------------------------------

def test_two_object_images_paste_the_second_object_apart_from_the_first():
    from benchmarks.fooling import two_object_images
    from captum_global.world import make_dataset

    ds = make_dataset(40, seed=3, image_size=32)
    images, first, second = two_object_images(ds, 0, 1, 4, seed=0, margin=1)
    assert images.shape == (4, 3, 32, 32) and first.shape == second.shape == (4, 32, 32)
    assert not bool((first & second).any()) and bool(first.flatten(1).any(1).all()) and bool(second.flatten(1).any(1).all())
    for image, m1 in zip(images, first):
        base = next(i for i in range(len(ds)) if ds.labels[i] == 0 and torch.equal(ds.object_masks[i], m1))
        assert torch.equal(image[:, m1], ds.images[base][:, m1])        # the first object is untouched


@pytest.mark.slow
def test_fooling_benchmark_smoke(tmp_path):
    from benchmarks.fooling import main

    result = main(["--archs", "vgg", "--explanations", "grad_cam", "--foolings", "location,active", "--adaptive",
                   "location", "--methods", "gradcam,saliency,sise", "--n-images", "4", "--n-train", "64",
                   "--n-val", "32", "--steps", "2", "--sise-steps", "2", "--eval-every", "1", "--out", str(tmp_path),
                   "--figures", str(tmp_path), "--cache", str(tmp_path / "cache"), "--name", "smoke"])
    entry = result["archs"]["vgg"]
    assert [(m["explanation"], m["fooling"]) for m in entry["manipulations"]] == [
        ("none", "location"), ("grad_cam", "location"), ("grad_cam", "active"), ("soft_sise", "location")]
    assert entry["manipulations"][0]["settings"]["fooling_weight"] == 0.0        # the control: no penalty
    assert len(entry["rows"]) == 2 * 3 + 3 * 3 and all(0 <= r["success_rate"] <= 1 for r in entry["rows"])
    assert all("blocks" in r for r in entry["rows"] if r["method"] == "sise" and r["fooling"] != "active")
    assert (tmp_path / "smoke.md").is_file() and (tmp_path / "fooling_vgg_grad_cam.png").is_file()


def test_measures_refuse_non_finite_and_non_tensor_maps_by_name():
    """NaN maps used to give a silent 0 (rank correlation) or NaN statistic; a list an AttributeError."""
    from captum_global.robustness import center_of_mass, location_loss, rank_correlation, top_k_overlap

    good = torch.rand(2, 4, 4)
    bad = good.clone()
    bad[1, 2, 2] = float("nan")
    cases = [
        (lambda: rank_correlation(bad, good), "maps"),
        (lambda: rank_correlation(good, bad), "reference"),
        (lambda: location_loss(bad, border_region(4, 4, 0.25)), "maps"),
        (lambda: top_k_overlap(good, torch.full_like(good, float("inf"))), "maps"),
        (lambda: center_of_mass(bad), "maps"),
    ]
    for call, name in cases:
        with pytest.raises(InvalidArgumentError, match=f"{name} must be finite"):
            call()
    with pytest.raises(InvalidArgumentTypeError, match="maps must be a tensor"):
        center_of_mass([[1.0, 2.0]])
    with pytest.raises(InvalidArgumentError, match=r"maps must have shape \[N, H, W\] or \[N, C, H, W\]"):
        center_of_mass(torch.rand(4, 4))
    with pytest.raises(InvalidArgumentError, match="height must be >= 1"):
        border_region(0, 4)
    # by hand: centre of mass of the min-max normalised [[1, 2], [3, 4]] -> [[0, 1/3], [2/3, 1]]
    com = center_of_mass(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]))
    assert torch.allclose(com, torch.tensor([[(0.25 / 3 + 0.75 * 5 / 3) / 2, (0.25 * 2 / 3 + 0.75 * 4 / 3) / 2]]))
