"""Conformance of captum_global.robustness to its docstrings and docs/use/robustness.md.

Every public function's documented quantity is recomputed here by hand
(NumPy, or plain torch where a gradient or an Adam step is needed) on tiny
maps and models that are not the package's reference world, for every
documented option value; then the edge cases a user meets (identical maps,
maps without signal, a batch of one, 1-tuples, methods given as objects,
classes or callables) and the invariants the docs promise (symmetry, scale
invariance, independence of batching, the caller's model and random state
left as found, also after an error).
"""
import copy
import itertools
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam, Saliency
from torch import nn

from captum_global.attr import SISE
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.robustness import (
    EXPLANATIONS,
    FOOLINGS,
    SUCCESS,
    DifferentiableExplanation,
    GradCAMExplanation,
    GradientExplanation,
    ManipulationResult,
    SoftSISESurrogate,
    border_region,
    center_of_mass,
    center_of_mass_shift,
    differentiable_explanation,
    fooling_penalty,
    fooling_statistic,
    fooling_success,
    location_loss,
    manipulate_model,
    normalised_maps,
    rank_correlation,
    top_k_mass,
    top_k_overlap,
    top_k_region,
)


from test_robustness import one_thread  # noqa: E402,F401  (autouse: one thread for these tiny models)


def _rand(*shape, seed=0, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(*shape, generator=g)


def _built(seed, make):
    """A model built from ``make()`` with its own seed, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# ------------------------------------------------------------------ hand computations (NumPy)

def np_heat(maps):
    """The documented preprocessing: channel sum, positive part, min-max per map (no signal -> zeros)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim == 4:
        m = m.sum(1)
    m = np.clip(m, 0, None)
    out = np.zeros_like(m)
    for i, h in enumerate(m):
        lo, hi = h.min(), h.max()
        if hi - lo > 1e-5 * max(abs(lo), abs(hi)):
            out[i] = (h - lo) / (hi - lo)
    return out


def np_border(height, width, fraction):
    t = max(1, int(round(fraction * min(height, width))))
    return np.array([[i < t or i >= height - t or j < t or j >= width - t for j in range(width)]
                     for i in range(height)])


def np_top_k(maps, fraction):
    h = np_heat(maps)
    n, height, width = h.shape
    k = max(1, int(round(fraction * height * width)))
    out = np.zeros((n, height * width), dtype=bool)
    for i in range(n):
        order = np.argsort(-h[i].ravel(), kind="stable")   # ties: first in raster order
        out[i, order[:k]] = True
    return out.reshape(n, height, width)


def np_mass(maps, region):
    h = np_heat(maps)
    region = np.broadcast_to(region, h.shape)
    total = h.reshape(len(h), -1).sum(1)
    inside = (h * region).reshape(len(h), -1).sum(1)
    return np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0)


def np_centre(maps):
    h = np_heat(maps)
    out = np.full((len(h), 2), 0.5)
    for n, m in enumerate(h):
        height, width = m.shape
        if m.sum() > 0:
            rows, cols = (np.arange(height) + 0.5) / height, (np.arange(width) + 0.5) / width
            out[n] = [(m.sum(1) * rows).sum() / m.sum(), (m.sum(0) * cols).sum() / m.sum()]
    return out


def np_ranks(v):
    return np.array([(v < x).sum() + ((v == x).sum() + 1) / 2 for x in v])


def np_spearman(a, b):
    """Spearman per map pair, average ranks for ties, 0 when either map has no ranking."""
    ha, hb = np_heat(a), np_heat(b)
    out = []
    for x, y in zip(ha, hb):
        ra, rb = np_ranks(x.ravel()), np_ranks(y.ravel())
        ra, rb = ra - ra.mean(), rb - rb.mean()
        denom = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
        out.append((ra * rb).sum() / denom if denom > 0 else 0.0)
    return np.array(out)


def np_bilinear(img, height, width):
    """PyTorch's bilinear resize with align_corners=False, by hand."""
    in_h, in_w = img.shape

    def axis(out_size, in_size):
        src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, in_size - 1), src - i0

    r0, r1, lr = axis(height, in_h)
    c0, c1, lc = axis(width, in_w)
    top = img[r0][:, c0] * (1 - lc) + img[r0][:, c1] * lc
    bottom = img[r1][:, c0] * (1 - lc) + img[r1][:, c1] * lc
    return top * (1 - lr)[:, None] + bottom * lr[:, None]


