"""Tests of captum_global.metrics: hand-computed values per option, properties, model state, errors."""
import functools
import math

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from captum.metrics import infidelity
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError
from captum_global.metrics import (
    ForwardCounter,
    average_drop,
    bbox_accuracy,
    boxes_to_masks,
    deletion_auc,
    drop_and_increase,
    energy_pointing_game,
    flag_anomalies,
    increase_in_confidence,
    insertion_auc,
    mad_anomaly_index,
    miou,
    trigger_energy_share,
    trigger_iou,
)

FAITHFULNESS = (insertion_auc, deletion_auc, average_drop, increase_in_confidence)
LOCALISATION = (energy_pointing_game, bbox_accuracy, miou)


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


class PixelSum(torch.nn.Module):
    """One output: the sum of all input values."""

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True)


class SumLogit(torch.nn.Module):
    """Two logits ``(s, 0)`` with ``s`` the pixel sum: class 0's softmax probability is ``sigmoid(s)``."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], dim=1)


def masks_strategy():
    """Random [N, 6, 6] masks (non-empty) and positive [N, 6, 6] maps."""
    return st.integers(1, 4).flatmap(lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n * 36, max_size=n * 36),
        st.lists(st.floats(0, 10, allow_nan=False), min_size=n * 36, max_size=n * 36),
        st.just(n),
    ))


def _unpack(data):
    bits, values, n = data
    masks = torch.tensor(bits).view(n, 6, 6)
    masks[:, 0, 0] = True
    return masks, torch.tensor(values, dtype=torch.float32).view(n, 6, 6)


X4 = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2)  # a 2x2 image whose own values rank its pixels


# ---------------------------------------------------------------- localisation

def test_ebpg_by_hand():
    attr = torch.zeros(1, 3, 4, 4)
    attr[0, 0, 0, 0] = 3.0          # inside the box, channels are summed
    attr[0, 1, 0, 1] = 1.0          # inside
    attr[0, 2, 3, 3] = 4.0          # outside
    attr[0, 2, 3, 2] = -5.0         # negative evidence is dropped
    box = torch.tensor([[0, 0, 2, 2]])
    assert torch.allclose(energy_pointing_game(attr, box), torch.tensor([0.5]))
    assert torch.allclose(energy_pointing_game(attr, box, sign="absolute"), torch.tensor([4 / 13]))


def test_ebpg_zero_energy_is_zero_and_normalisation_removes_offset():
    assert energy_pointing_game(torch.zeros(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool)).tolist() == [0, 0]
    attr = torch.ones(1, 4, 4)
    attr[0, 0, 0] = 2.0
    box = torch.tensor([[0, 0, 1, 1]])
    assert energy_pointing_game(attr, box).item() == pytest.approx(1.0)
    assert energy_pointing_game(attr, box, normalize=False).item() == pytest.approx(2 / 17)


def test_bbox_accuracy_by_hand_with_ties_and_signs():
    attr = torch.arange(16.0).view(1, 4, 4)
    assert bbox_accuracy(attr, torch.tensor([[2, 2, 4, 4]])).item() == pytest.approx(0.5)
    assert bbox_accuracy(attr, torch.tensor([[0, 2, 4, 4]])).item() == pytest.approx(1.0)
    # A constant map: every pixel ties, the expected share is the box's area share.
    assert bbox_accuracy(torch.ones(1, 4, 4), torch.tensor([[0, 0, 2, 2]])).item() == pytest.approx(0.25)
    # Two top pixels tie with a third one outside: k = 2, one sure hit, one
    # remaining slot shared by two tied pixels of which one is inside.
    attr = torch.zeros(1, 4, 4)
    attr[0, 0, 0] = 2.0
    attr[0, 0, 1] = 1.0
    attr[0, 3, 3] = 1.0
    assert bbox_accuracy(attr, torch.tensor([[0, 0, 2, 1]])).item() == pytest.approx((1 + 0.5) / 2)
    # Sign rules: a strongly negative pixel inside a 1-pixel box.
    attr = torch.zeros(1, 2, 2)
    attr[0, 0, 0] = -3.0
    attr[0, 1, 1] = 1.0
    box = torch.tensor([[0, 0, 1, 1]])
    assert bbox_accuracy(attr, box, sign="absolute").item() == 1.0     # |-3| is the top pixel
    assert bbox_accuracy(attr, box, sign="all").item() == 0.0          # -3 is the bottom pixel
    # positive part: (0,0) ties at 0 with two other pixels, the top pixel (1,1) is outside
    assert bbox_accuracy(attr, box, sign="positive").item() == 0.0


def test_miou_by_hand_threshold_and_sign():
    attr = torch.zeros(1, 4, 4)
    attr[0, :2, :3] = 1.0
    attr[0, 3, 3] = 0.4
    box = torch.tensor([[0, 0, 2, 2]])
    assert miou(attr, box).item() == pytest.approx(4 / 6)
    assert miou(attr, box, threshold=0.3).item() == pytest.approx(4 / 7)
    assert miou(torch.ones(1, 4, 4), box).item() == 0.0
    neg = -attr
    assert miou(neg, box).item() == 0.0                                 # nothing positive: nothing selected
    assert miou(neg, box, sign="absolute").item() == pytest.approx(4 / 6)


def test_layer_sized_maps_are_upsampled_to_the_mask():
    low = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # [1, 1, 2, 2]
    mask = boxes_to_masks(torch.tensor([[0, 0, 4, 4]]), 8, 8)
    up = torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(energy_pointing_game(low, mask), energy_pointing_game(up, mask))
    assert energy_pointing_game(low, mask).item() > 0.7  # bilinear spreads a little out of the quarter


def test_image_pixel_boxes_with_a_layer_map_need_image_size():
    """A [N, 1, 8, 8] map with boxes in the pixels of the 64 x 64 image: refused unless
    image_size says so, then scored exactly as the upsampled map against 64 x 64 masks."""
    torch.manual_seed(4)
    low = torch.rand(2, 1, 8, 8)
    boxes = torch.tensor([[8, 8, 40, 40], [30, 2, 64, 20]])
    for metric in LOCALISATION:
        with pytest.raises(InvalidArgumentError, match="image_size"):
            metric(low, boxes)
        up = LayerAttribution.interpolate(low, (64, 64), interpolate_mode="bilinear")
        expected = metric(up, boxes_to_masks(boxes, 64, 64))
        assert torch.equal(metric(low, boxes, image_size=(64, 64)), expected)
        assert torch.equal(metric(low, boxes, image_size=(np.int64(64), 64)), expected)
    # Boxes in the map's own pixels still work without image_size.
    small = torch.tensor([[1, 1, 5, 5], [3, 0, 8, 2]])
    assert torch.equal(energy_pointing_game(low, small), energy_pointing_game(low, boxes_to_masks(small, 8, 8)))


@pytest.mark.parametrize("metric", LOCALISATION)
@pytest.mark.parametrize("bad, why", [
    (torch.tensor([[0, 0, 2, 2], [5, 5, 7, 7]]), "outside"),      # entirely outside the 4 x 4 map
    (torch.tensor([[0, 0, 2, 2], [2, 0, 5, 2]]), "outside"),      # sticks out
    (torch.tensor([[0, 0, 2, 2], [3, 3, 1, 1]]), "inverted"),     # corners swapped
    (torch.tensor([[0, 0, 2, 2], [1, 1, 1, 3]]), "empty"),        # zero width
    (torch.tensor([[0, 0, 2, 2], [-1, 0, 2, 2]]), "outside"),     # negative coordinate
    (torch.tensor([[0.0, 0, 2, 2], [0, 0, float("nan"), 2]]), "finite"),
])
def test_bad_boxes_are_refused_not_scored_zero(metric, bad, why):
    with pytest.raises(InvalidArgumentError, match=f"masks.*{why}|{why}.*masks|masks.*NaN"):
        metric(torch.rand(2, 4, 4), bad)


@pytest.mark.parametrize("metric", LOCALISATION)
def test_empty_masks_and_mismatches_are_refused(metric):
    masks = torch.ones(2, 4, 4, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(InvalidArgumentError, match="masks region of example 1 is empty"):
        metric(torch.rand(2, 4, 4), masks)
    with pytest.raises(InvalidArgumentError, match="masks has 1 examples but attributions has 2"):
        metric(torch.rand(2, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="image_size"):
        metric(torch.rand(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), image_size=(8, 8))
    with pytest.raises(InvalidArgumentError, match="masks must be bool or hold only 0 and 1"):
        metric(torch.rand(2, 4, 4), torch.full((2, 4, 4), 0.5))


def test_boxes_to_masks_by_hand_and_world_reexport():
    from captum_global.world import boxes_to_masks as world_boxes_to_masks

    assert world_boxes_to_masks is boxes_to_masks
    m = boxes_to_masks(torch.tensor([[2, 3, 10, 5], [0, 0, 8, 8]]), 8, 12)
    assert m.shape == (2, 8, 12) and m.dtype == torch.bool
    assert m.sum((1, 2)).tolist() == [16, 64]
    assert m[0, 3, 2] and not m[0, 5, 2] and not m[0, 3, 10]
    assert torch.equal(boxes_to_masks([[0.5, 0, 2.5, 1]], 1, 3), torch.tensor([[[False, True, True]]]))
    with pytest.raises(InvalidArgumentError, match="boxes must have shape"):
        boxes_to_masks(torch.zeros(3), 8, 8)
    with pytest.raises(InvalidArgumentError, match="boxes box 0 .* outside the 8 x 8 image"):
        boxes_to_masks(torch.tensor([[0, 0, 9, 8]]), 8, 8)
    with pytest.raises(InvalidArgumentTypeError, match="height"):
        boxes_to_masks(torch.tensor([[0, 0, 1, 1]]), 8.0, 8)


def test_tuple_and_single_channel_forms_agree():
    torch.manual_seed(0)
    attr = torch.randn(3, 1, 5, 5)
    masks = torch.rand(3, 5, 5) > 0.5
    masks[:, 2, 2] = True
    for metric in LOCALISATION:
        ref = metric(attr, masks)
        assert torch.equal(metric((attr,), masks), ref)
        assert torch.equal(metric(attr[:, 0], masks), ref)
        assert torch.equal(metric(attr, masks.float()), ref)
        assert torch.equal(metric(attr, masks.unsqueeze(1)), ref)


@settings(max_examples=25, deadline=None)
@given(masks_strategy(), st.floats(0.01, 100))
def test_ground_truth_properties(data, scale):
    masks, values = _unpack(data)
    perfect = masks.float()
    assert torch.allclose(energy_pointing_game(perfect, masks), torch.ones(masks.shape[0]))
    assert torch.allclose(bbox_accuracy(perfect, masks), torch.ones(masks.shape[0]))
    ebpg = energy_pointing_game(values, masks)
    assert ((ebpg >= 0) & (ebpg <= 1 + 1e-6)).all()
    for metric in LOCALISATION:
        ref = metric(values, masks)
        assert torch.allclose(metric(values * scale, masks), ref, atol=1e-5)
        perm = torch.randperm(masks.shape[0])
        assert torch.allclose(metric(values[perm], masks[perm]), ref[perm])


# ---------------------------------------------------------------- faithfulness: values per option

def test_insertion_and_deletion_by_hand():
    model = PixelSum()
    # insertion from 0: curve 0, 4, 7, 9, 10 -> (30 - 5) / 4
    auc, curve = insertion_auc(model, X4, X4, baselines=0, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[0, 4, 7, 9, 10]]
    assert auc.item() == pytest.approx(6.25)
    # deletion: 10, 6, 3, 1, 0 -> (20 - 5) / 4
    assert deletion_auc(model, X4, X4, n_steps=4, score="raw").item() == pytest.approx(3.75)
    # two steps of two pixels: 0, 7, 10 -> (17 - 5) / 2
    assert insertion_auc(model, X4, X4, baselines=0, n_steps=2, score="raw").item() == pytest.approx(6.0)


def test_curve_baselines_number_and_tensor_by_hand():
    model = PixelSum()
    # deletion to 1: 10, 7 (4 -> 1), 5 (3 -> 1), 4 (2 -> 1), 4 -> (30 - 7) / 4
    _, curve = deletion_auc(model, X4, X4, baselines=1, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10, 7, 5, 4, 4]]
    base = torch.tensor([[10.0, 20.0], [30.0, 40.0]]).view(1, 1, 2, 2)
    # insertion from the per-pixel baseline (sum 100): insert 4 (was 10), 3 (20), 2 (30), 1 (40)
    _, curve = insertion_auc(model, X4, X4, baselines=base, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[100, 94, 77, 49, 10]]
    # a broadcast [C, H, W]-shaped baseline gives the same
    _, again = insertion_auc(model, X4, X4, baselines=base[0], n_steps=4, score="raw", return_curve=True)
    assert torch.equal(again, curve)
    # NumPy scalar baseline is a number like any other
    assert deletion_auc(model, X4, X4, baselines=np.float32(1), n_steps=4, score="raw").item() == pytest.approx(5.75)


def test_blur_baseline_matches_scipy_gaussian():
    """Insertion's default start is RISE's blur: kernel 11 (shrunk to fit), sigma 5, reflect padding."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 9, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    everything = lambda t: t.flatten(1)  # noqa: E731  (one output per pixel)
    # kernel of 11 fits (reflect needs radius 5 < 7): scipy "mirror" is torch's "reflect"
    expected = ndimage.gaussian_filter(x[0, 0].numpy(), sigma=5.0, mode="mirror", truncate=1.0)
    for pixel in (0, 17, 62):
        _, curve = insertion_auc(everything, x, torch.zeros(1, 9, 7), target=pixel, n_steps=1, score="raw",
                                 return_curve=True)
        assert curve[0, 0].item() == pytest.approx(float(expected.flat[pixel]), abs=1e-9)
        assert curve[0, 1].item() == pytest.approx(float(x.flatten()[pixel]), abs=1e-12)


