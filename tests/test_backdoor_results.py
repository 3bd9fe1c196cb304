"""A defender's reading of the backdoor results: every documented field of ``BackdoorScan`` against a
hand computation, the anomaly index and its threshold, the trigger metrics on tiny masks, awkward
models and inputs, and the figure of both scans.

What other files already pin is not repeated here: the cost schedule (test_scan_schedule), option
effects and step counts (test_option_effects), channels-last / strided / float64 / requires-grad
inputs and in-place models (test_unusual_inputs), tuple and dict outputs (test_model_families),
argument errors (test_backdoor, test_metrics).
"""
import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from captum_global.backdoor import BackdoorScan, NeuralCleanse, neural_cleanse, scan_figure, scan_for_backdoor
from captum_global.errors import InvalidArgumentError
from captum_global.metrics import flag_anomalies, mad_anomaly_index, trigger_energy_share, trigger_iou
from test_backdoor import SIZE, PlantedBackdoor, coloured_images, trigger_region

CLASSES = [4, -1, 1, 0]          # a subset of the six outputs, out of order, with a negative index
RESOLVED = [4, 5, 1, 0]
SEED = 0
HELD_OUT = 0.25
SCAN_OPTIONS = dict(n_steps=12, cells=8, batch_size=6, check_every=2, patience=2)
NC_OPTIONS = dict(n_epochs=8, batch_size=6, patience=2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


class Six(nn.Module):
    """The planted 4-class model of test_backdoor plus two outputs the scans are not all asked about:
    class 4 ("bright", the mean above 0.62) is reachable by a large stamp, class 5 never (-30)."""

    def __init__(self):
        super().__init__()
        self.net = PlantedBackdoor()

    def forward(self, x):
        out = self.net(x)
        bright = 12 * (x.mean(dim=(1, 2, 3)) - 0.62)
        return torch.cat([out, bright.unsqueeze(1), torch.full_like(bright, -30.0).unsqueeze(1)], dim=1)


def _clean():
    return coloured_images(12)


def _scan(**kwargs):
    x = _clean()
    options = dict(dict(classes=CLASSES, clean_inputs=x, trigger_mask=trigger_region(), held_out=HELD_OUT,
                        seed=SEED, **SCAN_OPTIONS), **kwargs)
    return scan_for_backdoor(Six(), x[:1], **options)


def _cleanse(**kwargs):
    options = dict(dict(classes=CLASSES, trigger_mask=trigger_region(), seed=SEED, **NC_OPTIONS), **kwargs)
    return neural_cleanse(Six(), _clean(), **options)


@pytest.fixture(scope="module")
def scans():
    torch.set_num_threads(1)
    return {"scan": _scan(), "nc": _cleanse()}


BOTH = ["scan", "nc"]


def _judging_inputs(name):
    """The inputs that judge the attack success: for the scan with ``held_out``, its seeded split
    (the first draw of ``torch.Generator().manual_seed(seed)``: a permutation, the first
    ``round(held_out * n)`` rows held out); for Neural Cleanse all clean inputs."""
    x = _clean()
    if name == "nc":
        return x
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SEED))
    return x[order[:round(HELD_OUT * x.shape[0])]]


# ---------------------------------------------------------------- the result, field by field