def close(got, expected, atol=1e-5):
    np.testing.assert_allclose(np.asarray(got.detach() if isinstance(got, torch.Tensor) else got, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=0, atol=atol)


# maps for the measures: negatives (dropped), a [N, C, H, W] form (channels summed), a non-square size
MAPS3 = _rand(3, 5, 7, seed=1, low=-0.3, high=1.0)
REF3 = _rand(3, 5, 7, seed=2, low=-0.3, high=1.0)
MAPS4 = _rand(3, 2, 5, 7, seed=3, low=-0.5, high=1.0)
REF4 = _rand(3, 2, 5, 7, seed=4, low=-0.5, high=1.0)
FORMS = [pytest.param(MAPS3, REF3, id="NHW"), pytest.param(MAPS4, REF4, id="NCHW")]


# ------------------------------------------------------------------ measures: by hand, every option

@pytest.mark.parametrize("maps, ref", FORMS)
def test_normalised_maps_by_hand(maps, ref):
    close(normalised_maps(maps), np_heat(maps.numpy()), 1e-6)
    close(normalised_maps((maps,)), np_heat(maps.numpy()), 1e-6)          # Captum's 1-tuple form
    with pytest.raises(InvalidArgumentTypeError, match="maps must be a tensor"):
        normalised_maps((maps, ref))                                      # a 2-tuple is not one map batch


@pytest.mark.parametrize("height, width, fraction", [(4, 4, 0.25), (6, 10, 0.2), (9, 5, 0.45), (8, 8, 0.125),
                                                     (3, 7, 0.01)])
def test_border_region_by_hand(height, width, fraction):
    region = border_region(height, width, fraction)
    assert region.dtype == torch.bool and region.shape == (height, width)
    assert np.array_equal(region.numpy(), np_border(height, width, fraction))
    # the documented default on 64 x 64: 1/8 of the side thick, 44% of the pixels
    assert border_region(64, 64).float().mean().item() == pytest.approx(1 - (48 / 64) ** 2)


@pytest.mark.parametrize("maps, ref", FORMS)
def test_location_loss_and_top_k_mass_by_hand_with_one_or_per_map_regions(maps, ref):
    h = np_heat(maps.numpy())
    one = border_region(5, 7, 0.2)
    per_map = _rand(3, 5, 7, seed=5) > 0.6
    for region in (one, per_map):
        r = region.numpy().astype(float)
        close(location_loss(maps, region), ((h - r) ** 2).reshape(3, -1).mean(1))
        close(top_k_mass(maps, region), np_mass(maps.numpy(), region.numpy()))


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("maps, ref", FORMS)
def test_top_k_region_and_overlap_by_hand(maps, ref, fraction):
    a, b = np_top_k(maps.numpy(), fraction), np_top_k(ref.numpy(), fraction)
    assert np.array_equal(top_k_region(maps, fraction).numpy(), a)
    expected = (a & b).reshape(3, -1).sum(1) / b.reshape(3, -1).sum(1)
    close(top_k_overlap(maps, ref, fraction), expected, 1e-7)
    close(top_k_overlap(maps, ref, fraction), top_k_overlap(ref, maps, fraction), 0)   # both hold k pixels
    # ties (integer-valued maps) go to the first pixels in raster order
    tied = torch.randint(0, 3, (2, 4, 6), generator=torch.Generator().manual_seed(6)).float()
    assert np.array_equal(top_k_region(tied, fraction).numpy(), np_top_k(tied.numpy(), fraction))


@pytest.mark.parametrize("maps, ref", FORMS)
def test_center_of_mass_and_shift_by_hand(maps, ref):
    close(center_of_mass(maps), np_centre(maps.numpy()))
    expected = np.linalg.norm(np_centre(maps.numpy()) - np_centre(ref.numpy()), axis=1)
    close(center_of_mass_shift(maps, ref), expected)
    close(center_of_mass_shift(ref, maps), expected)                     # a distance: symmetric


@pytest.mark.parametrize("maps, ref", FORMS)
def test_rank_correlation_by_hand_symmetric_and_bounded(maps, ref):
    expected = np_spearman(maps.numpy(), ref.numpy())
    close(rank_correlation(maps, ref), expected)
    close(rank_correlation(ref, maps), expected)                         # Spearman is symmetric
    close(rank_correlation(maps, maps), np.ones(3))
    # many ties (clamped negatives, integer values): average ranks
    tied = torch.randint(-2, 3, (3, 4, 4), generator=torch.Generator().manual_seed(7)).float()
    close(rank_correlation(tied, ref[..., :4, :4]), np_spearman(tied.numpy(), ref[..., :4, :4].numpy()))


def _active_by_hand(maps, ref, other):
    alike = np_spearman(ref, other)
    margin = np_spearman(maps, other) - np_spearman(maps, ref)
    return np.where(alike <= 0.8, margin / np.maximum(1 - alike, 1e-12), np.nan)


@pytest.mark.parametrize("fooling", FOOLINGS)
def test_fooling_statistic_and_success_by_hand_for_every_kind(fooling):
    maps, ref, other = MAPS3.numpy(), REF3.numpy(), _rand(3, 5, 7, seed=8, low=-0.3).numpy()
    region, fraction = border_region(5, 7, 0.2), 0.2
    if fooling == "location":
        expected = ((np_heat(maps) - region.numpy()) ** 2).reshape(3, -1).mean(1)
    elif fooling == "top_k":
        a, b = np_top_k(maps, fraction), np_top_k(ref, fraction)
        expected = (a & b).reshape(3, -1).sum(1) / b.reshape(3, -1).sum(1)
    elif fooling == "center_mass":
        expected = np.linalg.norm(np_centre(maps) - np_centre(ref), axis=1)
    else:
        expected = _active_by_hand(maps, ref, other)
    stat = fooling_statistic(fooling, MAPS3, REF3, region=region, fraction=fraction,
                             other_reference=torch.from_numpy(other))
    close(stat, expected)
    name, threshold, direction = SUCCESS[fooling]
    passes = expected < threshold if direction == "below" else expected > threshold
    assert fooling_success(fooling, stat).tolist() == passes.tolist()
    # at the threshold itself: not a success (strict inequality, as documented)
    assert fooling_success(fooling, torch.tensor([threshold])).tolist() == [False]


def test_active_statistic_is_nan_only_above_0_8_and_finite_without_signal():
    h1 = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    alike = torch.tensor([[[1.0, 2.0, 3.0, 5.0, 4.0]]])                  # rho = 0.9 > 0.8: NaN
    stat = fooling_statistic("active", h1, h1, other_reference=alike)
    assert torch.isnan(stat).all() and not fooling_success("active", stat).any()
    zero, other = torch.zeros(1, 1, 5), h1.flip(-1)
    for maps, ref, other in [(zero, h1, other), (h1, zero, other), (h1, h1, zero), (zero, zero, zero)]:
        stat = fooling_statistic("active", maps, ref, other_reference=other)
        close(stat, _active_by_hand(maps.numpy(), ref.numpy(), other.numpy()))
        assert torch.isfinite(stat).all()


# ------------------------------------------------------------------ fooling_penalty by hand, every kind

def np_penalty(fooling, maps, ref=None, region=None, fraction=0.1, maps2=None, ref2=None):
    h = np_heat(maps)
    if fooling == "location":
        return ((h - region) ** 2).reshape(len(h), -1).mean(1).mean()
    if fooling == "top_k":
        return np_mass(maps, np_top_k(ref, fraction)).mean()
    if fooling == "center_mass":
        far = (np_centre(ref) < 0.5).astype(float)
        return np.abs(np_centre(maps) - far).sum(1).mean()
    h1r, h2, h2r = np_heat(ref), np_heat(maps2), np_heat(ref2)
    return (((h - h2r) ** 2).reshape(len(h), -1).mean(1) + ((h2 - h1r) ** 2).reshape(len(h), -1).mean(1)).mean() / 2


@pytest.mark.parametrize("fraction", [0.1, 0.3])
@pytest.mark.parametrize("fooling", FOOLINGS)
@pytest.mark.parametrize("maps, ref", FORMS)
def test_fooling_penalty_by_hand(maps, ref, fooling, fraction):
    region = border_region(5, 7, 0.2)
    maps2, ref2 = _rand(*maps.shape, seed=9, low=-0.2), _rand(*maps.shape, seed=10, low=-0.2)
    expected = np_penalty(fooling, maps.numpy(), ref.numpy(), region.numpy(), fraction, maps2.numpy(), ref2.numpy())
    got = fooling_penalty(fooling, maps, ref, region=region, top_k_fraction=fraction, maps_second=maps2,
                          reference_second=ref2)
    assert got.dim() == 0
    close(got, expected)
    # Captum's 1-tuple form is taken wherever a map is (as normalised_maps documents)
    got = fooling_penalty(fooling, (maps,), (ref,), region=region, top_k_fraction=fraction, maps_second=(maps2,),
                          reference_second=(ref2,))
    close(got, expected)


def test_fooling_penalty_names_top_k_fraction_in_its_error():
    with pytest.raises(InvalidArgumentError, match="top_k_fraction must be <= 1.0"):
        fooling_penalty("top_k", MAPS3, REF3, top_k_fraction=2.0)


# ------------------------------------------------------------------ measures: edge cases and invariants

def _all_measures(maps, ref, region):
    """Every measure on (maps, ref), as a dict of arrays."""
    out = {
        "normalised_maps": normalised_maps(maps),
        "location_loss": location_loss(maps, region),
        "top_k_region": top_k_region(maps, 0.2).float(),
        "top_k_mass": top_k_mass(maps, region),
        "top_k_overlap": top_k_overlap(maps, ref, 0.2),
        "center_of_mass": center_of_mass(maps),
        "center_of_mass_shift": center_of_mass_shift(maps, ref),
        "rank_correlation": rank_correlation(maps, ref),
    }
    for fooling in FOOLINGS:
        out[f"statistic {fooling}"] = fooling_statistic(fooling, maps, ref, region=region, fraction=0.2,
                                                        other_reference=ref.flip(-1))
    return {k: v.detach().double().numpy() for k, v in out.items()}


def test_identical_maps_have_similarity_one_and_distance_zero():
    for maps in (MAPS3, MAPS4):
        assert top_k_overlap(maps, maps).tolist() == [1.0] * 3
        assert center_of_mass_shift(maps, maps).tolist() == [0.0] * 3
        close(rank_correlation(maps, maps), np.ones(3), 1e-6)
        assert not fooling_success("top_k", fooling_statistic("top_k", maps, maps)).any()
        assert not fooling_success("center_mass", fooling_statistic("center_mass", maps, maps)).any()
        # an unchanged c1 map scores -1 (not fooled)
        close(fooling_statistic("active", maps, maps, other_reference=maps.flip(-2)), -np.ones(3), 1e-5)
        h = np_heat(maps.numpy())
        high = torch.from_numpy(h > 0.5)                              # its own bright pixels fit it best
        assert location_loss(maps, high).max() < location_loss(maps, ~high).min()
    # a map exactly equal to its region: location loss 0, every pixel wrong: 1
    region = border_region(5, 7, 0.2)
    assert location_loss(region.float()[None], region).item() == 0.0
    assert location_loss((~region).float()[None], region).item() == 1.0


@pytest.mark.parametrize("empty", [torch.zeros(2, 5, 7), torch.full((2, 5, 7), 3.0), -_rand(2, 5, 7, seed=11),
                                   torch.zeros(2, 3, 5, 7)], ids=["zeros", "constant", "negative", "NCHW-zeros"])
def test_maps_without_signal_give_the_documented_values_never_nan(empty):
    region = border_region(5, 7, 0.2)
    ref = MAPS3[:2]
    values = _all_measures(empty, ref, region)
    for name, value in values.items():
        if not name.endswith("active"):
            assert np.isfinite(value).all(), name
    assert (values["normalised_maps"] == 0).all()
    close(values["location_loss"], [region.float().mean().item()] * 2, 1e-7)   # (0 - region)^2 averaged
    assert (values["top_k_mass"] == 0).all()
    assert np.array_equal(values["top_k_region"].reshape(2, -1)[:, :7], np.ones((2, 7)))   # the first k = 7 pixels
    assert (values["center_of_mass"] == 0.5).all()
    assert (values["rank_correlation"] == 0).all() and (rank_correlation(empty, empty) == 0).all()
    assert center_of_mass_shift(empty, empty).tolist() == [0.0, 0.0]
    assert np.isfinite(values["statistic active"]).all()
    # penalties on such maps: finite, and so is their gradient (no NaN reaches the weights)
    for fooling in FOOLINGS:
        maps = empty.clone().requires_grad_(True)
        loss = fooling_penalty(fooling, maps, ref if empty.dim() == 3 else ref[:, None].expand_as(empty),
                               region=region, maps_second=maps, reference_second=ref.flip(-1)
                               if empty.dim() == 3 else ref.flip(-1)[:, None].expand_as(empty))
        (grad,) = torch.autograd.grad(loss, maps)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), fooling