def test_softmax_score_by_hand():
    # SumLogit: class 0's probability is sigmoid(pixel sum)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    _, curve = deletion_auc(SumLogit(), X4, X4, target=0, n_steps=4, return_curve=True)
    assert curve[0].tolist() == pytest.approx([sig(10), sig(6), sig(3), sig(1), sig(0)])
    _, raw = deletion_auc(SumLogit(), X4, X4, target=0, n_steps=4, score="raw", return_curve=True)
    assert raw.tolist() == [[10, 6, 3, 1, 0]]
    _, other = deletion_auc(SumLogit(), X4, X4, target=1, n_steps=4, return_curve=True)
    assert other[0].tolist() == pytest.approx([1 - sig(10), 1 - sig(6), 1 - sig(3), 1 - sig(1), 0.5])
    # drop: Y = sigmoid(10), O = sigmoid(7) (map keeps the top row)
    attr = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    drop, inc = drop_and_increase(SumLogit(), X4.double(), attr, target=0)  # float64: Y - O is small
    assert drop.dtype == torch.float64
    assert drop.item() == pytest.approx(100 * (sig(10) - sig(7)) / sig(10))
    assert inc.item() == 0.0
    with pytest.raises(InvalidArgumentError, match="score='softmax' needs"):
        drop_and_increase(lambda t: t.flatten(1).sum(1), X4, attr)


