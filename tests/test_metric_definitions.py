"""Each metric against its published definition, by hand and against a peer.

Tiny hand-made maps, boxes and models whose expected value is worked out in
the comment next to each assertion; every option of every metric; peers
(Quantus, pytorch-grad-cam, SciPy, NumPy, a direct loop) where one exists.
Definitions: EBPG (Score-CAM), bbox accuracy, mIoU, Average Drop / Increase
in Confidence (Grad-CAM++), insertion / deletion AUC (RISE), Neural
Cleanse's MAD anomaly index, and the fooling statistics (Heo et al. 2019).
"""
import importlib.util
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
from captum_global.robustness import (
    center_of_mass,
    center_of_mass_shift,
    fooling_statistic,
    fooling_success,
    location_loss,
    rank_correlation,
    top_k_mass,
    top_k_overlap,
    top_k_region,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "use"


class SumLogit(torch.nn.Module):
    """Logits ``(s, 0)``, ``s`` the pixel sum: softmax of class 0 is ``sigmoid(s)``, raw score ``s``."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s, torch.zeros_like(s)], dim=1)


def sig(v):
    return 1 / (1 + math.exp(-v))


# A 4 x 4 map: 3 at (0, 0), 1 at (1, 1), -5 at (2, 2), 2 at (3, 3), 0 elsewhere; box = top-left 2 x 2
MAP = torch.zeros(1, 4, 4)
MAP[0, 0, 0], MAP[0, 1, 1], MAP[0, 2, 2], MAP[0, 3, 3] = 3.0, 1.0, -5.0, 2.0
BOX = torch.tensor([[0, 0, 2, 2]])
# a 2 x 2 image whose own values rank its pixels
X4 = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2)


# ---------------------------------------------------------------- energy pointing game

def test_ebpg_by_hand_every_option():
    # positive part 3, 1, 2 (max 3, min 0) -> normalised 1, 1/3, 2/3; inside 1 + 1/3 of 2 -> 2/3
    assert energy_pointing_game(MAP, BOX).item() == pytest.approx(2 / 3)
    # raw ratio: (3 + 1) / 6 -> 2/3 (min 0: normalising only rescales)
    assert energy_pointing_game(MAP, BOX, normalize=False).item() == pytest.approx(2 / 3)
    # absolute: 3, 1, 5, 2 (min 0, max 5): (3 + 1) / 11
    assert energy_pointing_game(MAP, BOX, sign="absolute").item() == pytest.approx(4 / 11)
    assert energy_pointing_game(MAP, BOX, sign="absolute", normalize=False).item() == pytest.approx(4 / 11)
    # an offset map [[2, 1], [1, 1]], box = pixel (0, 0): min-max -> [[1, 0], [0, 0]] -> 1; raw 2 / 5
    offset = torch.tensor([[[2.0, 1.0], [1.0, 1.0]]])
    one = torch.tensor([[0, 0, 1, 1]])
    assert energy_pointing_game(offset, one).item() == pytest.approx(1.0)
    assert energy_pointing_game(offset, one, normalize=False).item() == pytest.approx(0.4)
    # constant map: no energy after min-max -> 0 (not NaN); raw ratio = box share 1/4
    assert energy_pointing_game(torch.ones(1, 2, 2), one).item() == 0.0
    assert energy_pointing_game(torch.ones(1, 2, 2), one, normalize=False).item() == pytest.approx(0.25)


def test_ebpg_channels_tuple_masks_and_batches():
    # [N, C, H, W]: channels summed first: (2, -1) at (0, 0) -> 1; same as the [N, H, W] map of sums
    rgb = torch.zeros(1, 2, 4, 4)
    rgb[0, 0] = MAP[0] + 1
    rgb[0, 1] = -torch.ones(4, 4)
    assert energy_pointing_game(rgb, BOX).item() == pytest.approx(2 / 3)
    assert energy_pointing_game((MAP,), BOX).item() == pytest.approx(2 / 3)           # 1-tuple
    mask = boxes_to_masks(BOX, 4, 4)
    assert energy_pointing_game(MAP, mask).item() == pytest.approx(2 / 3)             # bool mask
    assert energy_pointing_game(MAP, mask.float().unsqueeze(1)).item() == pytest.approx(2 / 3)  # 0/1 [N,1,H,W]
    # several examples: each scored on its own
    other = torch.zeros(1, 4, 4)
    other[0, 3, 3] = 1.0                                                              # all energy outside
    both = energy_pointing_game(torch.cat([MAP, other]), torch.cat([BOX, BOX]))
    assert both.tolist() == pytest.approx([2 / 3, 0.0])


def test_ebpg_layer_map_upsampled_to_the_image_by_hand():
    # [1, 1, 1, 2] map [0, 1] upsampled bilinearly (align_corners=False) to 4 x 8: column x samples
    # source (x + 0.5) / 4 - 0.5, clamped: 0, 0, .125, .375, .625, .875, 1, 1 (same on every row)
    # box = right half: (.625 + .875 + 1 + 1) / 4 = 3.5 / 4
    layer = torch.tensor([[[[0.0, 1.0]]]])
    assert energy_pointing_game(layer, torch.tensor([[4, 0, 8, 4]]), image_size=(4, 8)).item() == pytest.approx(0.875)


def test_ebpg_equals_quantus_relevance_mass_accuracy():
    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 6, 6, generator=gen)
    masks = torch.rand(3, 6, 6, generator=gen) > 0.6
    masks[:, 0, 0] = True
    peer = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(a_batch=maps.numpy(),
                                                                                s_batch=masks.numpy())
    ours = energy_pointing_game(maps, masks, normalize=False)  # Quantus uses the raw (non-negative) map
    assert ours.tolist() == pytest.approx(list(peer), abs=1e-6)


# ---------------------------------------------------------------- bbox accuracy

def test_bbox_accuracy_by_hand_every_sign_and_ties():
    # k = 4. positive: 3, 2, 1 above the 4th value (0); 13 zeros tie for the last place, 2 of them
    # inside -> (2 + 1 * 2/13) / 4 = 7/13
    assert bbox_accuracy(MAP, BOX).item() == pytest.approx(7 / 13)
    # all: 3, 2, 1 then 12 zeros (the -5 is last), 2 inside -> (2 + 2/12) / 4 = 13/24
    assert bbox_accuracy(MAP, BOX, sign="all").item() == pytest.approx(13 / 24)
    # absolute: 5, 3, 2, 1 exactly fill k: inside 3 and 1 -> 2/4
    assert bbox_accuracy(MAP, BOX, sign="absolute").item() == pytest.approx(0.5)
    # a constant map: chance level, area / pixels = 4 / 16
    assert bbox_accuracy(torch.ones(1, 4, 4), BOX).item() == pytest.approx(0.25)
    # N counted in pixels of the mask: float box (0.5, 0.5, 2.5, 2) holds x in {1, 2}, y = 1 -> k = 2
    fbox = torch.tensor([[0.5, 0.5, 2.5, 2.0]])
    assert boxes_to_masks(fbox, 4, 4).sum().item() == 2
    # top 2 of MAP (positive): 3 at (0, 0) outside, 2 at (3, 3) outside -> 0
    assert bbox_accuracy(MAP, fbox).item() == 0.0


def test_bbox_accuracy_equals_quantus_relevance_rank_accuracy_without_ties():
    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 6, 6, generator=gen)   # distinct values: no tie rule involved
    masks = torch.rand(3, 6, 6, generator=gen) > 0.5
    masks[:, 0, 0] = True
    peer = quantus.RelevanceRankAccuracy(disable_warnings=True).evaluate_batch(a_batch=maps.numpy(),
                                                                                s_batch=masks.numpy())
    assert bbox_accuracy(maps, masks).tolist() == pytest.approx(list(peer), abs=1e-6)


# ---------------------------------------------------------------- mIoU

def test_miou_by_hand_thresholds_and_signs():
    # positive, normalised 1 (0,0), 1/3 (1,1), 2/3 (3,3); > 0.5: (0,0), (3,3) -> inter 1, union 4 + 1 = 5
    assert miou(MAP, BOX).item() == pytest.approx(0.2)
    # > 0: the three -> inter 2, union 5
    assert miou(MAP, BOX, threshold=0.0).item() == pytest.approx(0.4)
    # > 0.9: (0, 0) only -> 1/4
    assert miou(MAP, BOX, threshold=0.9).item() == pytest.approx(0.25)
    # all, > 0: everything above the minimum (-5): 15 pixels, 4 inside -> 4/15
    assert miou(MAP, BOX, sign="all", threshold=0.0).item() == pytest.approx(4 / 15)
    # absolute, > 0.5 (of 5): 3 (0,0), 5 (2,2) -> inter 1, union 5
    assert miou(MAP, BOX, sign="absolute").item() == pytest.approx(0.2)
    # a constant map selects nothing -> 0
    assert miou(torch.ones(1, 4, 4), BOX).item() == 0.0


# ---------------------------------------------------------------- Average Drop / Increase in Confidence

def test_drop_and_increase_by_hand_raw_and_softmax():
    half = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])          # already in [0, 1]: explained = [[4, 1.5], [0, 0]]
    # raw: Y = 10, O = 5.5 -> drop 100 * 4.5 / 10 = 45, no increase
    drop, inc = drop_and_increase(SumLogit(), X4, half, target=0, score="raw")
    assert drop.item() == pytest.approx(45.0) and inc.item() == 0.0
    # softmax of class 0: Y = sigmoid(10), O = sigmoid(5.5)
    drop = average_drop(SumLogit(), X4.double(), half, target=0)
    assert drop.item() == pytest.approx(100 * (sig(10) - sig(5.5)) / sig(10))
    # class 1 (probability 1 - sigmoid(s)) rises when the image shrinks: drop 0, increase 100
    assert average_drop(SumLogit(), X4, half, target=1).item() == 0.0
    assert increase_in_confidence(SumLogit(), X4, half, target=1).item() == 100.0


def test_drop_and_increase_baselines_signs_and_shapes():
    half = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    # baseline 2: 2 + m (x - 2) = [[4, 2.5], [2, 2]] -> O = 10.5 > Y = 10
    drop, inc = drop_and_increase(SumLogit(), X4, half, target=0, baselines=2, score="raw")
    assert drop.item() == 0.0 and inc.item() == 100.0
    # tensor baseline [[1, 1], [1, 1]] broadcast: [[4, 2], [1, 1]] -> O = 8 -> drop 20
    assert average_drop(SumLogit(), X4, half, target=0, baselines=torch.ones(1, 2, 2),
                        score="raw").item() == pytest.approx(20.0)
    # sign="all": [[1, -1], [0, 0]] min-max -> [[1, 0], [.5, .5]] -> [[4, 0], [1, .5]] -> O = 5.5
    signed = torch.tensor([[[1.0, -1.0], [0.0, 0.0]]])
    assert average_drop(SumLogit(), X4, signed, target=0, sign="all", score="raw").item() == pytest.approx(45.0)
    # positive (default): [[1, 0], [0, 0]] -> O = 4 -> 60; absolute: [[1, 1], [0, 0]] -> O = 7 -> 30
    assert average_drop(SumLogit(), X4, signed, target=0, score="raw").item() == pytest.approx(60.0)
    assert average_drop(SumLogit(), X4, signed, target=0, sign="absolute", score="raw").item() == pytest.approx(30.0)
    # a layer map [1, 1, 1, 2] = [1, 0] upsampled bilinearly to 2 x 2: the one row repeats and the
    # columns land on the source pixels: [[1, 0], [1, 0]]
    # -> O = 4 + 2 = 6 -> 40; as a 1-tuple of inputs and attributions too
    layer = torch.tensor([[[[1.0, 0.0]]]])
    assert average_drop(SumLogit(), (X4,), (layer,), target=0, score="raw").item() == pytest.approx(40.0)


def test_drop_is_nan_where_the_softmax_probability_underflows_to_zero_as_documented():
    """Docs said NaN only for raw scores; a float32 softmax of -60 vs 60 is exactly 0 too."""
    x = torch.full((1, 1, 1, 2), 120.0)   # logits (240, 0): class 1's probability e^-240 is 0 in float32
    drop = average_drop(SumLogit(), x, torch.ones(1, 1, 2), target=1)   # Y = 0 -> 0 / 0
    assert math.isnan(drop.item())
    doc = " ".join((DOCS / "metrics.md").read_text().split())
    assert "underflows" in doc and "raw scores only" not in doc


def test_drop_and_increase_equal_pytorch_grad_cam_confidence_change():
    """pytorch-grad-cam's CamMultImageConfidenceChange returns O - Y (softmax target here):
    its DropInConfidence is max(0, Y - O) (not divided by Y) and IncreaseInConfidence [O > Y]."""
    try:  # load the one module: the package's __init__ imports all of pytorch-grad-cam (seconds)
        path = Path(metadata.distribution("grad-cam").locate_file(
            "pytorch_grad_cam/metrics/perturbation_confidence.py"))
    except metadata.PackageNotFoundError:
        pytest.skip("pytorch-grad-cam not installed")
    if not path.exists():
        pytest.skip("pytorch-grad-cam has no metrics/perturbation_confidence.py")
    spec = importlib.util.spec_from_file_location("_gradcam_perturbation_confidence", path)
    peer_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_module)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.rand(4, 3, 4, 4)
    attr = torch.rand(4, 1, 4, 4)
    target = [0, 1, 2, 1]
    cams = attr[:, 0].numpy()
    cams = (cams - cams.min(axis=(1, 2), keepdims=True)) / np.ptp(cams, axis=(1, 2), keepdims=True)
    targets = [lambda out, c=c: torch.softmax(out, -1)[c] for c in target]
    peer = peer_module.PerturbationConfidenceMetric(lambda t, cam: t * cam)(x, cams, targets, model)
    with torch.no_grad():
        y = model(x).softmax(1)[range(4), target].numpy()
    drop, inc = drop_and_increase(model, x, attr, target=target, batch_size=3)
    assert (drop.numpy() * y / 100) == pytest.approx(np.maximum(-peer, 0), abs=1e-6)
    assert inc.numpy().tolist() == (100.0 * (peer > 0)).tolist()


# ---------------------------------------------------------------- insertion / deletion

def test_curves_by_hand_uneven_steps_and_more_steps_than_pixels():
    model = lambda t: t.flatten(1).sum(1)  # noqa: E731  (one raw score: the pixel sum)
    # n_steps 3 on 4 pixels: round(4k/3) = 0, 1, 3, 4 pixels -> insertion from 0: 0, 4, 9, 10
    # trapezoid on x = 0, 1/3, 2/3, 1: (0 + 2 * (4 + 9) + 10) / 6 = 6
    auc, curve = insertion_auc(model, X4, X4, baselines=0, n_steps=3, score="raw", return_curve=True)
    assert curve.tolist() == [[0, 4, 9, 10]] and auc.item() == pytest.approx(6.0)
    # deletion: 10, 6, 1, 0 -> (10 + 2 * 7 + 0) / 6 = 4
    auc, curve = deletion_auc(model, X4, X4, n_steps=3, score="raw", return_curve=True)
    assert curve.tolist() == [[10, 6, 1, 0]] and auc.item() == pytest.approx(4.0)
    # n_steps 8 > 4 pixels: round(k / 2) (half to even, as Python's round) = 0 0 1 2 2 2 3 4 4
    # -> 0 0 4 7 7 7 9 10 10; (54 - 5) / 8
    auc, curve = insertion_auc(model, X4, X4, baselines=0, n_steps=8, score="raw", return_curve=True)
    assert curve.tolist() == [[0, 0, 4, 7, 7, 7, 9, 10, 10]] and auc.item() == pytest.approx(49 / 8)


def test_curves_softmax_by_hand():
    # SumLogit class 0: sigmoid(pixel sum); insertion from 0 with 2 steps: sums 0, 7, 10
    auc, curve = insertion_auc(SumLogit(), X4.double(), X4, target=0, baselines=0, n_steps=2, return_curve=True)
    assert curve[0].tolist() == pytest.approx([0.5, sig(7), sig(10)])
    assert auc.item() == pytest.approx((0.5 + 2 * sig(7) + sig(10)) / 4)


def _direct_curve(model, x, heat, start, end, target, n_steps):
    """RISE's loop for one example: change the top-ranked pixels (stable order) step by step."""
    h, w = heat.shape
    order = torch.sort(heat.flatten(), descending=True, stable=True).indices
    scores = []
    for k in range(n_steps + 1):
        changed = torch.zeros(h * w, dtype=torch.bool)
        changed[order[:round(k * h * w / n_steps)]] = True
        img = torch.where(changed.view(1, h, w), end, start)
        with torch.no_grad():
            scores.append(model(img[None]).softmax(1)[0, target].item())
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("sign", ["positive", "absolute", "all"])
def test_curves_equal_a_direct_loop_for_every_option(sign):
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 6, 3)).double().eval()
    x = torch.rand(2, 2, 4, 6, generator=gen, dtype=torch.float64)
    base = torch.rand(2, 2, 4, 6, generator=gen, dtype=torch.float64)
    layer = torch.randn(2, 1, 2, 3, generator=gen, dtype=torch.float64)
    # the sign is applied at layer resolution, then the map upsampled (Captum: ReLU, then interpolate)
    signed = {"positive": layer.clamp(min=0), "absolute": layer.abs(), "all": layer}[sign]
    heat = F.interpolate(signed, size=(4, 6), mode="bilinear", align_corners=False)[:, 0]
    target = [2, 0]
    for insert, metric in ((True, insertion_auc), (False, deletion_auc)):
        results = [metric(model, x, layer, target=target, baselines=base, n_steps=n, sign=sign,
                          batch_size=b, return_curve=True) for n, b in ((5, 1), (5, 4), (5, 64), (30, 7))]
        for n_steps, (auc, curve) in zip((5, 5, 5, 30), results):
            for i in range(2):
                start, end = (base[i], x[i]) if insert else (x[i], base[i])
                direct = _direct_curve(model, x[i], heat[i], start, end, target[i], n_steps)
                assert curve[i].tolist() == pytest.approx(direct.tolist(), abs=1e-12)
                assert auc[i].item() == pytest.approx(np.trapezoid(direct.numpy(), dx=1 / n_steps), abs=1e-12)


