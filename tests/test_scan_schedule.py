"""Neural Cleanse's cost schedule, by value, in both scans.

``init_cost``, ``cost_multiplier``, ``patience``, ``early_stop_patience`` and
``attack_success`` of :func:`scan_for_backdoor` (schedule in
``backdoor/_reverse.py``) and of :func:`neural_cleanse` /
:class:`NeuralCleanse`, checked against hand-computed expectations on one
tiny probe model (docs/use/backdoor.md, "How the input-agnostic scan works":
the cost is off until a stamp has reached ``attack_success`` at ``patience``
checks in a row, then ``init_cost``, raised by ``cost_multiplier`` after
``patience`` successful checks, lowered by ``cost_multiplier ** 1.5`` after
``patience`` failed ones; early stop after ``early_stop_patience`` checks
without improvement once the cost has gone both up and down).

The probe (:class:`_Probe`) makes the schedule observable:

* **Which checks succeed is scripted.** Its ``script`` holds one letter per
  optimisation call (``S``: every stamped input that is bright reaches the
  scanned classes, ``F``: none does; the last letter repeats). With
  ``check_every=1`` and one batch per epoch that is one letter per check
  (scan) or per epoch (Neural Cleanse).
* **No cross-entropy gradient reaches the stamp** (``beta=0``): the mask
  moves only through ``cost * |mask|_1``, i.e. exactly when the cost is on,
  and then always down, so a check improves the best l1 exactly when it
  succeeds after a step with the cost on.
* **Or a known one** (``beta > 0``): the cross entropy equals
  ``beta / 2 * (l1 - target) ** 2`` plus a constant, so the loss
  ``CE + cost * l1`` is smallest at ``l1 = target - cost / beta``: holding the
  cost still (alternating ``S`` and ``F``, so that neither counter reaches
  ``patience``), the mask settles where the cost puts it.

The images are 1 x 2 x 2; a clean input of ones is "bright", one of zeros
"dark"; the pattern's value range is pinned at 0.5, so a stamped bright
input is ``1 - mask / 2`` and the probe reads the mask's l1 off it.
"""
import math

import pytest
import torch
from torch import nn

from captum_global.backdoor import NeuralCleanse, neural_cleanse, scan_for_backdoor


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


AREA = 4.0                        # 2 x 2 pixels: the l1 of a full mask
BRIGHT = torch.ones(2, 1, 2, 2)   # two clean inputs, every step sees both (batch_size 2)
PINNED = (0.5, 0.5 + 1e-6)        # value_range: the pattern is 0.5


class _Probe(nn.Module):
    """Three tied classes and a sink class (index 3).

    A row *reaches* (each of classes 0, 1, 2 with probability 0.3, the sink
    0.1: the arg max is class 0, and a ``success_confidence`` of 0.25 counts
    it for every class) when its input is bright (mean > 0.5; a stamp keeps
    a bright input above 0.5 and a dark one below) and the script says ``S``
    for this call; otherwise the sink takes 0.97. Only optimisation calls
    (grad enabled, input requiring grad) advance the script.

    The logits are built so that their log-sum-exp is 0 whatever ``t`` is,
    so the cross entropy of any class 0-2 is ``-t`` (value shifted, gradient
    exact), with ``t = -beta / 2 * (l1 - target) ** 2`` and ``l1`` the mask l1
    read off a stamped bright input.
    """

    def __init__(self, script: str = "S", beta: float = 0.0, target: float = 0.0):
        super().__init__()
        self.script, self.beta, self.target, self.calls = script, beta, target, 0

    def forward(self, x):
        s = x.flatten(1)
        reach = s.mean(1) > 0.5
        if torch.is_grad_enabled() and x.requires_grad:
            reach = reach & (self.script[min(self.calls, len(self.script) - 1)] == "S")
            self.calls += 1
        l1 = 2 * (1 - s).sum(1)
        t = -0.5 * self.beta * (l1 - self.target) ** 2
        q = torch.where(reach, torch.tensor(0.3), torch.tensor(0.01))
        z = t + (q.log() - t.detach())          # value log q, gradient that of t
        sink = torch.log(1 - 3 * z.exp())       # 3 e^z + e^sink = 1 for every t
        return torch.cat([z.unsqueeze(1).expand(-1, 3), sink.unsqueeze(1)], 1)