def test_curve_sign_rules_by_hand():
    attr = torch.tensor([[-5.0, 1.0], [2.0, 0.0]]).view(1, 1, 2, 2)  # pixel values 4, 3, 2, 1
    model = PixelSum()
    # positive: ranks 2 (value 2), 1 (3), then the ties -5 -> 0 and 0 in raster order (4, then 1)
    _, curve = deletion_auc(model, X4, attr, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10, 8, 5, 1, 0]]
    # absolute: 5 (4), 2 (2), 1 (3), 0 (1)
    _, curve = deletion_auc(model, X4, attr, sign="absolute", n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10, 6, 4, 1, 0]]
    # all: 2 (2), 1 (3), 0 (1), -5 (4)
    _, curve = deletion_auc(model, X4, attr, sign="all", n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10, 8, 5, 4, 0]]


def test_drop_and_increase_by_hand_with_baselines_and_signs():
    attr = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)  # normalised map keeps the top row
    drop, inc = drop_and_increase(PixelSum(), X4, attr, score="raw")
    assert drop.item() == pytest.approx(100 * 3 / 10)
    assert inc.item() == 0.0
    neg = lambda t: 20 - t.flatten(1).sum(1, keepdim=True)  # noqa: E731  (score rises as the input shrinks)
    drop, inc = drop_and_increase(neg, X4, attr, score="raw")
    assert drop.item() == 0.0 and inc.item() == 100.0
    # baseline 2: explained = 2 + map * (x - 2) = [4, 3, 2, 2] -> O = 11 > Y = 10
    drop, inc = drop_and_increase(PixelSum(), X4, attr, baselines=2, score="raw")
    assert drop.item() == 0.0 and inc.item() == 100.0
    # half map: [[1, 0.5], [0, 0]] -> O = 4 + 1.5 = 5.5
    half = torch.tensor([[1.0, 0.5], [0.0, 0.0]]).view(1, 2, 2)
    assert average_drop(PixelSum(), X4, half, score="raw").item() == pytest.approx(45.0)
    # sign: -attr has no positive part -> map all 0 -> O = 0; absolute keeps the top row
    assert average_drop(PixelSum(), X4, -attr, score="raw").item() == pytest.approx(100.0)
    assert average_drop(PixelSum(), X4, -attr, score="raw", sign="absolute").item() == pytest.approx(30.0)
    # Y <= 0 (raw scores only): no defined drop
    assert math.isnan(average_drop(lambda t: -PixelSum()(t), X4, attr, score="raw").item())