@pytest.mark.parametrize("name", BOTH)
def test_every_documented_field_is_there_and_consistent(scans, name):
    s = scans[name]
    k, (c, h, w) = len(RESOLVED), (3, SIZE, SIZE)
    assert isinstance(s, BackdoorScan)
    assert s.method == {"scan": "input-agnostic scan", "nc": "neural cleanse"}[name]
    assert s.classes == RESOLVED and all(type(v) is int for v in s.classes)
    assert list(s.statistics) == ["mask_l1"] and s.statistics["mask_l1"].shape == (k,)
    assert s.anomaly_index.shape == (k,) and bool((s.anomaly_index >= 0).all())
    # flagged: the classes whose index exceeds the threshold, in the order of classes; suspect: the top index
    assert s.threshold == 2.0
    assert s.flagged == [cl for cl, i in zip(s.classes, s.anomaly_index.tolist()) if i > s.threshold]
    assert s.suspect == s.classes[int(np.argmax(s.anomaly_index.numpy()))]
    assert s.is_backdoored == bool(s.flagged)
    assert float(s.anomaly_index.max()) > 0  # not a vacuous suspect
    # the pictures: [K, H, W] masks in [0, 1], [K, C, H, W] patterns in the value range, [K, C, H, W] maps
    assert s.trigger_masks.shape == (k, h, w) and s.trigger_patterns.shape == (k, c, h, w)
    assert float(s.trigger_masks.min()) >= 0 and float(s.trigger_masks.max()) <= 1
    assert float(s.trigger_patterns.min()) >= 0 and float(s.trigger_patterns.max()) <= 1
    assert s.maps.shape == (k, c, h, w)
    if name == "nc":  # the reversed mask broadcast to the channels
        assert torch.equal(s.maps, s.trigger_masks.unsqueeze(1).expand(k, c, h, w))
    else:             # the stamp: pattern where the mask is on
        assert torch.equal(s.maps, s.trigger_masks.unsqueeze(1) * s.trigger_patterns)
    assert s.attack_success.shape == (k,)
    assert sorted(s.localisation) == ["energy_share", "iou"]
    assert all(v.shape == (k,) for v in s.localisation.values())
    assert isinstance(s.num_evaluations, int) and s.num_evaluations > 0
    assert isinstance(s.seconds, float) and s.seconds > 0
    assert isinstance(s.settings, dict) and s.settings["seed"] == SEED


@pytest.mark.parametrize("name", BOTH)
def test_attack_success_is_the_share_of_the_judging_inputs_the_returned_stamp_sends_to_the_class(scans, name):
    """Stamped by hand, ``(1 - m) x + m p``, and read as the arg max over all six outputs (two of which
    were not scanned); row k is class classes[k] in the order given."""
    s, x, model = scans[name], _judging_inputs(name), Six()
    expected = []
    with torch.no_grad():
        for k, c in enumerate(s.classes):
            m, p = s.trigger_masks[k], s.trigger_patterns[k]
            expected.append(float((model((1 - m) * x + m * p).argmax(1) == c).float().mean()))
    assert s.attack_success.tolist() == pytest.approx(expected, abs=1e-7)
    assert len(set(expected)) > 1  # some classes reached, some not: a row mix-up would show
    # the held-out share is what judges the scan: 3 of 12 inputs, so successes are multiples of 1/3
    denominator = x.shape[0]
    assert all(float(a) * denominator == pytest.approx(round(float(a) * denominator)) for a in s.attack_success)


def test_scan_attack_success_is_judged_on_the_held_out_inputs_only():
    """After 4 steps class 0's stamp flips 2 of the 3 held-out images but 3 of all 12: the held-out share
    is reported (the search inputs would give another number)."""
    s, held, everything, model = _scan(n_steps=4), _judging_inputs("scan"), _clean(), Six()
    on_held, on_all = [], []
    with torch.no_grad():
        for k, c in enumerate(s.classes):
            m, p = s.trigger_masks[k], s.trigger_patterns[k]
            on_held.append(float((model((1 - m) * held + m * p).argmax(1) == c).float().mean()))
            on_all.append(float((model((1 - m) * everything + m * p).argmax(1) == c).float().mean()))
    assert s.attack_success.tolist() == pytest.approx(on_held, abs=1e-7)
    assert on_held != pytest.approx(on_all)


def _by_hand_localisation(masks, region):
    masks, region = masks.double().numpy(), region.numpy()
    energy, iou = [], []
    k = int(region.sum())
    inside = set(np.flatnonzero(region.ravel()).tolist())
    for m in masks:
        energy.append(float((m * region).sum() / m.sum()))   # share of the mask's mass on the region
        top = set(np.argsort(-m.ravel(), kind="stable")[:k].tolist())  # k strongest, ties in raster order
        both = len(top & inside)
        iou.append(both / (2 * k - both))                     # |top & R| / |top | R|
    return energy, iou