def test_every_measure_is_per_map_batch_of_one_equals_the_batch():
    region = border_region(5, 7, 0.2)
    whole = _all_measures(MAPS4, REF4, region)
    singles = [_all_measures(MAPS4[i:i + 1], REF4[i:i + 1], region) for i in range(3)]
    for name, value in whole.items():
        np.testing.assert_allclose(np.concatenate([s[name] for s in singles]), value, rtol=0, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("scale", [1e-3, 3.0, 1e4])
def test_every_measure_is_invariant_to_the_scale_of_the_maps(scale):
    """The docs: maps of different methods and scales are compared on the same footing."""
    region = border_region(5, 7, 0.2)
    # well separated values, so that float round-off cannot reorder pixels
    perm = torch.stack([torch.randperm(35, generator=torch.Generator().manual_seed(s)) for s in range(6)]).float()
    maps, ref = perm[:3].view(3, 5, 7) - 5, perm[3:].view(3, 5, 7) - 5
    base = _all_measures(maps, ref, region)
    scaled = _all_measures(scale * maps, scale * ref, region)
    for name in base:
        np.testing.assert_allclose(scaled[name], base[name], rtol=0, atol=1e-5, err_msg=name)
    for fooling in FOOLINGS:
        kwargs = dict(region=region, maps_second=ref, reference_second=maps)
        close(fooling_penalty(fooling, scale * maps, scale * ref, **kwargs),
              fooling_penalty(fooling, maps, ref, **kwargs))


# ------------------------------------------------------------------ explanations by hand

def conv_net(pool: bool = False, inplace: bool = False, classes: int = 2, channels: int = 4):
    def make():
        layers = [nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=inplace)] + ([nn.MaxPool2d(2)] if pool else [])
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes)).eval()

    return _built(0, make)