def _scan(script="S", clean=BRIGHT, beta=0.0, target=0.0, **options):
    opts = dict(classes=[0, 1, 2], seed=0, cells=1, batch_size=2, check_every=1, success_confidence=0.25,
                value_range=PINNED)
    opts.update(options)
    return scan_for_backdoor(_Probe(script, beta, target), clean[:1], clean_inputs=clean, **opts)


def _nc_options(**options):
    opts = dict(batch_size=2, value_range=PINNED)   # one batch = one epoch
    opts.update(options)
    return opts


def _reverse_label_0(script="S", clean=BRIGHT, beta=0.0, target=0.0, **options):
    """NeuralCleanse.attribute for label 0 (the class the tied probe gives a reached input to)."""
    return NeuralCleanse(_Probe(script, beta, target)).attribute(clean, 0, seed=0, **_nc_options(**options))


# --------------------------------------------------------------------------- the probe itself


def test_probe_reads_the_mask_and_scripts_success():
    probe = _Probe("SF", beta=0.0)
    mask = torch.tensor([[0.2, 0.4], [0.6, 0.8]], requires_grad=True)
    stamped = (1 - mask) * BRIGHT + mask * 0.5
    with torch.no_grad():
        out = probe(stamped)
    assert probe.calls == 0  # a no-grad call is not an optimisation step
    assert torch.equal(out.argmax(1), torch.tensor([0, 0]))
    torch.testing.assert_close(out.softmax(1)[0], torch.tensor([0.3, 0.3, 0.3, 0.1]))
    assert probe(stamped).argmax(1).tolist() == [0, 0]   # optimisation call 1 reads "S"
    assert probe(stamped).argmax(1).tolist() == [3, 3]   # call 2 reads "F"
    assert probe(stamped).argmax(1).tolist() == [3, 3] and probe.calls == 3  # the last letter repeats
    dark = _Probe()(torch.zeros(1, 1, 2, 2) + 0.4)
    assert dark.argmax(1).tolist() == [3]
    # the cross entropy's gradient is that of beta/2 * (l1 - target)^2, l1 = 2.0 here
    pulled = _Probe("S", beta=0.5, target=3.0)
    ce = torch.nn.functional.cross_entropy(pulled(((1 - mask) + mask * 0.5).view(1, 1, 2, 2)), torch.tensor([1]))
    (grad,) = torch.autograd.grad(ce, mask)
    torch.testing.assert_close(grad, torch.full((2, 2), 0.5 * (2.0 - 3.0)))


# --------------------------------------------------------------------------- patience: the cost switches on


def _initial(scan_result):
    """A one-step run never moves the masks (the cost is off): its trigger masks are the initial ones."""
    return scan_result.trigger_masks.clone()


def test_scan_cost_switches_on_after_patience_successful_checks_in_a_row():
    """patience=2, checks S F S S S ...: the failure at check 2 resets the count, so the cost is set
    after check 4, the first step with it is check 5's, and check 6 is the first whose mask (taken
    before its step) is smaller. Counting successes that are not in a row would set it after check 3."""
    script = "SFSSSS"
    start = _initial(_scan(script, n_steps=1, patience=2))
    initial_l1 = start.sum((1, 2))
    five = _scan(script, n_steps=5, patience=2)
    assert torch.equal(five.trigger_masks, start)                  # the cost was off for steps 1-4
    torch.testing.assert_close(five.statistics["mask_l1"], initial_l1)
    six = _scan(script, n_steps=6, patience=2)
    assert bool((six.statistics["mask_l1"] < initial_l1 - 1e-3).all())
    assert bool((six.trigger_masks.sum((1, 2)) < six.statistics["mask_l1"]).all())  # still shrinking