@pytest.mark.parametrize("name", BOTH)
def test_localisation_is_recomputed_by_hand_from_the_masks_and_the_planted_region(scans, name):
    s = scans[name]
    energy, iou = _by_hand_localisation(s.trigger_masks, trigger_region())
    assert s.localisation["energy_share"].tolist() == pytest.approx(energy, rel=1e-5)
    assert s.localisation["iou"].tolist() == pytest.approx(iou, abs=1e-7)
    # a region that is exactly one class's strongest pixels: IoU 1 for that class
    strongest = torch.zeros(SIZE * SIZE, dtype=torch.bool)
    strongest[torch.sort(s.trigger_masks[2].flatten(), descending=True, stable=True).indices[:9]] = True
    again = _scan(trigger_mask=strongest.view(SIZE, SIZE)) if name == "scan" else \
        _cleanse(trigger_mask=strongest.view(SIZE, SIZE))
    assert float(again.localisation["iou"][2]) == 1.0
    assert torch.equal(again.trigger_masks, s.trigger_masks)  # the region is only read, never used
    # without a region nothing is reported
    assert (_scan(trigger_mask=None) if name == "scan" else _cleanse(trigger_mask=None)).localisation == {}


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize("name", BOTH)
def test_as_dict_is_strict_json_and_round_trips_the_numbers(scans, name):
    s = scans[name]
    d = s.as_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert all(v is None or type(v) in (str, int, float, bool) for v in _leaves(d))
    assert not {"maps", "trigger_masks", "trigger_patterns"} & set(d)  # documented: left out
    assert (d["method"], d["classes"], d["flagged"], d["suspect"]) == (s.method, s.classes, s.flagged, s.suspect)
    assert d["threshold"] == s.threshold and d["num_evaluations"] == s.num_evaluations
    assert d["statistics"]["mask_l1"] == pytest.approx(s.statistics["mask_l1"].tolist(), abs=1e-6)
    assert d["anomaly_index"] == pytest.approx(s.anomaly_index.tolist(), abs=1e-4)
    assert d["attack_success"] == pytest.approx(s.attack_success.tolist(), abs=1e-4)
    for key, values in s.localisation.items():
        assert d["localisation"][key] == pytest.approx(values.tolist(), abs=1e-4)
    assert d["seconds"] == pytest.approx(s.seconds, abs=1e-3)
    assert d["settings"] == s.settings


def test_editing_the_as_dict_summary_leaves_the_result_alone(scans):
    """Defect: as_dict() handed out the result's own settings dict (and its lists): a defender adding a
    field to the summary before saving it changed scan.settings, and every later summary."""
    for s in scans.values():
        kept = copy.deepcopy(s.settings)
        d = s.as_dict()
        d["settings"]["seed"] = 99
        d["settings"]["model"] = "mine"
        d["settings"]["value_range"].append(2.0)
        d["classes"].append(7)
        d["flagged"].append(7)
        d["statistics"]["mask_l1"][0] = -1.0
        assert s.settings == kept and s.classes == RESOLVED and 7 not in s.flagged
        assert s.as_dict()["settings"] == kept


def test_result_tensors_are_detached_on_the_input_device_and_the_inputs_untouched():
    x = _clean()
    leaf = x.clone().requires_grad_(True)
    leaf.grad = torch.full_like(x, 2.0)
    example = x[:1].clone().requires_grad_(True)
    results = [scan_for_backdoor(Six(), example, classes=CLASSES, clean_inputs=leaf, trigger_mask=trigger_region(),
                                 seed=SEED, n_steps=4, cells=8, batch_size=6, check_every=2),
               neural_cleanse(Six(), leaf, classes=CLASSES, trigger_mask=trigger_region(), n_epochs=2, batch_size=6)]
    for s in results:
        tensors = [s.anomaly_index, s.maps, s.trigger_masks, s.trigger_patterns, s.attack_success,
                   *s.statistics.values(), *s.localisation.values()]
        assert len(tensors) == 8
        for t in tensors:
            assert not t.requires_grad and t.grad_fn is None and t.device == x.device
    assert torch.equal(leaf.detach(), x) and torch.equal(leaf.grad, torch.full_like(x, 2.0))
    assert torch.equal(example.detach(), x[:1]) and example.grad is None