def test_insertion_blur_start_is_the_documented_gaussian():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 4, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    # kernel 11 shrinks to 7 on a 4-pixel side (radius 3: truncate 3/5); torch's reflect is scipy's mirror
    blurred = ndimage.gaussian_filter(x[0, 0].numpy(), sigma=5.0, mode="mirror", truncate=0.6)
    every_pixel = lambda t: t.flatten(1)  # noqa: E731
    for pixel in (0, 9, 23):
        _, curve = insertion_auc(every_pixel, x, torch.zeros(1, 4, 6), target=pixel, n_steps=1, score="raw",
                                 return_curve=True)
        assert curve[0, 0].item() == pytest.approx(float(blurred.flat[pixel]), abs=1e-12)
    # RISE itself pads with zeros (conv2d(padding=5)); the docs must say ours differs
    doc = " ".join((DOCS / "metrics.md").read_text().split())
    assert "RISE pads with zeros" in doc


def test_metric_costs_as_documented():
    counted = ForwardCounter(SumLogit())
    x = torch.rand(3, 1, 2, 2)
    insertion_auc(counted, x, x, target=0, n_steps=4, batch_size=5)
    assert (counted.n_examples, counted.n_calls) == (3 * 5, 3)   # 15 inputs in chunks of 5
    counted.reset()
    drop_and_increase(counted, x, x, target=0, batch_size=4)
    assert (counted.n_examples, counted.n_calls) == (6, 2)