def test_neural_cleanse_cost_switches_on_after_patience_successful_epochs_in_a_row():
    script = "SFSSSS"
    mask0, _, l1_0, _ = _reverse_label_0(script, n_epochs=1, patience=2)
    assert l1_0 == pytest.approx(float(mask0.sum()), rel=1e-6)
    mask5, _, l1_5, _ = _reverse_label_0(script, n_epochs=5, patience=2)
    assert torch.equal(mask5, mask0) and l1_5 == l1_0
    _, _, l1_6, _ = _reverse_label_0(script, n_epochs=6, patience=2)
    assert l1_6 < l1_0 - 1e-3


# --------------------------------------------------------------------------- early stop


# (script of checks, patience, early_stop_patience, checks run until the early stop; 40 = never stopped)
EARLY_STOP_CASES = [
    # p=2: cost on after check 2; checks 3-4 succeed -> raised after 4 (check 4 improves: the mask
    # moved in step 3); 5-6 fail -> lowered after 6; no improvement since 4: stop when 7 - 4 >= 3
    ("SSSS", 2, 3, 7),
    ("SSSS", 2, 5, 9),            # the same, stopping when (check - 4) >= 5
    # check 7 succeeds on a mask that kept shrinking through the failed checks: an improvement,
    # the count starts again and the stop comes three checks later
    ("SSSSFFS", 2, 3, 10),
    # only one success after the cost is on: never raised (cost never went up): no early stop
    ("SSS", 2, 3, 40),
    # p=1: on after 1, raised after 2 and 3 (3 improves), lowered after 4, 5, 6; stop at 6 - 3 >= 3
    ("SSS", 1, 3, 6),
    # always successful: never lowered (never went down): no early stop
    ("S", 2, 3, 40),
    # p=3: raised after 6; then two failures at a time: 2 checks without improvement (= early_stop_patience)
    # again and again, but never 3 failures in a row: the cost never went down, no early stop
    ("SSSSSS" + "FFS" * 12, 3, 2, 40),
]


EARLY_STOP_IDS = ["p2-stop3", "p2-stop5", "improved-again", "never-up", "p1", "never-down", "down-never-patience"]


@pytest.mark.parametrize("script,patience,early,checks", EARLY_STOP_CASES, ids=EARLY_STOP_IDS)
def test_scan_stops_early_after_early_stop_patience_checks_without_improvement(script, patience, early, checks):
    scan = _scan(script + "F", n_steps=40, patience=patience, early_stop_patience=early)
    assert scan.settings["steps_run"] == checks
    # 3 classes x 2 inputs per step, + the attack success of 3 stamps on the 2 inputs
    assert scan.num_evaluations == checks * 3 * 2 + 3 * 2


@pytest.mark.parametrize("script,patience,early,checks", EARLY_STOP_CASES, ids=EARLY_STOP_IDS)
def test_neural_cleanse_stops_early_after_early_stop_patience_epochs_without_improvement(
        script, patience, early, checks):
    """Label 0 runs ``checks`` epochs (2 inputs each) + the attack-success pass; labels 1 and 2 are
    never reached by the tied probe, so they run all 40 epochs."""
    scan = neural_cleanse(_Probe(script + "F"), BRIGHT, classes=[0, 1, 2], seed=0,
                          **_nc_options(n_epochs=40, patience=patience, early_stop_patience=early))
    assert scan.num_evaluations == (checks * 2 + 2) + 2 * (40 * 2 + 2)
    assert math.isfinite(float(scan.statistics["mask_l1"][0]))


def test_scan_early_stop_counts_checks_of_check_every_steps():
    """The same schedule with three steps per check (one letter per step): 7 checks = 21 steps."""
    script = "".join(c * 3 for c in "SSSS") + "F"
    scan = _scan(script, n_steps=60, check_every=3, patience=2, early_stop_patience=3)
    assert scan.settings["steps_run"] == 21
    assert scan.num_evaluations == 21 * 3 * 2 + 3 * 2


# --------------------------------------------------------------------------- attack_success


HALF = torch.cat([torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)])  # a stamp reaches exactly half