def test_deletion_of_perfect_map_below_its_reverse_on_linear_model():
    torch.manual_seed(1)
    weights = torch.randn(2, 1 * 6 * 6)
    model = lambda t: t.flatten(1) @ weights.T  # noqa: E731
    x = torch.rand(3, 1, 6, 6)
    contribution = (x.flatten(1) * weights[0]).view(3, 1, 6, 6)  # exact attribution for class 0
    perfect = deletion_auc(model, x, contribution, target=0, score="raw", n_steps=12)
    reverse = deletion_auc(model, x, -contribution, target=0, score="raw", n_steps=12)
    assert (perfect < reverse).all()
    assert (insertion_auc(model, x, contribution, target=0, score="raw", baselines=0, n_steps=12)
            > insertion_auc(model, x, -contribution, target=0, score="raw", baselines=0, n_steps=12)).all()


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 40), st.integers(0, 1000))
def test_batch_size_never_changes_results(batch_size, seed):
    model = tiny_cnn()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, 8, 8, generator=g)
    attr = torch.randn(3, 1, 4, 4, generator=g)
    target = [0, 2, 1]
    for fn in (insertion_auc, deletion_auc):
        ref = fn(model, x, attr, target=target, n_steps=5)
        assert torch.allclose(fn(model, x, attr, target=target, n_steps=5, batch_size=batch_size), ref, atol=1e-6)
        assert torch.allclose(fn(model, x, attr, target=target, n_steps=np.int64(5), batch_size=np.int32(batch_size)),
                              ref, atol=1e-6)
    drop, inc = drop_and_increase(model, x, attr, target=target)
    drop_b, inc_b = drop_and_increase(model, x, attr, target=target, batch_size=batch_size)
    assert torch.allclose(drop_b, drop, atol=1e-4) and torch.equal(inc_b, inc)