X = _rand(3, 3, 8, 8, seed=12)
T = [0, 1, 1]


def test_gradient_explanation_and_its_weight_gradient_by_hand():
    net = _built(1, lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 5, 3)).eval())
    w = net[1].weight.detach().numpy().reshape(3, 3, 4, 5)
    x = _rand(2, 3, 4, 5, seed=13)
    maps = GradientExplanation()(net, x, [2, 0])
    close(maps, [np.abs(w[2]).sum(0), np.abs(w[0]).sum(0)], 1e-7)      # sum_channels |dy_c / dx|
    # double backpropagation: d(sum of the maps) / dW = sign(W) on the explained rows
    (grad,) = torch.autograd.grad(maps.sum(), net[1].weight)
    expected = np.zeros_like(w)
    expected[2], expected[0] = np.sign(w[2]), np.sign(w[0])
    close(grad, expected.reshape(3, -1), 0)
    close(GradientExplanation()(net, x[:1], 2), np.abs(w[2]).sum(0)[None], 1e-7)     # a batch of one


def test_grad_cam_by_hand_on_a_pooled_layer_and_on_the_default_layer():
    net = conv_net(pool=True)
    w = net[5].weight.detach().numpy()
    with torch.no_grad():
        relu_out = net[:2](X).numpy()            # [N, 4, 8, 8]
        pooled = net[:3](X).numpy()              # [N, 4, 4, 4]
    # layer "2": dy_c / dP_k = w_ck / 16 everywhere; relu, then bilinear upsampling (align_corners=False)
    expected = [np_bilinear(np.maximum((w[t][:, None, None] / 16 * pooled[n]).sum(0), 0), 8, 8)
                for n, t in enumerate(T)]
    close(GradCAMExplanation("2")(net, X, T), expected, 1e-6)
    close(GradCAMExplanation(net[2])(net, X, T), expected, 1e-6)
    # default layer: the deepest block output with a spatial map, here the ReLU ("1"): each 2 x 2 window
    # passes w_ck / 16 to its maximum, so the channel weight is w_ck / 64
    expected = [np.maximum((w[t][:, None, None] / 64 * relu_out[n]).sum(0), 0) for n, t in enumerate(T)]
    close(GradCAMExplanation()(net, X, T), expected, 1e-6)
    close(GradCAMExplanation()(net, X[:1], T[0]), expected[:1], 1e-6)     # a batch of one


def test_grad_cam_of_a_layer_followed_by_an_in_place_relu_is_grad_cam():
    """Defect: the ReLU(inplace=True) after the hooked convolution overwrote the captured activations,
    so Grad-CAM weighed relu(A) by unmasked gradients (not Captum's LayerGradCam, not Grad-CAM)."""
    net = conv_net(inplace=True)
    w = net[4].weight.detach().numpy()
    with torch.no_grad():
        act = net[0](X).numpy()                  # the convolution's own output, before the ReLU
    expected = []
    for n, t in enumerate(T):
        alpha = (w[t][:, None, None] / 64 * (act[n] > 0)).mean(axis=(1, 2))
        expected.append(np.maximum((alpha[:, None, None] * act[n]).sum(0), 0))
    close(GradCAMExplanation("0")(net, X, T), expected, 1e-6)
    captum = LayerGradCam(net, net[0]).attribute(X, target=T, relu_attributions=True)[:, 0]
    close(GradCAMExplanation("0")(net, X, T), captum.detach(), 1e-6)