@pytest.mark.parametrize("target,reached", [(0.5, True), (0.6, False)])
def test_scan_attack_success_is_the_share_of_a_check_a_stamp_must_reach(target, reached):
    """Every check reaches exactly 1 of 2 inputs: with attack_success 0.5 the checks succeed (the cost
    switches on after 3 and the masks shrink), above it none does: the cost stays off, the masks
    never move, and each class gets the image area as its statistic."""
    start = _initial(_scan(clean=HALF, n_steps=1, attack_success=0.5))
    scan = _scan(clean=HALF, n_steps=8, patience=3, attack_success=target)
    assert scan.settings["steps_run"] == 8
    # the reported success is the arg max's: class 0 takes the bright input, the sink the dark one
    assert scan.attack_success.tolist() == [0.5, 0.0, 0.0]
    if reached:
        assert bool((scan.statistics["mask_l1"] < start.sum((1, 2)) - 1e-3).all())
    else:
        assert scan.statistics["mask_l1"].tolist() == [AREA] * 3
        assert torch.equal(scan.trigger_masks, start)


@pytest.mark.parametrize("target,reached", [(0.5, True), (0.6, False)])
def test_neural_cleanse_attack_success_is_the_share_of_an_epoch_a_mask_must_reach(target, reached):
    mask0, _, l1_0, _ = _reverse_label_0(clean=HALF, n_epochs=1, attack_success=0.5)
    mask, _, l1, success = _reverse_label_0(clean=HALF, n_epochs=8, patience=3, attack_success=target)
    assert success == 0.5
    if reached:
        assert l1 < l1_0 - 1e-3
    else:
        assert l1 == math.inf and torch.equal(mask, mask0)


# --------------------------------------------------------------------------- init_cost and cost_multiplier


TARGET, BETA = 3.0, 1e-3      # l1 settles at TARGET - cost / BETA while the cost holds still
COST, MULTIPLIER = 1e-3, 2.0
WARM = "F" * 110              # cost off (no check succeeds): every mask settles at TARGET first
SETTLE = 45                   # then alternating S/F: neither counter reaches patience=2

# (what happens after the cost is switched on, init_cost, the cost the masks settle at)
COST_CASES = [
    ("SS" + "SF" * SETTLE, COST, COST),                          # init_cost
    ("SS" + "SF" * SETTLE, COST / 2, COST / 2),                  # another init_cost
    ("SS" + "SS" + "FS" * SETTLE, COST, COST * MULTIPLIER),      # two more successes: raised once
    ("SS" + "FF" + "SF" * SETTLE, COST, COST / MULTIPLIER ** 1.5),  # two failures: lowered once
]
COST_IDS = ["init_cost", "half-init_cost", "raised", "lowered"]


@pytest.mark.parametrize("after,init_cost,cost", COST_CASES, ids=COST_IDS)
def test_scan_mask_settles_where_init_cost_and_cost_multiplier_put_the_cost(after, init_cost, cost):
    script = WARM + after
    scan = _scan(script, beta=BETA, target=TARGET, n_steps=len(script), lr=0.03, patience=2,
                 early_stop_patience=10 ** 6, init_cost=init_cost, cost_multiplier=MULTIPLIER)
    # expected 2.0, 2.5, 1.0, 2.65 (the nearest wrong schedules: 2.5 for init_cost, 2.0 unraised, 2.5 or
    # 2.75 lowered by the multiplier or its square); the statistic is the minimum over the successful
    # checks, so Adam's small oscillation around the optimum (under 0.05 over seeds 0-6) can only lower it
    expected = TARGET - cost / BETA
    for l1 in scan.statistics["mask_l1"].tolist():
        assert expected - 0.08 < l1 <= expected + 0.005


@pytest.mark.parametrize("after,init_cost,cost", COST_CASES, ids=COST_IDS)
def test_neural_cleanse_mask_settles_where_init_cost_and_cost_multiplier_put_the_cost(after, init_cost, cost):
    script = WARM + after
    _, _, l1, _ = _reverse_label_0(script, beta=BETA, target=TARGET, n_epochs=len(script), lr=0.03, patience=2,
                                   early_stop_patience=10 ** 6, init_cost=init_cost, cost_multiplier=MULTIPLIER)
    expected = TARGET - cost / BETA
    assert expected - 0.08 < l1 <= expected + 0.005