def test_a_subset_of_classes_gives_rows_in_the_order_given(scans):
    """Neural Cleanse's row k is label classes[k] reversed with seed + k: exactly ``attribute``'s result."""
    s = scans["nc"]
    for k, c in enumerate(RESOLVED):
        mask, pattern, l1, success = NeuralCleanse(Six()).attribute(_clean(), target=c, seed=SEED + k, **NC_OPTIONS)
        assert torch.equal(mask, s.trigger_masks[k]) and torch.equal(pattern, s.trigger_patterns[k])
        assert success == float(s.attack_success[k])
        assert float(s.statistics["mask_l1"][k]) == pytest.approx(min(l1, SIZE * SIZE), rel=1e-6)
    # the never reachable class 5 (row 1) gets the image area, the reachable ones less
    assert float(s.statistics["mask_l1"][1]) == SIZE * SIZE
    assert bool((s.statistics["mask_l1"][[0, 2, 3]] < SIZE * SIZE).all())
    assert float(scans["scan"].statistics["mask_l1"][1]) == SIZE * SIZE


# ---------------------------------------------------------------- the anomaly index and its threshold


def _low_side_mad(values, floor=0.0):
    v = np.asarray(values, dtype=np.float64)
    median = np.median(v)
    mad = np.median(np.abs(v - median))
    assert mad > 0  # the documented formula, not the MAD = 0 fallback
    scale = max(1.4826 * mad, floor)
    return np.where(v < median, np.abs(v - median) / scale, 0.0)


def test_neural_cleanse_index_is_the_low_side_mad_index_of_mask_l1(scans):
    s = scans["nc"]
    expected = _low_side_mad(s.statistics["mask_l1"].tolist())
    assert s.anomaly_index.tolist() == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-7)
    assert (expected == 0).sum() == 2  # two classes on the high side get 0


@pytest.mark.parametrize("floor", [0.1, 1.0])
def test_scan_index_is_the_low_side_mad_index_of_the_log_mask_l1_with_the_noise_floor(scans, floor):
    s = scans["scan"] if floor == 0.1 else _scan(noise_floor=floor)
    assert torch.equal(s.statistics["mask_l1"], scans["scan"].statistics["mask_l1"])
    expected = _low_side_mad(np.log(s.statistics["mask_l1"].double().numpy()), floor)
    assert s.anomaly_index.tolist() == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-7)
    if floor == 1.0:  # the floor is above 1.4826 MAD here: it sets the scale
        assert float(s.anomaly_index.max()) < float(scans["scan"].anomaly_index.max())


@pytest.mark.parametrize("name", BOTH)
def test_threshold_is_strict_at_the_exact_boundary(scans, name):
    """Documented: flagged when the index *exceeds* the threshold."""
    s = scans[name]
    top = float(s.anomaly_index.max())
    run = _scan if name == "scan" else _cleanse
    at = run(threshold=top)
    assert torch.equal(at.anomaly_index, s.anomaly_index) and at.flagged == [] and at.threshold == top
    below = run(threshold=float(np.nextafter(top, 0.0)))
    assert below.flagged == [s.suspect]
    # the metric itself: exactly at the index, no flag; just below, a flag
    v = torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0], dtype=torch.float64)
    index = float(mad_anomaly_index(v)[2])
    assert flag_anomalies(v, threshold=index, direction="low").tolist() == [False] * 5
    assert flag_anomalies(v, threshold=float(np.nextafter(index, 0.0)), direction="low").tolist()[2] is True


def test_neural_cleanse_class_and_function_agree_at_the_same_seed(scans):
    a = scans["nc"]
    b = NeuralCleanse(Six()).scan(_clean(), classes=CLASSES, trigger_mask=trigger_region(), seed=SEED, **NC_OPTIONS)
    for f in dataclasses.fields(BackdoorScan):
        if f.name == "seconds":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), torch.Tensor):
            assert x.keys() == y.keys() and all(torch.equal(x[key], y[key]) for key in x), f.name
        else:
            assert x == y, f.name
    assert a.summary().splitlines()[1:] == b.summary().splitlines()[1:]