class _Normalises(nn.Module):
    """Subtracts a mean from its input in place, as many preprocessing wrappers do."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return x.sub_(0.5) if self.inplace else x - 0.5


@pytest.mark.parametrize("name", ["grad_cam", "gradient", "soft_sise"])
def test_explanations_of_a_model_that_normalises_its_input_in_place(name):
    """Defect: the explanations fed the model a leaf that requires grad, so a model that works on its
    input in place (which the package's SISE accepts) failed
    with PyTorch's 'a leaf Variable ... in-place operation'."""
    base = conv_net()
    nets = [nn.Sequential(_Normalises(inplace), *copy.deepcopy(list(base))).eval() for inplace in (True, False)]
    explain = {"grad_cam": GradCAMExplanation("2"), "gradient": GradientExplanation(),
               "soft_sise": SoftSISESurrogate(["2"], masks_per_layer=8)}[name]
    x = X.clone()
    in_place, plain = (explain(net, x, T, torch.Generator().manual_seed(0)) for net in nets)
    assert torch.equal(x, X)                                           # the caller's images untouched
    close(in_place, plain.detach(), 1e-6)
    assert in_place.requires_grad


def _kept_by_hand(net, image, t):
    """SISE's mask choice on conv_net's layer "1": positive w_tk among non-constant maps, else the best."""
    w = net[4].weight.detach().numpy()
    with torch.no_grad():
        act = net[:2](image[None]).numpy()[0]
    alive = [k for k in range(act.shape[0]) if np.ptp(act[k]) > 1e-12]
    return [k for k in alive if w[t, k] > 0] or [max(alive, key=lambda k: w[t, k])]


def _soft_sise_by_hand(net, x, targets, subset=None):
    """SoftSISESurrogate on the single layer "1" (ReLU output, input-sized) of conv_net, by hand.

    alpha_k summed over the map = w_ck (avg pool, linear head); kept: positive ones among non-constant
    maps, else the best; V = sum_k s_k m_k / sum(m_k) with m_k = minmax(A_k) and s_k the logit on m_k * x;
    the block map and the one-block fusion are min-max normalised."""
    with torch.no_grad():
        act = net[:2](x).numpy()
    out = []
    for n, t in enumerate(targets):
        kept = _kept_by_hand(net, x[n], t)
        chosen = kept if subset is None else subset(kept)
        v = np.zeros(x.shape[-2:])
        for k in chosen:
            m = np_heat(act[n, k][None])[0]
            with torch.no_grad():
                s = net(x[n:n + 1] * torch.from_numpy(m).float()).numpy()[0, t]
            v += s * m / m.sum()
        out.append((v - v.min()) / (v.max() - v.min()))               # min-max (a negative score flips it)
    return np.stack(out)


def test_soft_sise_surrogate_by_hand_every_mask_and_the_fallback_channel():
    net = conv_net(channels=6)
    with torch.no_grad():
        net[4].weight.copy_(torch.tensor([[0.9, -0.4, 0.5, 0.7, -0.3, 0.6],           # class 0: four kept
                                          [-0.5, -0.2, -0.9, -0.4, -0.6, -0.8]]))     # class 1: none, fallback
    x = X[:2]
    for targets in ([0, 0], [1, 1], [0, 1]):
        expected = _soft_sise_by_hand(net, x, targets)
        got = SoftSISESurrogate(["1"], masks_per_layer=6)(net, x, targets, torch.Generator().manual_seed(0))
        close(got, expected, 1e-5)
        assert got.requires_grad
    close(SoftSISESurrogate(["1"], 6)(net, x[:1], 0), _soft_sise_by_hand(net, x[:1], [0]), 1e-5)   # batch of one


def test_soft_sise_surrogate_samples_masks_per_layer_of_the_kept_masks():
    net = conv_net(channels=6)
    with torch.no_grad():
        net[4].weight.copy_(torch.tensor([[0.9, -0.4, 0.5, 0.7, -0.3, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]))
    x = X[:2]
    for k in (1, 2, 3):
        got = SoftSISESurrogate(["1"], masks_per_layer=k)(net, x, [0, 0], torch.Generator().manual_seed(k)).detach()
        for n in range(2):
            kept = _kept_by_hand(net, x[n], 0)
            assert len(kept) > k                                       # the sample is a true subset
            candidates = [_soft_sise_by_hand(net, x[n:n + 1], [0], lambda _, s=s: list(s))[0]
                          for s in itertools.combinations(kept, k)]
            assert min(np.abs(got[n].numpy() - c).max() for c in candidates) < 1e-5, (k, n)


def _all_kept_net():
    net = conv_net(channels=8)
    with torch.no_grad():
        net[4].weight.abs_()                                           # every channel kept
    return net


def test_soft_sise_surrogate_without_a_generator_leaves_the_global_rng_alone():
    """Defect: without a generator the masks were drawn from (and advanced) the caller's global torch
    generator (the _seeding rule: the caller's global random state is as it was after the call)."""
    net, explain = _all_kept_net(), SoftSISESurrogate(["1"], masks_per_layer=1)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    maps = [explain(net, X, T).detach() for _ in range(6)]
    assert torch.equal(state, torch.get_rng_state())
    assert any(not torch.equal(maps[0], m) for m in maps[1:])         # still random at every call


def test_soft_sise_surrogate_draws_the_same_masks_for_a_seed_whatever_the_default_dtype():
    """Defect: a float64 default dtype drew other masks for the same generator seed (the _seeding
    rule: draws are made in float32)."""
    net, explain = _all_kept_net(), SoftSISESurrogate(["1"], masks_per_layer=1)
    seeded = explain(net, X, T, torch.Generator().manual_seed(3)).detach()
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        again = explain(net, X, T, torch.Generator().manual_seed(3)).detach()
    finally:
        torch.set_default_dtype(default)
    assert torch.equal(seeded, again)


@pytest.mark.parametrize("name", ["grad_cam", "gradient", "soft_sise"])
def test_explanations_are_per_example_independent_of_the_batch(name):
    net = conv_net(pool=True)
    explain = {"grad_cam": GradCAMExplanation(), "gradient": GradientExplanation(),
               "soft_sise": SoftSISESurrogate(masks_per_layer=8)}[name]
    whole = explain(net, X, T).detach()
    for i in range(3):
        close(explain(net, X[i:i + 1], T[i]).detach(), whole[i:i + 1], 1e-6)


def _model_state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def _same_state(model, before):
    after = _model_state(model)
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in after[0])
    assert after[1:] == before[1:]


def _rng():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same_rng(before):
    now = _rng()
    assert torch.equal(now[0], before[0]) and now[1] == before[1] and np.array_equal(now[2], before[2])


def bn_net():
    net = _built(2, lambda: nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    net[1].running_mean.fill_(0.1)
    net[1].running_var.fill_(0.7)
    net.train()
    net[3].eval()                                                      # mixed flags must come back as they were
    net[0].bias.requires_grad_(False)
    return net


@pytest.mark.parametrize("name", ["grad_cam", "gradient", "soft_sise"])
def test_explanations_leave_model_and_global_rng_as_found_also_after_an_error(name):
    explain = {"grad_cam": GradCAMExplanation("2"), "gradient": GradientExplanation(),
               "soft_sise": SoftSISESurrogate(["2"], 2)}[name]
    net = bn_net()
    before, rng = _model_state(net), _rng()
    explain(net, X, T)
    _same_state(net, before)
    _same_rng(rng)
    with pytest.raises(InvalidArgumentError, match="target 5"):
        explain(net, X, 5)
    _same_state(net, before)
    _same_rng(rng)


# ------------------------------------------------------------------ differentiable_explanation

def test_differentiable_explanation_resolves_names_objects_callables_and_classes():
    net = conv_net(pool=True)
    for name, cls in EXPLANATIONS.items():
        assert type(differentiable_explanation(name)) is cls
    with pytest.raises(TypeError):
        EXPLANATIONS["lrp"] = GradientExplanation                      # read-only
    instance = GradCAMExplanation("2")
    assert differentiable_explanation(instance) is instance

    def mine(model, inputs, target):                                   # channels are summed
        assert target.tolist() == T
        return torch.stack([GradientExplanation()(model, inputs, target)] * 2, dim=1)

    assert isinstance(differentiable_explanation(mine), DifferentiableExplanation)
    close(differentiable_explanation(mine)(net, X, T), 2 * GradientExplanation()(net, X, T).detach(), 1e-6)
    # a class of ours stands for its default settings, as its name does
    for cls in (GradCAMExplanation, GradientExplanation, SoftSISESurrogate):
        resolved = differentiable_explanation(cls)
        assert type(resolved) is cls and repr(resolved) == repr(cls())
    close(differentiable_explanation(GradCAMExplanation)(net, X, T), GradCAMExplanation()(net, X, T).detach(), 0)


@pytest.mark.parametrize("method", [Saliency, LayerGradCam, SISE], ids=lambda m: m.__name__)
def test_captum_methods_are_refused_as_objects_and_as_classes(method):
    """Defect: a Captum class was taken for a callable and failed later in its constructor or as a
    map-less object, instead of being refused like its instances with the reason."""
    net = conv_net(pool=True)
    obj = method(net, net[2]) if method is LayerGradCam else method(net)
    why = "soft_sise" if method is SISE else "detached from the model's weights"
    for given in (obj, method):
        with pytest.raises(InvalidArgumentTypeError, match=f"{method.__name__} is not differentiable.*{why}"):
            differentiable_explanation(given)
    with pytest.raises(InvalidArgumentTypeError, match="explanation must be a name"):
        differentiable_explanation(3)
    with pytest.raises(InvalidArgumentTypeError, match="the class dict is neither"):
        differentiable_explanation(dict)                               # a class never returns maps


# ------------------------------------------------------------------ manipulate_model, one step by hand

def tanh_net():
    """3 classes, eval-mode BatchNorm with its own statistics, a smooth activation (curved gradient maps)."""
    net = _built(3, lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)))
    net[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
    net[1].running_var.copy_(torch.tensor([0.5, 1.5, 0.8]))
    return net.eval()


XS = _rand(6, 2, 6, 6, seed=14)
YS = torch.tensor([0, 1, 2, 1, 0, 2])


def hand_gradient_maps(model, x, target):
    """Plain torch: sum_channels |dy_c / dx| with its graph to the weights."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    target = torch.as_tensor(target).expand(len(x))
    (g,) = torch.autograd.grad(out[torch.arange(len(x)), target].sum(), x, create_graph=True)
    return g.abs().sum(1)


def hand_normalised(h):
    flat = h.clamp(min=0).flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo)).view_as(h)


def hand_centre(h):
    height, width = h.shape[-2:]
    rows = (torch.arange(height, dtype=h.dtype) + 0.5) / height
    cols = (torch.arange(width, dtype=h.dtype) + 0.5) / width
    total = h.sum((1, 2))
    return torch.stack([(h.sum(2) * rows).sum(1) / total, (h.sum(1) * cols).sum(1) / total], 1)


def hand_penalty(fooling, copy_, original, x, y, region, fraction, pair):
    """The documented penalty, in plain torch: maps of the copy with graph, references of the original."""
    if fooling == "active":
        (c1, c2) = pair
        h1, h2 = hand_normalised(hand_gradient_maps(copy_, x, c1)), hand_normalised(hand_gradient_maps(copy_, x, c2))
        r1 = hand_normalised(hand_gradient_maps(original, x, c1)).detach()
        r2 = hand_normalised(hand_gradient_maps(original, x, c2)).detach()
        return (((h1 - r2) ** 2).flatten(1).mean(1) + ((h2 - r1) ** 2).flatten(1).mean(1)).mean() / 2
    h = hand_normalised(hand_gradient_maps(copy_, x, y))
    if fooling == "location":
        return ((h - region.float()) ** 2).flatten(1).mean(1).mean()
    ref = hand_normalised(hand_gradient_maps(original, x, y)).detach()
    if fooling == "top_k":
        top = torch.from_numpy(np_top_k(ref.numpy(), fraction)).float()
        return ((h * top).flatten(1).sum(1) / h.flatten(1).sum(1)).mean()
    far = (hand_centre(ref) < 0.5).float()
    return (hand_centre(h) - far).abs().sum(1).mean()


@pytest.mark.parametrize("fooling", FOOLINGS)
def test_manipulate_model_first_step_accuracy_and_fooling_losses_by_hand(fooling):
    net = tanh_net()
    region = torch.zeros(6, 6, dtype=torch.bool)
    region[:, :2] = True                                               # a user region: the left third
    fraction, pair, weight, lr = 0.25, (2, 0), 2.5, 0.05
    data = [(XS[:4], YS[:4])]
    fooling_data = [(XS[2:], YS[2:])]                                  # what is penalised, when given
    eval_data = [(XS[:1], YS[:1]), (XS[1:4], YS[1:4]), (XS[4:], YS[4:])]
    kwargs = dict(region=region if fooling == "location" else None, classes=pair if fooling == "active" else None,
                  top_k_fraction=fraction)
    result = manipulate_model(net, data, "gradient", fooling, steps=1, lr=lr, fooling_weight=weight,
                              fooling_data=fooling_data, eval_data=eval_data, fooling_eval_examples=3, **kwargs)
    # by hand: one Adam step on cross-entropy + weight * penalty, the copy in eval mode
    mine = copy.deepcopy(net).eval()
    optimiser = torch.optim.Adam(mine.parameters(), lr=lr)
    ce = F.cross_entropy(mine(XS[:4]), YS[:4])
    penalty = hand_penalty(fooling, mine, net, XS[2:], YS[2:], region, fraction, pair)
    (ce + weight * penalty).backward()
    optimiser.step()
    assert result.history["classification_loss"][0] == pytest.approx(ce.item(), abs=1e-6)
    assert result.history["fooling_loss"][0] == pytest.approx(penalty.item(), abs=1e-6)
    assert result.history["loss"][0] == pytest.approx(ce.item() + weight * penalty.item(), abs=1e-5)
    for got, expected in zip(result.model.state_dict().values(), mine.state_dict().values()):
        close(got, expected.detach(), 1e-6)
    with torch.no_grad():
        accuracy = lambda m: (m(XS).argmax(1) == YS).float().mean().item()      # noqa: E731
        assert result.accuracy_before == pytest.approx(accuracy(net))
        assert result.accuracy_after == pytest.approx(accuracy(mine))
    # the fooling losses: the penalty on the first 3 evaluation examples (across batches), before and after
    assert result.fooling_loss_before == pytest.approx(
        hand_penalty(fooling, net, net, XS[:3], YS[:3], region, fraction, pair).item(), abs=1e-6)
    assert result.fooling_loss_after == pytest.approx(
        hand_penalty(fooling, mine, net, XS[:3], YS[:3], region, fraction, pair).item(), abs=1e-5)
    assert (result.steps, result.kept_step, result.fooling, result.explanation) == (1, 1, fooling, "gradient")
    assert result.accuracy_drop == pytest.approx(result.accuracy_before - result.accuracy_after)


def test_manipulate_model_without_penalty_is_plain_adam_on_the_cycled_batches():
    net = tanh_net()
    data = [(XS[:3], YS[:3]), (XS[3:], YS[3:])]
    result = manipulate_model(net, data, "gradient", "center_mass", steps=3, lr=0.1, fooling_weight=0.0)
    mine = copy.deepcopy(net).eval()
    optimiser = torch.optim.Adam(mine.parameters(), lr=0.1)
    for x, y in (data[0], data[1], data[0]):                          # cycled
        optimiser.zero_grad()
        F.cross_entropy(mine(x), y).backward()
        optimiser.step()
    for got, expected in zip(result.model.parameters(), mine.parameters()):
        close(got, expected.detach(), 1e-6)
    assert result.history["loss"] == pytest.approx(result.history["classification_loss"])
    assert len(result.history["fooling_loss"]) == 3


def test_manipulate_model_on_a_batch_of_one():
    net = tanh_net()
    result = manipulate_model(net, [(XS[:1], YS[:1])], "gradient", "location", steps=1, lr=0.05)
    mine = copy.deepcopy(net).eval()
    optimiser = torch.optim.Adam(mine.parameters(), lr=0.05)
    penalty = hand_penalty("location", mine, net, XS[:1], YS[:1], border_region(6, 6), 0.1, None)
    (F.cross_entropy(mine(XS[:1]), YS[:1]) + penalty).backward()
    optimiser.step()
    for got, expected in zip(result.model.parameters(), mine.parameters()):
        close(got, expected.detach(), 1e-6)


# ------------------------------------------------------------------ manipulate_model options

def test_checkpoints_average_the_penalty_since_the_previous_check():
    """Defect: the last checkpoint (steps not a multiple of eval_every) averaged the last eval_every
    steps, reaching back before the previous checkpoint, not 'since the last one'."""
    net = tanh_net()
    result = manipulate_model(net, [(XS, YS)], "gradient", "location", steps=5, lr=0.05, eval_every=2)
    losses = result.history["fooling_loss"]
    assert [c["step"] for c in result.checkpoints] == [2, 4, 5]
    expected = [np.mean(losses[0:2]), np.mean(losses[2:4]), np.mean(losses[4:5])]
    assert [c["fooling_loss"] for c in result.checkpoints] == pytest.approx(expected)
    assert result.checkpoints[-1]["accuracy"] == pytest.approx(result.accuracy_after)


@pytest.mark.parametrize("drop", [None, 0.0, 0.2, 1.0])
def test_max_accuracy_drop_keeps_the_last_checkpoint_within_the_drop(drop):
    net = tanh_net()
    result = manipulate_model(net, [(XS, YS)], "gradient", "location", steps=6, lr=0.5, fooling_weight=20.0,
                              eval_every=2, max_accuracy_drop=drop)
    within = [c["step"] for c in result.checkpoints
              if drop is None or result.accuracy_before - c["accuracy"] <= drop + 1e-12]
    assert result.kept_step == (within[-1] if within else 0)
    if result.kept_step == 0:                                          # no step qualified: the original weights
        assert all(torch.equal(p, q) for p, q in zip(result.model.state_dict().values(), net.state_dict().values()))
        assert result.accuracy_after == result.accuracy_before
    else:
        kept = next(c for c in result.checkpoints if c["step"] == result.kept_step)
        assert result.accuracy_after == pytest.approx(kept["accuracy"])


def test_results_do_not_depend_on_how_the_evaluation_data_is_batched():
    net = tanh_net()
    runs = []
    for size in (1, 2, 4, 6):
        eval_data = [(XS[i:i + size], YS[i:i + size]) for i in range(0, 6, size)]
        r = manipulate_model(net, [(XS[:4], YS[:4])], "gradient", "top_k", steps=2, lr=0.05, eval_data=eval_data,
                             fooling_eval_examples=5)
        runs.append((r.accuracy_before, r.accuracy_after, r.fooling_loss_before, r.fooling_loss_after))
    for run in runs[1:]:
        assert run == pytest.approx(runs[0], abs=1e-6)


def test_seed_fixes_the_data_order_and_the_global_rng_is_neither_used_nor_changed():
    net = tanh_net()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(XS, YS), batch_size=2, shuffle=True)

    def weights(seed, global_seed):
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        np.random.seed(global_seed)
        rng = _rng()
        r = manipulate_model(net, loader, "gradient", "location", steps=3, lr=0.05, seed=seed)
        _same_rng(rng)
        return torch.cat([p.detach().flatten() for p in r.model.parameters()])

    same = weights(0, 1)
    assert torch.equal(same, weights(0, 2))                           # whatever the caller's global state
    assert not torch.equal(same, weights(1, 1))                       # another seed, another data order


def test_show_progress_changes_nothing_but_the_display(capsys):
    net = tanh_net()
    a, b = (manipulate_model(net, [(XS, YS)], "gradient", steps=2, lr=0.05, show_progress=flag)
            for flag in (False, True))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert "location fooling" in capsys.readouterr().err


@pytest.mark.parametrize("given", ["grad_cam", GradCAMExplanation(), GradCAMExplanation],
                         ids=["name", "object", "class"])
def test_an_explanation_by_name_object_or_class_gives_the_same_manipulation(given):
    net = conv_net(pool=True)
    reference = manipulate_model(net, [(X, torch.tensor(T))], "grad_cam", "location", steps=2, lr=0.05)
    result = manipulate_model(net, [(X, torch.tensor(T))], given, "location", steps=2, lr=0.05)
    assert result.history == reference.history and result.explanation == "grad_cam"
    assert all(torch.equal(p, q) for p, q in zip(result.model.parameters(), reference.model.parameters()))


def test_a_callable_explanation_is_fooled_like_the_built_in_one():
    net = tanh_net()
    data = [(XS, YS)]

    def by_hand(model, inputs, target):
        return hand_gradient_maps(model, inputs, target)

    mine = manipulate_model(net, data, by_hand, "top_k", steps=2, lr=0.05)
    built_in = manipulate_model(net, data, "gradient", "top_k", steps=2, lr=0.05)
    assert mine.explanation == "by_hand"
    assert mine.history["fooling_loss"] == pytest.approx(built_in.history["fooling_loss"], abs=1e-6)
    for p, q in zip(mine.model.parameters(), built_in.model.parameters()):
        close(p, q.detach(), 1e-6)


@pytest.mark.parametrize("method", [Saliency, SISE], ids=lambda m: m.__name__)
def test_manipulate_model_refuses_captum_objects_and_classes_and_leaves_the_model(method):
    net = bn_net()
    before, rng = _model_state(net), _rng()
    for given in (method(net), method):
        with pytest.raises(InvalidArgumentTypeError, match="not differentiable"):
            manipulate_model(net, [(X, torch.tensor(T))], given, steps=1)
    _same_state(net, before)
    _same_rng(rng)


# ------------------------------------------------------------------ the caller's model

def test_the_callers_model_and_rng_are_untouched_and_the_copy_moves_only_its_weights():
    net = bn_net()
    handle = net[2].register_forward_hook(lambda *args: None)
    before, rng = _model_state(net), _rng()
    data = [(X, torch.tensor(T))]
    results = [manipulate_model(net, data, GradientExplanation(), "location", steps=3, lr=0.05, seed=seed)
               for seed in (0, 1)]
    _same_state(net, before)
    _same_rng(rng)
    copy_ = results[0].model
    assert copy_ is not net and not any(m.training for m in copy_.modules())
    assert [p.requires_grad for p in copy_.parameters()] == before[2]
    # eval-mode fine-tuning: the BatchNorm statistics are the original's, dropout is off (the seed,
    # which seeds the global RNG a training-mode dropout would draw from, changes nothing here)
    assert all(torch.equal(b, before[0][k]) for k, b in copy_.state_dict().items() if "running" in k or "tracked" in k)
    assert any(not torch.equal(p, before[0][k]) for k, p in copy_.named_parameters())
    assert all(torch.equal(p, q) for p, q in zip(copy_.parameters(), results[1].model.parameters()))
    # the copy shares no storage with the caller's model
    with torch.no_grad():
        for p in copy_.parameters():
            p.add_(1.0)
        for b in copy_.buffers():
            b.add_(1)
    _same_state(net, before)
    handle.remove()


class _FailsOnThirdCall:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, inputs, target):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("explanation failed")
        return hand_gradient_maps(model, inputs, target)


def test_the_callers_model_and_rng_come_back_when_the_explanation_fails_mid_way():
    net = bn_net()
    before, rng = _model_state(net), _rng()
    with pytest.raises(RuntimeError, match="explanation failed"):
        manipulate_model(net, [(X, torch.tensor(T))], _FailsOnThirdCall(), "location", steps=3, lr=0.05)
    _same_state(net, before)
    _same_rng(rng)


def test_manipulation_result_record_is_json_and_names_its_fields():
    net = tanh_net()
    result = manipulate_model(net, [(XS, YS)], "gradient", "active", classes=(0, 1), steps=2, lr=0.05, eval_every=1)
    assert isinstance(result, ManipulationResult)
    record = json.loads(json.dumps(result.as_dict()))
    for key in ("fooling", "explanation", "accuracy_before", "accuracy_after", "fooling_loss_before",
                "fooling_loss_after", "steps", "kept_step", "checkpoints", "seconds", "step_seconds", "settings"):
        assert record[key] == json.loads(json.dumps(getattr(result, key))), key
    assert record["accuracy_drop"] == pytest.approx(result.accuracy_before - result.accuracy_after)
    assert record["settings"]["classes"] == [0, 1] and record["settings"]["steps"] == 2
    assert 0 < result.step_seconds <= result.seconds
    summary = result.summary()
    assert "active fooling of gradient" in summary and f"{result.accuracy_before:.4f}" in summary