# ---------------------------------------------------------------- Neural Cleanse anomaly index

def test_mad_index_equals_neural_cleanse_formula():
    gen = torch.Generator().manual_seed(4)
    for count in (5, 6):                                  # odd and even counts (median of the middle two)
        v = torch.randn(count, generator=gen, dtype=torch.float64)
        x = v.numpy()
        med = np.median(x)
        expected = np.abs(x - med) / (1.4826 * np.median(np.abs(x - med)))
        assert mad_anomaly_index(v).numpy() == pytest.approx(expected, rel=1e-12)
    # Neural Cleanse flags the low side above 2: l1 norms 30 28 3 31 29: median 29, MAD 1 -> 3 is 17.5
    norms = torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0])
    assert mad_anomaly_index(norms)[2].item() == pytest.approx(26 / 1.4826)
    assert flag_anomalies(norms, direction="low").tolist() == [False, False, True, False, False]
    assert not bool(flag_anomalies(norms, direction="high").any())


def test_mad_leave_one_out_by_hand():
    # 1 against (3, 3.1, 3.2, 3.9): median 3.15, |dev| .15 .05 .05 .75 -> MAD .1 -> 2.15 / .14826
    v = torch.tensor([1.0, 3.0, 3.1, 3.2, 3.9], dtype=torch.float64)
    assert mad_anomaly_index(v, leave_one_out=True)[0].item() == pytest.approx(2.15 / 0.14826)
    # with min_scale .5 the scale is .5 -> 4.3
    assert mad_anomaly_index(v, leave_one_out=True, min_scale=0.5)[0].item() == pytest.approx(4.3)