def test_untestable_classes_of_the_noise_scan_get_index_0_and_are_no_reference():
    """Without clean inputs, a class the model gives most noise images to is listed in
    settings["untestable"], gets index 0, and the index of the others is computed among them only."""

    class LovesNoise(Six):
        def forward(self, x):
            out = super().forward(x)
            out[:, 5] = 20 * (0.15 - (x.mean(dim=(1, 2, 3)) - 0.5).abs())   # mid-grey noise is class 5
            return out

    s = scan_for_backdoor(LovesNoise(), _clean()[:1], num_noise_samples=8, seed=SEED, **SCAN_OPTIONS)
    assert s.settings["untestable"] == [5] and s.settings["inputs"] == "smooth noise"
    assert float(s.anomaly_index[5]) == 0.0 and 5 not in s.flagged
    testable = s.statistics["mask_l1"][:5].double().numpy()
    assert s.anomaly_index[:5].tolist() == pytest.approx(_low_side_mad(np.log(testable), 0.1).tolist(), rel=1e-5,
                                                         abs=1e-7)


# ---------------------------------------------------------------- the trigger metrics on tiny masks


def _region(rows, cols):
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[rows, cols] = True
    return region


INNER = _region(slice(1, 3), slice(2, 4))    # 2 x 2, not at the start of the raster order


def test_trigger_metrics_of_an_empty_a_full_and_an_exact_mask():
    empty, full = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    exact = INNER.float().unsqueeze(0) * 0.3
    for normalize in (True, False):
        for sign in ("positive", "absolute"):
            # no energy scores 0 (not NaN); a mask equal to the region has all its energy there
            assert trigger_energy_share(empty, INNER, sign=sign, normalize=normalize).tolist() == [0.0]
            assert trigger_energy_share(exact, INNER, sign=sign, normalize=normalize).tolist() == [1.0]
    # a full mask: the region's share of the pixels, 4 / 16; min-max normalised it is constant, no energy
    assert trigger_energy_share(full, INNER, normalize=False).tolist() == [0.25]
    assert trigger_energy_share(full, INNER, normalize=True).tolist() == [0.0]
    assert trigger_iou(exact, INNER).tolist() == [1.0]
    # empty and full masks carry no signal: documented, the first k pixels in raster order are taken
    # (row 0 here, none in INNER: 0; all of a region in row 0: 1)
    top_row = _region(0, slice(0, 4))
    for mask in (empty, full):
        assert trigger_iou(mask, INNER).tolist() == [0.0]
        assert trigger_iou(mask, top_row).tolist() == [1.0]


def test_trigger_metrics_of_a_partial_soft_mask_by_hand():
    mask = torch.zeros(1, 4, 4)
    mask[0, 1, 2] = mask[0, 1, 3] = 0.5   # in the region
    mask[0, 2, 2] = 0.25                  # in the region
    mask[0, 0, 0] = 1.0                   # outside
    # mass: 1.25 of 2.25 inside; min-max (min 0, max 1) changes nothing
    for normalize in (True, False):
        assert trigger_energy_share(mask, INNER, sign="absolute", normalize=normalize).item() == pytest.approx(5 / 9)
    # top 4: (0,0) 1, (1,2) .5, (1,3) .5, (2,2) .25 -> 3 in the region: 3 / (4 + 4 - 3)
    assert trigger_iou(mask, INNER).item() == pytest.approx(0.6)
    # a per-example region [N, H, W] gives each map its own
    both = torch.cat([mask, mask])
    regions = torch.stack([INNER, _region(0, 0)])
    assert trigger_iou(both, regions).tolist() == pytest.approx([0.6, 1.0])


