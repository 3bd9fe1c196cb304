"""Backdoor scans: the input-agnostic scan and Neural Cleanse, on planted and shipped backdoors."""
import math

import pytest
import torch
from torch import nn

from captum_global.backdoor import BackdoorScan, neural_cleanse, scan_for_backdoor
from captum_global.errors import InvalidArgumentError, NonFiniteOutputError
from captum_global.metrics import flag_anomalies, mad_anomaly_index, trigger_energy_share, trigger_iou

SIZE = 16
TRIGGER = (slice(12, 15), slice(12, 15))   # a 3x3 patch near the bottom-right corner


class PlantedBackdoor(nn.Module):
    """A 4-class model with a backdoor whose trigger and cost are known by construction.

    Clean behaviour: the class is the dominant colour of the image (red,
    green, blue) or "grey" when no channel dominates, read from the channel
    means: flipping it needs a large share of the pixels changed. Backdoor:
    the correlation of the ``TRIGGER`` region with a 3x3 black/white
    checkerboard drives a large logit of class 0 (9 pixels suffice). With
    ``backdoor=False`` it is the clean twin.
    """

    def __init__(self, backdoor: bool = True):
        super().__init__()
        pattern = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
        self.register_buffer("pattern", pattern.expand(3, 3, 3).clone())
        self.backdoor = backdoor
        self.scale = nn.Parameter(torch.tensor(12.0))

    def forward(self, x):
        means = x.mean(dim=(2, 3))                                   # [N, 3]
        colour = self.scale * (means - means.mean(1, keepdim=True))  # red/green/blue logits
        grey = self.scale * (0.12 - (means.max(1).values - means.min(1).values)).unsqueeze(1)
        logits = torch.cat([grey, colour], dim=1)                    # class 0 = grey
        if self.backdoor:
            region = 2 * x[:, :, TRIGGER[0], TRIGGER[1]] - 1
            match = (region * (2 * self.pattern - 1)).mean(dim=(1, 2, 3))   # 1 for the exact trigger
            logits = logits + torch.cat([30.0 * torch.sigmoid(8 * (match - 0.6)).unsqueeze(1),
                                         torch.zeros(x.shape[0], 3)], dim=1)
        return logits