def test_mad_leave_one_out_does_not_hide_a_value_apart_from_identical_peers():
    """Defect: a value measured against peers that are all equal got index 0 (the
    'all values equal' guard), so the one clear outlier was the least anomalous."""
    v = torch.tensor([30.0, 30.0, 30.0, 30.0, 3.0])
    index = mad_anomaly_index(v, leave_one_out=True)
    # 3 against (30, 30, 30, 30): no spread at all, 27 away -> infinitely anomalous
    assert math.isinf(index[4].item()) and index[4].item() > 0
    # each 30 against (30, 30, 30, 3): median 30, MAD 0 -> mean |dev| 27/4 * sqrt(pi/2); deviation 0 -> 0
    assert index[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    # 100 against (5, 5): inf; 5 against (5, 100): median 52.5, MAD 47.5 -> 47.5 / (1.4826 * 47.5)
    index = mad_anomaly_index(torch.tensor([5.0, 5.0, 100.0]), leave_one_out=True)
    assert math.isinf(index[2].item())
    assert index[:2].tolist() == pytest.approx([1 / 1.4826] * 2)
    # the scale floor still gives a finite index: 27 / 1; all values equal -> 0 everywhere
    assert mad_anomaly_index(v, leave_one_out=True, min_scale=1.0)[4].item() == pytest.approx(27.0)
    assert mad_anomaly_index(torch.ones(4), leave_one_out=True).tolist() == [0.0] * 4
    assert mad_anomaly_index(torch.ones(4)).tolist() == [0.0] * 4


# ---------------------------------------------------------------- trigger metrics

def test_trigger_metrics_by_hand():
    trigger = torch.zeros(4, 4, dtype=torch.bool)
    trigger[:2, :2] = True
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 1.0
    maps[0, 3, 3] = 4.0            # energy: 4 inside of 8; top 4 pixels: 4 (outside) then 3 of the four 1s
    maps[1, :2, 1:3] = 1.0         # top 4: two inside two outside
    # EBPG with the trigger: normalised (/4): 1 of 2 -> .5; second: 2 of 4 -> .5
    assert trigger_energy_share(maps, trigger).tolist() == pytest.approx([0.5, 0.5])
    # IoU = p / (2 - p): p = 3/4 (ties in raster order: (0,0), (0,1), (1,0)) -> .6; p = 1/2 -> 1/3
    assert trigger_iou(maps, trigger).tolist() == pytest.approx([0.6, 1 / 3])
    # channels: trigger_iou sums magnitudes per channel; the EBPG share sums first, then takes the sign
    rgb = torch.zeros(1, 2, 4, 4)
    rgb[0, 0, :2, :2], rgb[0, 1, :2, :2], rgb[0, 0, 3, 3] = 1.0, -1.0, 0.5
    assert trigger_iou(rgb, trigger).item() == pytest.approx(1.0)           # |1| + |-1| = 2 on the trigger
    assert trigger_energy_share(rgb, trigger).item() == 0.0                  # 1 - 1 = 0 on the trigger


# ---------------------------------------------------------------- robustness measures

def test_robustness_measures_by_hand():
    h = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    region = torch.tensor([[True, False], [False, False]])
    # (0 + 0 + 0 + .25) / 4
    assert location_loss(h, region).item() == pytest.approx(0.0625)
    # mass on region: 1 / 1.5
    assert top_k_mass(h, region).item() == pytest.approx(2 / 3)
    # centre: rows (.25 * 1 + .75 * .5) / 1.5, cols the same
    assert center_of_mass(h)[0].tolist() == pytest.approx([0.625 / 1.5, 0.625 / 1.5])
    a = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    # (.25, .75) vs (.75, .25): sqrt(.5)
    assert center_of_mass_shift(a, b).item() == pytest.approx(math.sqrt(0.5))
    # top 25 % of 4 x 4 = 4 pixels; arange vs reversed: no overlap; vs itself: all
    before = torch.arange(16.0).view(1, 4, 4)
    assert top_k_overlap(before, before, 0.25).item() == 1.0
    assert top_k_overlap(15 - before, before, 0.25).item() == 0.0
    assert top_k_region(before, 0.25)[0].flatten().nonzero().flatten().tolist() == [12, 13, 14, 15]


def test_rank_correlation_equals_scipy_spearman():
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(0, 4, (3, 4, 4), generator=gen).float()   # many ties: average ranks
    b = torch.randint(0, 4, (3, 4, 4), generator=gen).float()
    expected = [stats.spearmanr(a[i].flatten(), b[i].flatten())[0] for i in range(3)]
    assert rank_correlation(a, b).tolist() == pytest.approx(expected, abs=1e-6)


def test_active_fooling_statistic_by_hand_and_at_the_documented_boundary():
    """Defect: two original maps correlating exactly 0.8 were declared too alike
    (NaN) although the rule is 'above 0.8' (float32 1 - rho against 1 - 0.8)."""
    h1 = torch.tensor([[[1.0, 2.0, 3.0, 4.0, 5.0]]])
    h2 = torch.tensor([[[2.0, 1.0, 3.0, 5.0, 4.0]]])   # rank differences 1 1 0 1 1: rho = 1 - 6*4/120 = 0.8
    assert rank_correlation(h1, h2).item() == pytest.approx(0.8)
    # a perfect swap (the new c1 map is h2): (1 - .8) / (1 - .8) = 1; unchanged: (.8 - 1) / .2 = -1
    assert fooling_statistic("active", h2, h1, other_reference=h2).item() == pytest.approx(1.0)
    assert fooling_statistic("active", h1, h1, other_reference=h2).item() == pytest.approx(-1.0)
    assert fooling_success("active", fooling_statistic("active", h2, h1, other_reference=h2)).tolist() == [True]
    # above 0.8 (differences 1 1 0 0 0: rho = 0.9): NaN, not fooled
    h3 = torch.tensor([[[2.0, 1.0, 3.0, 4.0, 5.0]]])
    stat = fooling_statistic("active", h3, h1, other_reference=h3)
    assert math.isnan(stat.item()) and fooling_success("active", stat).tolist() == [False]
    # reversed maps (rho -1): a swap is (1 - (-1)) / 2 = 1
    rev = torch.tensor([[[5.0, 4.0, 3.0, 2.0, 1.0]]])
    assert fooling_statistic("active", rev, h1, other_reference=rev).item() == pytest.approx(1.0)