def test_trigger_metrics_reduce_channels_as_documented():
    """trigger_iou ranks sum_c |a_c|; trigger_energy_share the channel *sum*'s positive part or magnitude."""
    attr = torch.zeros(1, 2, 4, 4)
    attr[0, 0, 1, 2], attr[0, 1, 1, 2] = 1.0, -1.0    # in: cancels in the sum, 2 in sum |a_c|
    attr[0, 0, 0, 0] = 1.5                             # out
    attr[0, 0, 3, 3], attr[0, 1, 3, 3] = 0.6, -0.6     # out: cancels, 1.2 in sum |a_c|
    attr[0, 1, 2, 3] = 0.3                             # in
    attr[0, 1, 2, 2] = -0.9                            # in: a negative sum
    # sum |a_c|: 2 (in), 1.5, 1.2, .9 (in), .3 (in) -> top 4 holds 2 of the region: 2 / 6
    assert trigger_iou(attr, INNER).item() == pytest.approx(1 / 3)
    # channel sums: 1.5 out, .3 in, -.9 in. positive part: .3 of 1.8; magnitude: 1.2 of 2.7
    for normalize in (True, False):
        assert trigger_energy_share(attr, INNER, normalize=normalize).item() == pytest.approx(1 / 6)
        assert trigger_energy_share(attr, INNER, sign="absolute", normalize=normalize).item() == pytest.approx(4 / 9)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_trigger_metrics_refuse_non_finite_values_naming_the_argument(bad):
    maps = torch.rand(2, 4, 4)
    maps[1, 0, 0] = bad
    for metric in (trigger_iou, trigger_energy_share):
        with pytest.raises(InvalidArgumentError, match="^attributions must be finite"):
            metric(maps, INNER)
        with pytest.raises(InvalidArgumentError, match="^attributions must be finite"):
            metric(maps.view(2, 1, 4, 4).expand(2, 3, 4, 4), INNER)
    region = INNER.float()
    region[0, 0] = bad
    for metric in (trigger_iou, trigger_energy_share):
        with pytest.raises(InvalidArgumentError, match="^trigger_mask must be bool or hold only 0 and 1"):
            metric(torch.rand(2, 4, 4), region)
    values = torch.tensor([1.0, 2.0, 3.0, bad])
    for metric in (mad_anomaly_index, flag_anomalies):
        with pytest.raises(InvalidArgumentError, match="^values must be finite"):
            metric(values)