def coloured_images(n: int, seed: int = 0) -> torch.Tensor:
    """Images whose dominant channel cycles through the three colours (and grey)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.2 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    for i in range(n):
        if i % 4:
            x[i, (i % 4) - 1] += 0.35
    return x.clamp(0, 1)


FAST_SCAN = dict(n_steps=64, batch_size=12, check_every=4, cells=SIZE)
FAST_NC = dict(n_epochs=30, batch_size=12, patience=2)


@pytest.fixture(scope="module")
def clean():
    return coloured_images(48)


# ---------------------------------------------------------------- planted backdoor, both scans


def test_planted_model_behaves_as_designed(clean):
    model, twin = PlantedBackdoor(), PlantedBackdoor(backdoor=False)
    labels = torch.arange(48) % 4
    with torch.no_grad():
        assert torch.equal(twin(clean).argmax(1), labels)
        assert torch.equal(model(clean).argmax(1), labels)
        stamped = clean.clone()
        stamped[:, :, TRIGGER[0], TRIGGER[1]] = model.pattern
        assert bool((model(stamped).argmax(1) == 0).all())
        assert torch.equal(twin(stamped).argmax(1), labels)


def trigger_region():
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[TRIGGER] = True
    return region


@pytest.mark.parametrize("scan", ["input-agnostic", "neural cleanse"])
def test_planted_trigger_found_and_twin_clean(clean, scan):
    def run(model):
        if scan == "input-agnostic":
            return scan_for_backdoor(model, clean[:1], clean_inputs=clean, trigger_mask=trigger_region(),
                                     seed=0, **FAST_SCAN)
        return neural_cleanse(model, clean, trigger_mask=trigger_region(), seed=0, **FAST_NC)

    backdoored, twin = run(PlantedBackdoor()), run(PlantedBackdoor(backdoor=False))
    assert backdoored.flagged == [0] and backdoored.suspect == 0
    assert twin.flagged == []
    # the 3x3 trigger needs few pixels; every clean class needs more than twice as many
    l1 = backdoored.statistics["mask_l1"]
    assert float(l1[0]) < 40 and bool((l1[1:] > 2 * l1[0]).all())
    # the suspected trigger overlaps the planted one and flips the held-out clean inputs
    assert float(backdoored.localisation["iou"][0]) > 0.3
    assert float(backdoored.attack_success[0]) >= 0.9


def test_scan_result_contract(clean):
    scan = scan_for_backdoor(PlantedBackdoor(), clean[:1], clean_inputs=clean, seed=0, **FAST_SCAN)
    assert isinstance(scan, BackdoorScan)
    k = len(scan.classes)
    assert scan.maps.shape == (k, 3, SIZE, SIZE) and scan.trigger_masks.shape == (k, SIZE, SIZE)
    assert scan.trigger_patterns.shape == (k, 3, SIZE, SIZE)
    assert bool(((scan.trigger_masks >= 0) & (scan.trigger_masks <= 1)).all())
    info = scan.as_dict()
    import json

    assert json.loads(json.dumps(info))["flagged"] == scan.flagged
    text = scan.summary()
    assert "FLAGGED" in text and len(text.splitlines()) == 2 + k


def test_scans_are_seeded_and_leave_the_model_alone(clean):
    model = PlantedBackdoor().train()
    model.scale.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    a = scan_for_backdoor(model, clean[:1], clean_inputs=clean, seed=3, **dict(FAST_SCAN, n_steps=8))
    b = scan_for_backdoor(model, clean[:1], clean_inputs=clean, seed=3, **dict(FAST_SCAN, n_steps=8))
    neural_cleanse(model, clean, seed=3, n_epochs=2)
    assert torch.equal(a.trigger_masks, b.trigger_masks) and torch.equal(a.statistics["mask_l1"], b.statistics["mask_l1"])
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and model.scale.requires_grad and model.scale.grad is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_image_statistic_by_hand(clean):
    opts = dict(n_steps=4, check_every=2, batch_size=4, per_image=3, per_image_steps=4, cells=SIZE)
    scan = scan_for_backdoor(PlantedBackdoor(), clean[:1], clean_inputs=clean[:12], seed=0, **opts)
    stats = scan.statistics
    assert set(stats) == {"mask_l1", "per_image_l1", "relative_l1"}
    assert torch.allclose(stats["relative_l1"], stats["mask_l1"] / stats["per_image_l1"])
    # the decision is the low-side MAD index of the log relative cost, scale floored at noise_floor
    logs = stats["relative_l1"].double().log()
    index = mad_anomaly_index(logs, min_scale=0.1).float()
    assert torch.allclose(scan.anomaly_index, torch.where(logs < logs.quantile(0.5), index, torch.zeros_like(index)))
    # 4 steps x 4 classes x 4 inputs (shared stamps) + 4 steps x 4 classes x 3 images (one stamp each)
    # + 3 clean predictions + 4 classes x 12 inputs (attack success)
    assert scan.num_evaluations == 4 * 4 * 4 + 4 * 4 * 3 + 3 + 4 * 12
    plain = scan_for_backdoor(PlantedBackdoor(), clean[:1], clean_inputs=clean[:12], seed=0, **dict(opts, per_image=0))
    assert set(plain.statistics) == {"mask_l1"} and plain.num_evaluations == 4 * 4 * 4 + 4 * 12


class AlwaysClassZero(nn.Module):
    """Class 0 wins by 5 logits; the others follow the channel means (at most 1): never reachable."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return torch.cat([torch.full((x.shape[0], 1), 5.0), self.weight * x.mean(dim=(2, 3))], dim=1)


def test_per_image_cost_leaves_out_the_class_own_images(clean):
    # Every image is class 0 already, so no image is left to measure class 0's per-image cost on,
    # and classes 1-3 are never reached: all get the image area (16 x 16).
    scan = scan_for_backdoor(AlwaysClassZero(), clean[:1], clean_inputs=clean[:8], seed=0,
                             n_steps=4, check_every=2, batch_size=4, per_image=3, per_image_steps=4)
    assert scan.statistics["per_image_l1"].tolist() == [256.0] * 4
    assert scan.statistics["mask_l1"][1:].tolist() == [256.0] * 3