def test_batch_permutation_permutes_faithfulness_results():
    model = tiny_cnn()
    torch.manual_seed(2)
    x, attr, target = torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    perm = torch.tensor([2, 0, 3, 1])
    for fn in FAITHFULNESS:
        options = {"n_steps": 8} if fn in (insertion_auc, deletion_auc) else {}
        ref = fn(model, x, attr, target=target, **options)
        assert torch.allclose(fn(model, x[perm], attr[perm], target=target[perm], **options), ref[perm], atol=1e-6)


def test_captum_target_formats_agree():
    model = tiny_cnn()
    torch.manual_seed(6)
    x, attr = torch.rand(2, 3, 8, 8), torch.randn(2, 1, 8, 8)
    ref = deletion_auc(model, x, attr, target=2, n_steps=3)
    for same in (np.int64(2), -1, (2,), [2, 2], [(2,), (2,)], torch.tensor(2), torch.tensor([2, 2]),
                 np.array([2, 2])):
        assert torch.equal(deletion_auc(model, x, attr, target=same, n_steps=3), ref), same
    per_example = deletion_auc(model, x, attr, target=[0, 2], n_steps=3)
    assert per_example[1] == ref[1] and per_example[0] == deletion_auc(model, x[:1], attr[:1], target=0, n_steps=3)
    for bad in (True, 1.0, "2", torch.tensor([2.0, 2.0]), [2], 3, -4, torch.tensor([[2, 2]]), ()):
        with pytest.raises(InvalidArgumentError, match="target"):
            deletion_auc(model, x, attr, target=bad, n_steps=3)


def test_evaluation_counts_are_as_documented():
    model = ForwardCounter(tiny_cnn())
    x, attr = torch.rand(5, 3, 8, 8), torch.rand(5, 1, 8, 8)
    drop_and_increase(model, x, attr, target=1, batch_size=3)
    assert model.n_examples == 2 * 5 and model.n_calls == 4
    model.reset()
    insertion_auc(model, x, attr, target=1, n_steps=7, batch_size=16)
    assert model.n_examples == 5 * 8 and model.n_calls == 3