def test_trigger_metrics_refuse_mismatched_shapes_naming_the_argument():
    maps = torch.rand(2, 4, 4)
    for metric in (trigger_iou, trigger_energy_share):
        with pytest.raises(InvalidArgumentError, match="^trigger_mask must have shape"):
            metric(maps, torch.ones(3, 4, 4, dtype=torch.bool))   # 3 regions for 2 maps
        with pytest.raises(InvalidArgumentError, match="^trigger_mask must have shape"):
            metric(maps, torch.ones(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match=r"^trigger_mask must have shape \(4, 4\)"):
        trigger_iou(maps, torch.ones(5, 5, dtype=torch.bool))     # trigger_iou reads maps at their own resolution
    with pytest.raises(InvalidArgumentError, match="^attributions must have shape"):
        trigger_iou(torch.rand(4, 4), INNER)


# ---------------------------------------------------------------- awkward inputs and models


def test_float64_clean_inputs_take_the_example_s_dtype():
    """example_input gives the dtype: float64 clean images for a float32 model and example run as float32."""
    x = _clean()
    options = dict(classes=CLASSES, seed=SEED, n_steps=4, cells=8, batch_size=6, check_every=2)
    plain = scan_for_backdoor(Six(), x[:1], clean_inputs=x, **options)
    double = x.double()
    kept = double.clone()
    got = scan_for_backdoor(Six(), x[:1], clean_inputs=double, **options)
    assert got.trigger_masks.dtype == torch.float32 and torch.equal(double, kept)
    assert torch.equal(got.trigger_masks, plain.trigger_masks)
    assert torch.equal(got.trigger_patterns, plain.trigger_patterns)
    assert torch.equal(got.statistics["mask_l1"], plain.statistics["mask_l1"])


class BatchOfOne(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = Six()

    def forward(self, x):
        if x.shape[0] != 1:
            raise RuntimeError(f"this model takes one image at a time, got {x.shape[0]}")
        return self.net(x)


def test_a_model_that_takes_one_image_at_a_time():
    """Neural Cleanse with batch_size=1 runs it (one image per pass) and equals the plain model; the
    scan batches the classes together, so the model's own error comes through, the model as found."""
    x = _clean()[:4]
    model = BatchOfOne().train()
    got = neural_cleanse(model, x, classes=CLASSES, n_epochs=2, batch_size=1, seed=SEED)
    expected = neural_cleanse(Six(), x, classes=CLASSES, n_epochs=2, batch_size=1, seed=SEED)
    assert torch.equal(got.trigger_masks, expected.trigger_masks)
    assert torch.equal(got.attack_success, expected.attack_success)
    assert model.training and model.net.training
    with pytest.raises(RuntimeError, match="one image at a time"):
        scan_for_backdoor(model, x[:1], clean_inputs=x, n_steps=2, batch_size=1, cells=8)
    assert model.training and model.net.training and model.net.net.scale.requires_grad


def _normalised_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    with torch.no_grad():  # non-trivial running statistics
        for i in range(3):
            net(torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(10 + i)))
    return net


def test_a_model_in_train_mode_with_batchnorm_and_dropout_is_scanned_in_eval_mode_and_left_as_found():
    x = torch.rand(10, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    runs = {
        "scan": lambda m: scan_for_backdoor(m, x[:1], clean_inputs=x, seed=SEED, n_steps=4, cells=4, batch_size=5,
                                            check_every=2),
        "nc": lambda m: neural_cleanse(m, x, seed=SEED, n_epochs=2, batch_size=5),
    }
    for name, run in runs.items():
        model = _normalised_net().train()
        before = copy.deepcopy(model.state_dict())
        rng = torch.get_rng_state()
        got = run(model)
        assert all(m.training for m in model.modules()), name
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name  # running stats too
        assert torch.equal(torch.get_rng_state(), rng), name  # no dropout draw from the global generator
        expected = run(_normalised_net().eval())
        for field in ("trigger_masks", "trigger_patterns", "attack_success", "anomaly_index"):
            assert torch.equal(getattr(got, field), getattr(expected, field)), (name, field)
        assert torch.equal(got.statistics["mask_l1"], expected.statistics["mask_l1"]), name


# ---------------------------------------------------------------- the figure of both scans


def test_scan_figure_of_both_scans_draws_each_class_s_stamp_and_its_numbers(scans):
    pytest.importorskip("matplotlib")
    scan = scans["scan"]
    nc = _cleanse(classes=[5, 1, 0], threshold=0.5)   # fewer classes; a low threshold flags one
    assert nc.flagged
    names = [f"class {c}" for c in range(6)]
    fig = scan_figure({"ours": scan, "Neural Cleanse": nc}, class_names=names, planted=trigger_region(),
                      title="both")
    assert len(fig.axes) == 2 * 4 and [t.get_text() for t in fig.texts] == ["both"]
    for row, (label, s) in enumerate((("ours", scan), ("Neural Cleanse", nc))):
        patterns = s.trigger_patterns.double()
        low, high = float(patterns.min()), float(patterns.max())
        for j in range(4):
            ax = fig.axes[row * 4 + j]
            if j >= len(s.classes):   # the shorter row leaves its last panel empty
                assert not ax.images and ax.get_title() == ""
                continue
            c = s.classes[j]
            title = (f"{label}: " if j == 0 else "") + f"{names[c]}\nl1 {float(s.statistics['mask_l1'][j]):.0f}, " \
                f"index {float(s.anomaly_index[j]):.1f}" + (" FLAGGED" if c in s.flagged else "")
            assert ax.get_title() == title
            assert ax.title.get_color() == ("red" if c in s.flagged else "black")
            m = s.trigger_masks[j].double()
            stamp = (1 - m) * (low + high) / 2 + m * patterns[j]
            image = ((stamp - low) / (high - low)).permute(1, 2, 0).numpy()
            np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), image, atol=1e-6)
            box = ax.patches[0]   # the planted 3 x 3 region at rows and columns 12-14
            assert (box.get_x(), box.get_y(), box.get_width(), box.get_height()) == (11.5, 11.5, 3.0, 3.0)