def test_success_confidence_counts_an_input_only_above_that_probability(clean):
    # AlwaysClassZero gives class 0 a probability of at most e^5 / (e^5 + 3 e^0) = 0.980 (the other
    # logits are channel means >= 0), whatever the stamp: reached as the arg max on every input,
    # never at 0.99, always at 0.95.
    assert math.exp(5) / (math.exp(5) + 3) < 0.99
    opts = dict(n_steps=4, check_every=2, batch_size=4, cells=SIZE)
    runs = {conf: scan_for_backdoor(AlwaysClassZero(), clean[:1], clean_inputs=clean[:8], seed=0,
                                    success_confidence=conf, **opts).statistics["mask_l1"]
            for conf in (None, 0.95, 0.99)}
    assert float(runs[None][0]) < 256 and torch.equal(runs[0.95], runs[None])
    assert runs[0.99].tolist() == [256.0] * 4


class PlacedAndAnywhere(nn.Module):
    """Class 0 needs a green 4x4 cell at the top-left corner (a trigger learnt at one place), class 1
    a red 4x4 cell anywhere (evidence that works at any place), class 2 wins on every unstamped input
    and class 3 is never reached. Cells are the scan's grid at ``cells=4`` on 16 px."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(8.0))

    def forward(self, x):
        cells = nn.functional.avg_pool2d(x, 4)                                   # [N, 3, 4, 4]
        placed = cells[:, 1, 0, 0] - cells[:, 0, 0, 0]
        anywhere = (cells[:, 0] - cells[:, 1]).flatten(1).amax(1)
        n = x.shape[0]
        return torch.stack([30 * torch.sigmoid(self.gain * (placed - 0.5)),
                            30 * torch.sigmoid(self.gain * (anywhere - 0.5)),
                            torch.full((n,), 10.0), torch.full((n,), -10.0)], dim=1)


def test_position_check_separates_a_placed_trigger_from_evidence_that_works_anywhere():
    g = torch.Generator().manual_seed(0)
    inputs = 0.3 + 0.2 * torch.rand(24, 3, SIZE, SIZE, generator=g)
    opts = dict(n_steps=60, batch_size=12, check_every=4, cells=4, seed=0)
    model = PlacedAndAnywhere()
    plain = scan_for_backdoor(model, inputs[:1], clean_inputs=inputs, **opts)
    checked = scan_for_backdoor(model, inputs[:1], clean_inputs=inputs, position_check=True, **opts)
    # The check does not change the search: same stamps, same norms.
    assert torch.equal(plain.trigger_masks, checked.trigger_masks)
    assert "position_specificity" not in plain.statistics
    norms, spec = checked.statistics["mask_l1"], checked.statistics["position_specificity"]
    assert torch.equal(norms, plain.statistics["mask_l1"])
    # Both stamps flip every input in place; moved by one cell, class 0's green cell leaves the corner
    # and flips nothing, which counts as half an input of the 24 (0.5 / 24 / 1.0), while class 1's
    # red cell still counts. Class 2 is every input's class already (moved or not) and class 3 is
    # never reached: nothing to lose, 1.
    assert checked.attack_success[:3].tolist() == [1.0, 1.0, 1.0] and checked.attack_success[3] == 0.0
    assert spec[0] == pytest.approx(0.5 / 24) and spec[1] > 0.9 and spec[2:].tolist() == [1.0, 1.0]
    assert torch.equal(checked.statistics["position_weighted_l1"], norms * spec)
    # The decision is made on the weighted norms: their low-side index of the log values, floored.
    logs = (norms * spec).double().log()
    expected = mad_anomaly_index(logs, min_scale=0.1).float()
    expected = torch.where(logs < logs.quantile(0.5), expected, torch.zeros_like(expected))
    assert torch.allclose(checked.anomaly_index, expected)


def test_position_check_is_one_where_moving_changes_nothing(clean):
    # AlwaysClassZero: class 0 holds every input with or without a stamp, the others are never reached.
    scan = scan_for_backdoor(AlwaysClassZero(), clean[:1], clean_inputs=clean[:8], seed=0, n_steps=4,
                             check_every=2, batch_size=4, cells=SIZE, position_check=True)
    assert scan.statistics["position_specificity"].tolist() == [1.0] * 4


# ---------------------------------------------------------------- argument errors


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


class TupleModel(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


BAD = [
    (dict(classes=[0, 1, 1, 2]), InvalidArgumentError, "classes must not repeat"),
    (dict(classes=[0.0, 1.0, 2.0]), TypeError, "classes must hold ints"),
    (dict(classes=[0, 1]), InvalidArgumentError, "at least 3 classes"),
    (dict(classes=[0, 1, 7]), InvalidArgumentError, "out of range"),
    (dict(threshold=math.nan), InvalidArgumentError, "threshold"),
    (dict(threshold=math.inf), InvalidArgumentError, "threshold"),
    (dict(threshold=0.0), InvalidArgumentError, "threshold"),
    (dict(trigger_mask=torch.ones(5, 5, dtype=torch.bool)), InvalidArgumentError, "trigger_mask"),
    (dict(trigger_mask=torch.zeros(SIZE, SIZE, dtype=torch.bool)), InvalidArgumentError, "trigger_mask"),
    (dict(seed=-2), InvalidArgumentError, "seed"),
    (dict(batch_size=0), InvalidArgumentError, "batch_size"),
    (dict(attack_success=1.5), InvalidArgumentError, "attack_success"),
    (dict(steps=3), TypeError, "unknown option"),
]
SCAN_ONLY = [
    (dict(per_image=-1), InvalidArgumentError, "per_image"),
    (dict(per_image=2.5), TypeError, "per_image"),
    (dict(per_image_steps=0), InvalidArgumentError, "per_image_steps"),
    (dict(noise_floor=-0.1), InvalidArgumentError, "noise_floor"),
    (dict(success_confidence=1.0), InvalidArgumentError, "success_confidence"),
    (dict(success_confidence=0.0), InvalidArgumentError, "success_confidence"),
    (dict(success_confidence=math.nan), InvalidArgumentError, "success_confidence"),
    (dict(position_check="yes"), TypeError, "position_check"),
]


@pytest.mark.parametrize("kwargs,error,match", BAD + SCAN_ONLY)
def test_scan_argument_errors(clean, kwargs, error, match):
    with pytest.raises(error, match=match):
        scan_for_backdoor(tiny_model(), clean[:1], clean_inputs=clean[:8], **dict(dict(n_steps=1), **kwargs))


@pytest.mark.parametrize("kwargs,error,match", BAD)
def test_neural_cleanse_argument_errors(clean, kwargs, error, match):
    with pytest.raises(error, match=match):
        neural_cleanse(tiny_model(), clean[:8], **dict(dict(n_epochs=1), **kwargs))


def test_empty_batches_and_tuple_models_are_refused(clean):
    with pytest.raises(InvalidArgumentError, match="example_input"):
        scan_for_backdoor(tiny_model(), clean[:0])
    with pytest.raises(InvalidArgumentError, match="clean_inputs"):
        scan_for_backdoor(tiny_model(), clean[:1], clean_inputs=clean[:0])
    with pytest.raises(InvalidArgumentError, match="clean_inputs"):
        neural_cleanse(tiny_model(), clean[:0])
    with pytest.raises(TypeError, match="model must return one tensor"):
        scan_for_backdoor(TupleModel(), clean[:1], clean_inputs=clean[:8], n_steps=1)
    with pytest.raises(TypeError, match="model must return one tensor"):
        neural_cleanse(TupleModel(), clean[:8], n_epochs=1)
    with pytest.raises(TypeError, match="model"):
        scan_for_backdoor(lambda x: x, clean[:1])
    with pytest.raises(InvalidArgumentError, match="clean_inputs"):
        scan_for_backdoor(tiny_model(), clean[:1], clean_inputs=clean[:4, :, :8])


class NaNModel(nn.Module):
    def forward(self, x):
        out = x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]
        return out * float("nan") if torch.is_grad_enabled() else out


def test_nan_during_optimisation_raises(clean):
    with pytest.raises(NonFiniteOutputError, match="scan_for_backdoor"):
        scan_for_backdoor(NaNModel(), clean[:1], clean_inputs=clean[:8], n_steps=1)
    with pytest.raises(NonFiniteOutputError, match="Neural Cleanse"):
        neural_cleanse(NaNModel(), clean[:8], n_epochs=1)


# ---------------------------------------------------------------- the statistics by hand


def test_mad_index_by_hand_and_flag_direction():
    norms = torch.tensor([9.0, 40.0, 44.0, 50.0, 38.0])
    # median 40, |deviations| 31, 0, 4, 10, 2 -> MAD 4; scale 1.4826 * 4
    expected = torch.tensor([31.0, 0.0, 4.0, 10.0, 2.0]) / (1.4826 * 4)
    assert torch.allclose(mad_anomaly_index(norms), expected)
    assert flag_anomalies(norms, direction="low").tolist() == [True, False, False, False, False]
    # 50 is 10 / 5.93 = 1.69 above: not an outlier; "high" flags nothing
    assert not bool(flag_anomalies(norms, direction="high").any())
    # leave-one-out: class 0 against [40, 44, 50, 38]: median 42, MAD 3 -> (42 - 9) / 4.4478
    loo = mad_anomaly_index(norms, leave_one_out=True)
    assert math.isclose(float(loo[0]), 33 / (1.4826 * 3), rel_tol=1e-5)
    # a floor on the scale: (42 - 9) / 10
    assert math.isclose(float(mad_anomaly_index(norms, leave_one_out=True, min_scale=10.0)[0]), 3.3, rel_tol=1e-5)


def test_scan_flags_the_low_side_only():
    # A stand-in for the scan's decision: the smallest norm is flagged, the
    # largest (hard to reach) never, however extreme.
    norms = torch.tensor([60.0, 58.0, 62.0, 5.0, 900.0])
    flags = flag_anomalies(norms.log(), direction="low")
    assert flags.tolist() == [False, False, False, True, False]


def test_localisation_metrics_by_hand():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:, 2:] = True
    masks = torch.zeros(2, 4, 4)
    masks[0, 2:, 2:] = 0.5            # all on the trigger
    masks[1, :2, :2] = 1.0            # all off
    masks[1, 3, 3] = 1.0              # one of 5 pixels on
    assert torch.allclose(trigger_energy_share(masks, region, sign="absolute", normalize=False),
                          torch.tensor([1.0, 0.2]))
    # top-4 pixels of map 1: the 4 off-trigger ones tie with the one on it; raster order keeps (0,0),(0,1),(1,0),(1,1)
    assert torch.allclose(trigger_iou(masks, region), torch.tensor([1.0, 0.0]))


# ---------------------------------------------------------------- shipped models


# The shipped pair both scans get right with their defaults in the zoo benchmark (same clean
# set): the ResNet with the 6x6 patch (target 0) and its clean twin. Default settings on 100
# clean images cost about 20 s per scan (ours) and 40 s (Neural Cleanse) of one CPU core, hence
# slow. Cheaper settings were tried and do not hold: on 40 images, 60 steps of 10 inputs (checks
# every 2 steps), 100 steps of 8 or 120 steps of 5 flag class 4 or nothing on the backdoored
# ResNet (the cost schedule has not converged); the fast tests above use a model whose backdoor
# is built in instead.
SHIPPED_CLEAN_SEED = 20_261_125   # the clean set of benchmarks/backdoor_scan.py


@pytest.fixture(scope="module")
def shipped_pair():
    from captum_global.world import load_reference_model, make_dataset

    return (load_reference_model("resnet", "patch"), load_reference_model("resnet", "clean"),
            make_dataset(100, seed=SHIPPED_CLEAN_SEED).images)


@pytest.mark.slow
def test_scan_finds_the_shipped_patch_backdoor_and_spares_its_twin(shipped_pair):
    from captum_global.world import reference_target_class

    backdoored_model, twin_model, clean = shipped_pair
    backdoored = scan_for_backdoor(backdoored_model, clean[:1], clean_inputs=clean, seed=0)
    twin = scan_for_backdoor(twin_model, clean[:1], clean_inputs=clean, seed=0)
    assert backdoored.flagged == [reference_target_class()]
    assert twin.flagged == []


@pytest.mark.slow
def test_neural_cleanse_finds_the_shipped_patch_backdoor_and_spares_its_twin(shipped_pair):
    from captum_global.world import reference_target_class

    backdoored_model, twin_model, clean = shipped_pair
    assert neural_cleanse(backdoored_model, clean, seed=0).flagged == [reference_target_class()]
    assert neural_cleanse(twin_model, clean, seed=0).flagged == []


class _NaNAfter(nn.Module):
    """The planted model, returning NaN from its ``after + 1``-th call on."""

    def __init__(self, after):
        super().__init__()
        self.net, self.after, self.calls = PlantedBackdoor(), after, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out * float("nan") if self.calls > self.after else out


def test_nan_after_the_optimisation_is_refused_not_counted_as_class_0():
    # sweep: NaN logits in the attack-success pass (argmax 0) gave class 0 a success of 1 and flagged it
    x = coloured_images(8)
    options = dict(n_steps=4, batch_size=4, check_every=2)
    # calls: 1 to count classes, 4 optimisation steps, then the success pass (one call per class)
    model = _NaNAfter(5)
    model.train()
    with pytest.raises(NonFiniteOutputError, match="suspected trigger of class 0"):
        scan_for_backdoor(model, x[:1], clean_inputs=x, **options)
    assert model.training and model.net.scale.requires_grad
    # without clean inputs, the unstamped noise is classified first (call 2)
    with pytest.raises(NonFiniteOutputError, match="unstamped noise"):
        scan_for_backdoor(_NaNAfter(1), x[:1], num_noise_samples=8, **options)
    with pytest.raises(NonFiniteOutputError, match="per-image inputs"):
        scan_for_backdoor(_NaNAfter(5 + 4), x[:1], clean_inputs=x, per_image=2, **options)
    # Neural Cleanse: 1 call to count, 2 epochs x 2 batches for label 0, then its success pass
    with pytest.raises(NonFiniteOutputError, match="label 0, the reversed trigger's attack success"):
        neural_cleanse(_NaNAfter(5), x, n_epochs=2, batch_size=4)


class _ShiftInPlace(nn.Module):
    def __init__(self, in_place):
        super().__init__()
        self.in_place, self.net = in_place, PlantedBackdoor()

    def forward(self, x):
        return self.net(x.mul_(1.0).add_(0.0) if self.in_place else x * 1.0 + 0.0)


def test_a_model_working_in_place_leaves_the_callers_images_as_they_were():
    # sweep: the class count ran the model on a view of example_input / clean_inputs
    x = coloured_images(8)
    x[:, :, 0, 0] = 0.123456  # in-place identity ops would keep these values; check all bits
    kept = x.clone()
    scan = scan_for_backdoor(_ShiftInPlace(True), x[:1], clean_inputs=x, n_steps=4, batch_size=4, check_every=2)
    reference = scan_for_backdoor(_ShiftInPlace(False), kept[:1], clean_inputs=kept.clone(), n_steps=4, batch_size=4,
                                  check_every=2)
    assert torch.equal(x, kept)
    assert torch.equal(scan.trigger_masks, reference.trigger_masks)

    class Halve(nn.Module):  # a visible in-place change
        def forward(self, x):
            return PlantedBackdoor()(x.mul_(0.5))

    neural_cleanse(Halve(), x, n_epochs=1, batch_size=4)
    scan_for_backdoor(Halve(), x[:1], clean_inputs=x, n_steps=2, batch_size=4, check_every=1)
    assert torch.equal(x, kept)


def test_neural_cleanse_target_as_a_one_element_tensor():
    from captum_global.backdoor import NeuralCleanse

    x = coloured_images(8)
    as_int = NeuralCleanse(PlantedBackdoor()).attribute(x, target=2, n_epochs=2, batch_size=4)
    for target in (torch.tensor(2), torch.tensor([2]), torch.tensor(2, dtype=torch.int32)):
        got = NeuralCleanse(PlantedBackdoor()).attribute(x, target=target, n_epochs=2, batch_size=4)
        assert torch.equal(got[0], as_int[0]) and got[2:] == as_int[2:]
    with pytest.raises(TypeError, match="target must be an int"):
        NeuralCleanse(PlantedBackdoor()).attribute(x, target=torch.tensor(2.0), n_epochs=1)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        NeuralCleanse(PlantedBackdoor()).attribute(x, target=torch.tensor(4), n_epochs=1)