def test_additional_forward_args_follow_their_example():
    class Scaled(torch.nn.Module):
        def forward(self, x, scale):
            return x.flatten(1).sum(1, keepdim=True) * scale.view(-1, 1)

    x = torch.rand(3, 1, 4, 4)
    scale = torch.tensor([1.0, 2.0, 3.0])
    ref = deletion_auc(PixelSum(), x, x, score="raw", n_steps=4)
    got = deletion_auc(Scaled(), x, x, additional_forward_args=(scale,), score="raw", n_steps=4, batch_size=4)
    assert torch.allclose(got, ref * scale)


# ---------------------------------------------------------------- the model as found, eval mode

class NormNet(torch.nn.Module):
    """Batch norm and dropout: train mode would change both the value and the running stats."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).relu().mean((2, 3))))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()], \
        [p.requires_grad for p in model.parameters()]


_CASES = [(metric, "module") for metric in FAITHFULNESS] + [
    (average_drop, wrap) for wrap in ("bound_forward", "partial", "counter")]


@pytest.mark.parametrize("metric, wrap", _CASES, ids=[f"{m.__name__}-{w}" for m, w in _CASES])
def test_metrics_run_in_eval_mode_and_leave_the_model_as_found(metric, wrap):
    torch.manual_seed(8)
    x, attr = torch.rand(3, 3, 8, 8), torch.rand(3, 1, 8, 8)
    options = {"n_steps": 4} if metric in (insertion_auc, deletion_auc) else {}
    model = NormNet().eval()
    reference = metric(model, x, attr, target=1, **options)
    model.train()
    model.fc.weight.requires_grad_(False)
    before = _state(model)
    func = {"module": model, "bound_forward": model.forward, "partial": functools.partial(model),
            "counter": ForwardCounter(model)}[wrap]
    first = metric(func, x, attr, target=1, **options)
    second = metric(func, x, attr, target=1, **options)
    assert torch.equal(first, reference) and torch.equal(second, reference)
    after = _state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])  # weights, BN running stats
    assert before[1] == after[1] and before[2] == after[2]                 # training, requires_grad flags
    # also when the metric fails half-way
    with pytest.raises(InvalidArgumentError):
        metric(func, x, attr, target=9, **options)
    assert [m.training for m in model.modules()] == before[1]


def test_non_finite_model_output_raises_naming_the_example():
    def sometimes_nan(t):
        out = t.flatten(1).sum(1, keepdim=True)
        return torch.where(t.flatten(1)[:, :1] == 0, torch.full_like(out, float("nan")), out)

    x = torch.rand(2, 1, 2, 2) + 0.5
    x[1, 0, 0, 0] = 0.0  # example 1 hits the model's NaN region at once
    with pytest.raises(NonFiniteOutputError, match=r"example\(s\) \[1\]"):
        drop_and_increase(sometimes_nan, x, x, baselines=0.25, score="raw")
    with pytest.raises(NonFiniteOutputError, match="deletion_auc"):
        deletion_auc(sometimes_nan, x[:1], x[:1], score="raw", n_steps=2)  # the baseline 0 is the NaN region


# ---------------------------------------------------------------- composing with Captum

def test_metrics_accept_captum_attributions():
    model = tiny_cnn()
    torch.manual_seed(3)
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([0, 1])
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]])
    sal = Saliency(model).attribute(x, target=target)
    cam = LayerGradCam(model, model[3]).attribute(x, target=target, relu_attributions=True)  # [2, 1, 4, 4]
    up = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear")
    masks = boxes_to_masks(boxes, 8, 8)
    for metric in LOCALISATION:
        assert torch.equal(metric(cam, boxes, image_size=(8, 8)), metric(up, masks))
        assert torch.equal(metric(sal, boxes), metric(sal.sum(1), masks))
    for metric in FAITHFULNESS:
        options = {"n_steps": 8} if metric in (insertion_auc, deletion_auc) else {}
        assert torch.allclose(metric(model, x, cam, target=target, **options),
                              metric(model, x, up, target=target, **options), atol=1e-6)
    # Captum's own infidelity takes the same input-shaped attribution unchanged.
    perturb = lambda inp: (torch.randn_like(inp) * 0.01, inp - torch.randn_like(inp) * 0.01)  # noqa: E731
    assert infidelity(model, perturb, x, sal, target=target, n_perturb_samples=2).shape == (2,)


# ---------------------------------------------------------------- backdoor

def test_trigger_energy_share_is_ebpg_with_the_trigger():
    attr = torch.rand(3, 1, 8, 8)
    trigger = torch.zeros(8, 8, dtype=torch.bool)
    trigger[5:, 5:] = True
    assert torch.equal(trigger_energy_share(attr, trigger), energy_pointing_game(attr, trigger.expand(3, 8, 8)))


def test_mad_anomaly_index_by_hand_and_flags():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 40.0])
    # median 3, |v - 3| = 2, 1, 0, 1, 37, MAD 1
    assert torch.allclose(mad_anomaly_index(v), torch.tensor([2, 1, 0, 1, 37]) / 1.4826)
    assert flag_anomalies(v).tolist() == [False, False, False, False, True]
    assert not flag_anomalies(v, direction="low").any()
    low = torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0, 30.5])
    assert flag_anomalies(low, direction="low").tolist() == [False, False, True, False, False, False]
    # MAD = 0 guard: mean absolute deviation, and all-equal gives zeros
    v = torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0])
    assert torch.allclose(mad_anomaly_index(v)[-1], torch.tensor(9 / (1.8 * (torch.pi / 2) ** 0.5)))
    assert mad_anomaly_index(torch.ones(4)).tolist() == [0, 0, 0, 0]


def test_backdoor_metrics_refuse_bad_regions_and_options_by_name():
    maps = torch.rand(2, 1, 8, 8)
    empty = torch.zeros(8, 8, dtype=torch.bool)
    one_empty = torch.ones(2, 8, 8, dtype=torch.bool)
    one_empty[1] = False
    cases = [
        (lambda: trigger_energy_share(maps, empty), "trigger_mask marks no pixel \\(example 0\\)"),
        (lambda: trigger_iou(maps[:, 0], one_empty), "trigger_mask marks no pixel \\(example 1\\)"),
        (lambda: trigger_iou(maps[:, 0], torch.ones(4, 4, dtype=torch.bool)), "trigger_mask must have shape \\(8, 8\\)"),
        (lambda: trigger_energy_share(maps, torch.ones(3, 8, 8, dtype=torch.bool)), "trigger_mask must have shape"),
        (lambda: mad_anomaly_index(torch.ones(1)), "values must hold at least 2"),
        (lambda: flag_anomalies(torch.rand(4), threshold=float("nan")), "threshold"),
        (lambda: flag_anomalies(torch.rand(4), direction="up"), "direction"),
    ]
    for call, message in cases:
        with pytest.raises(InvalidArgumentError, match=message):
            call()
    # a layer-resolution map is read against an image-resolution trigger (upsampled, as the other metrics do)
    low = torch.zeros(1, 1, 2, 2)
    low[0, 0, 1, 1] = 1.0
    corner = torch.zeros(8, 8, dtype=torch.bool)
    corner[4:, 4:] = True
    assert trigger_energy_share(low, corner, normalize=False).item() > 0.5



def test_soft_or_non_finite_trigger_masks_are_refused_not_binarised():
    """``.bool()`` made every nonzero pixel of a soft mask part of the region: the share then read near 1."""
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1.0
    maps[0, 3, 3] = 3.0
    soft = torch.full((4, 4), 0.01)  # e.g. a reversed trigger mask, nonzero everywhere
    soft[0, 0] = 0.9
    for call in (lambda m: trigger_energy_share(maps, m), lambda m: trigger_iou(maps, m)):
        for bad in (soft, torch.full((4, 4), float("nan"))):
            with pytest.raises(InvalidArgumentError, match="trigger_mask must be bool or hold only 0 and 1"):
                call(bad)
    # 0/1 numbers are a region, as for the localisation metrics: by hand 1 / (1 + 3) and 1 / (2 - 1)
    region = (soft > 0.5).float()
    assert torch.allclose(trigger_energy_share(maps, region, normalize=False), torch.tensor([0.25]))
    assert trigger_iou(maps, region).tolist() == [0.0]  # the top pixel (3.0) is outside
    assert trigger_iou(maps * torch.tensor([1.0, 0.0]).repeat(8).view(4, 4), region).tolist() == [1.0]


def test_trigger_iou_and_leave_one_out_refuse_wrong_types_by_name():
    region = torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(InvalidArgumentTypeError, match="attributions must hold real numbers, got dtype torch.bool"):
        trigger_iou(torch.ones(1, 2, 2, dtype=torch.bool), region)
    with pytest.raises(InvalidArgumentTypeError, match="leave_one_out"):
        mad_anomaly_index(torch.tensor([1.0, 2.0, 3.0]), leave_one_out="yes")


# ---------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x, box = torch.rand(2, 3, 4, 4), torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    model = tiny_cnn()
    cases = [
        (lambda: energy_pointing_game(bad, box), InvalidArgumentError, "attributions must be finite"),
        (lambda: bbox_accuracy(x, box[:1]), InvalidArgumentError, "masks has 1 examples"),
        (lambda: miou(x, torch.zeros(2, 4, dtype=torch.bool)), InvalidArgumentError, "masks must be bool"),
        (lambda: energy_pointing_game(torch.rand(2, 2, 3, 4, 4), box), InvalidArgumentError, "attributions must be"),
        (lambda: energy_pointing_game(x, box, sign="all"), InvalidArgumentError, "sign must be one of"),
        (lambda: energy_pointing_game(x, box, normalize=1), InvalidArgumentTypeError, "normalize"),
        (lambda: miou(x, box, threshold=float("nan")), InvalidArgumentError, "threshold must be a number, got NaN"),
        (lambda: miou(x, box, threshold=1.0), InvalidArgumentError, "threshold must be < 1"),
        (lambda: miou(x, box, image_size=(4, 0)), InvalidArgumentError, r"image_size\[1\]"),
        (lambda: deletion_auc(model, bad, x, target=0), InvalidArgumentError, "inputs must be finite"),
        (lambda: deletion_auc(model, x.long(), x, target=0), InvalidArgumentTypeError, "inputs must be a floating"),
        (lambda: deletion_auc(model, x[:0], x[:0], target=0), InvalidArgumentError, "inputs must hold"),
        (lambda: deletion_auc(model, x, x, target=7, n_steps=2), InvalidArgumentError, "target 7"),
        (lambda: insertion_auc(model, x, x[:1], target=0, n_steps=2), InvalidArgumentError, "attributions has 1"),
        (lambda: deletion_auc(model, x, x, target=0, baselines=torch.zeros(5, 4, 4)), InvalidArgumentError,
         "baselines of shape"),
        (lambda: deletion_auc(model, x, x, target=0, baselines=float("nan")), InvalidArgumentError,
         "baselines must be a number, got NaN"),
        (lambda: deletion_auc(model, x, x, target=0, baselines=True), InvalidArgumentTypeError, "baselines"),
        (lambda: deletion_auc(model, x, x, target=0, baselines="noise"), InvalidArgumentError, "baselines"),
        (lambda: insertion_auc(model, x, x, target=0, n_steps=0), InvalidArgumentError, "n_steps must be >= 1"),
        (lambda: insertion_auc(model, x, x, target=0, n_steps=2.0), InvalidArgumentTypeError, "n_steps"),
        (lambda: insertion_auc(model, x, x, target=0, return_curve="yes"), InvalidArgumentTypeError, "return_curve"),
        (lambda: average_drop(model, x, x, target=0, batch_size=0), InvalidArgumentError, "batch_size"),
        (lambda: average_drop(model, x, x, target=0, score="logit"), InvalidArgumentError, "score must be one of"),
        (lambda: average_drop(model, x, x, target=0, sign="pos"), InvalidArgumentError, "sign must be one of"),
        (lambda: average_drop(lambda t: (model(t),), x, x, target=0), InvalidArgumentTypeError, "forward_func"),
        (lambda: average_drop("model", x, x, target=0), InvalidArgumentTypeError, "forward_func"),
        (lambda: mad_anomaly_index(torch.tensor([1.0, float("nan"), 2.0])), ValueError, "values"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_inference_mode_and_grad_tensors_are_accepted():
    model = tiny_cnn()
    with torch.inference_mode():
        x = torch.rand(2, 3, 8, 8)
        attr = torch.rand(2, 1, 8, 8)
    ref = deletion_auc(model, x.clone(), attr.clone(), target=1, n_steps=3)
    assert torch.equal(deletion_auc(model, x, attr, target=1, n_steps=3), ref)
    grad_attr = attr.clone().requires_grad_(True)
    assert torch.equal(deletion_auc(model, x.clone(), grad_attr * 1.0, target=1, n_steps=3), ref)


def test_the_use_page_examples_run(capsys):
    import pathlib
    import re

    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "use" / "metrics.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
    out = capsys.readouterr().out
    assert "pass image_size=(H, W)" in out and "torch.Size([2, 17])" in out
