"""The input-agnostic backdoor scan: which class is too easy to reach?

A backdoored classifier maps a small, fixed change of *any* input to its
target class. :func:`scan_for_backdoor` measures, for every class, how
small an input-agnostic change (one stamp for all inputs: a mask and a
pattern) flips inputs to it, and flags the classes that are anomalously
easy to reach compared with the others. It needs no knowledge of the
trigger; it returns each class's suspected trigger for a person to look at.
"""
import math
import time
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from captum_global._checks import (
    check_bool,
    check_int,
    check_module,
    check_number,
    check_value_range,
)
from captum_global._model_state import autograd_on, preserved_model_state
from captum_global._seeding import check_seed, make_generator
from captum_global.attr import InputAgnosticSaliency
from captum_global.attr._agnostic import smooth
from captum_global.backdoor._common import (
    check_classes,
    check_images,
    checked_logits,
    check_threshold,
    check_trigger_mask,
    count_classes,
    flagged_classes,
    localisation,
    low_side_index,
    split_inputs,
    stamp,
)
from captum_global.backdoor._reverse import reverse_triggers
from captum_global.backdoor.result import BackdoorScan
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["scan_for_backdoor", "DEFAULTS"]

#: Default options of :func:`scan_for_backdoor` (keyword arguments).
DEFAULTS: Dict[str, Any] = dict(
    cells=16,
    n_steps=120,
    batch_size=20,
    check_every=5,
    lr=0.1,
    init_cost=1e-3,
    cost_multiplier=1.5,
    patience=3,
    early_stop_patience=8,
    attack_success=0.95,
    noise_floor=0.1,
    held_out=0.0,
    num_noise_samples=128,
    value_range=(0.0, 1.0),
    class_maps=False,
    per_image=0,
    per_image_steps=120,
    success_confidence=None,
    position_check=False,
)


# the stamps are learnt (and the noise inputs drawn) outside the caller's torch.inference_mode(), if any
@autograd_on()
def scan_for_backdoor(
    model: nn.Module,
    example_input: Tensor,
    classes: Optional[Sequence[int]] = None,
    clean_inputs: Optional[Tensor] = None,
    trigger_mask: Optional[Tensor] = None,
    threshold: float = 2.0,
    seed: Optional[int] = 0,
    show_progress: bool = False,
    **options: Any,
) -> BackdoorScan:
    r"""Scan a classifier for a planted trigger without knowing where it is.

    For every class ``c`` the scan looks for the smallest *input-agnostic*
    change that flips inputs to ``c``: one stamp ``x -> (1 - m) x + m p``
    (mask ``m`` on a grid of ``cells x cells`` cells, pattern ``p``) shared
    by all inputs. All classes are searched together on the same inputs,
    each with Neural Cleanse's l1 cost schedule on its mask (checked every
    few steps rather than every pass over the data, so a small clean set
    still gets a full schedule). The mask lives
    on a coarse grid, so a stamp is charged for every cell it touches: a
    planted trigger is one contiguous region, while the small adversarial
    stamps every class has are scattered. A class whose smallest mask is
    anomalously small (Neural Cleanse's median-absolute-deviation index of
    the *log* l1 norms over classes, below the median, with the scale
    floored at the statistic's own noise) is flagged: a backdoor's target
    is the class that is too easy to reach.

    Args:
        model (nn.Module): the classifier, returning ``[batch, classes]``
                    scores. It is run in eval mode and left as found.
        example_input (Tensor): ``[1, C, H, W]`` (or a batch): gives the
                    input shape, dtype and device; its values are not used.
        classes (sequence of int, optional): classes to scan (distinct,
                    at least 3; negative indices count from the end, as
                    in Captum's targets). Default: every class of the model.
        clean_inputs (Tensor, optional): ``[N, C, H, W]`` clean images, a
                    few per class (a defender's small clean set). A
                    ``held_out`` share of them judges the attack success
                    of the suspected triggers. Without them the scan runs
                    on smooth random images (the ``"smooth"`` distribution
                    of :class:`~captum_global.attr.InputAgnosticSaliency`):
                    classes the model already assigns most of those images
                    to cannot be tested and are never flagged (they are
                    listed in ``settings["untestable"]``), and the result
                    says less about real inputs.
        trigger_mask (Tensor, optional): bool ``[H, W]`` region of a known
                    planted trigger, only to report how well each suspected
                    trigger overlaps it (``localisation``).
        threshold (float): anomaly-index cut-off (> 0). Default: 2.0
        seed (int, optional): seed of every random choice (initialisation,
                    batch order, noise); ``None`` draws one.
        show_progress (bool): progress bar over the schedule rounds.
        **options: ``cells`` (16: the mask grid per side; 1 cell = the
                    image side / ``cells`` pixels), ``n_steps`` (120
                    optimisation steps), ``batch_size`` (20 inputs per class
                    and step), ``check_every`` (5: steps per round of the
                    cost schedule, whose success rate decides it), ``lr``
                    (0.1), ``init_cost`` (1e-3), ``cost_multiplier`` (1.5),
                    ``patience`` (3), ``early_stop_patience`` (8),
                    ``attack_success`` (0.95: the share of a round's inputs a
                    stamp must flip), ``noise_floor`` (0.1: floor of the
                    anomaly scale ``1.4826 * MAD``, in log units: the
                    statistic's seed-to-seed noise), ``held_out`` (0.0: all
                    clean inputs serve both the search and the reported
                    attack success), ``num_noise_samples`` (128, without
                    clean inputs), ``value_range`` ((0, 1)), ``class_maps``
                    (False: with True, ``maps`` holds
                    :class:`InputAgnosticSaliency` class maps instead of the
                    suspected triggers' pictures), ``per_image`` (0: off;
                    ``M`` > 0 also searches, for every class, one stamp per
                    image on ``M`` of the clean inputs, ``per_image_steps``
                    (120) steps each, and decides on the shared stamp's l1
                    *relative* to the median per-image l1 of the class,
                    images of the class left out: natural ease of reach
                    divided out. Measured on the reference zoo it raised
                    more false alarms than the plain statistic, hence off;
                    it costs ``per_image_steps * classes * M`` evaluations
                    more), ``success_confidence`` (None: an input counts as
                    flipped when the class is its arg max; a probability in
                    (0, 1): only when the class's softmax probability
                    reaches it, so the statistic is the mask that makes the
                    class *sure*, not just the winner), ``position_check``
                    (False: with True, each class's stamp is also applied
                    moved by one grid cell up, down, left and right; its
                    *position specificity* is the mean success moved over
                    the success in place (at most 1), and the decision is
                    made on the mask l1 times it. A trigger planted at one
                    place is learnt there, while a class's natural evidence
                    works anywhere, so a trigger's stamp loses more when
                    moved; costs ``4 * classes`` passes over the judging
                    inputs).

    Returns:
        :class:`BackdoorScan` with ``statistics["mask_l1"]`` (pixels); with
        ``per_image`` also ``"per_image_l1"`` and ``"relative_l1"`` (the
        ratio the decision is then made on); with ``position_check`` also
        ``"position_specificity"`` and ``"position_weighted_l1"`` (what the
        decision is then made on).

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.backdoor import scan_for_backdoor
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> scan = scan_for_backdoor(net, torch.zeros(1, 3, 16, 16), clean_inputs=torch.rand(12, 3, 16, 16),
        ...                          n_steps=6, batch_size=4)
        >>> scan.classes, scan.trigger_masks.shape, scan.trigger_patterns.shape
        ([0, 1, 2], torch.Size([3, 16, 16]), torch.Size([3, 3, 16, 16]))
    """
    start = time.perf_counter()
    model = check_module(model, "model", "the scan runs it in eval mode")
    example = check_images(example_input, "example_input")
    opts = _check_options(options)
    threshold = check_threshold(threshold)
    seed = check_seed(seed)
    show_progress = check_bool(show_progress, "show_progress")
    c, h, w = example.shape[1:]
    num_classes = count_classes(model, example)
    classes = check_classes(classes, num_classes)
    region = check_trigger_mask(trigger_mask, h, w)
    generator = make_generator(seed)
    lo, hi = opts["value_range"]
    if clean_inputs is not None:
        inputs = check_images(clean_inputs, "clean_inputs", min_examples=2)
        if tuple(inputs.shape[1:]) != (c, h, w):
            raise InvalidArgumentError(
                f"clean_inputs must have the example's shape [N, {c}, {h}, {w}], got {tuple(inputs.shape)}"
            )
        inputs = inputs.to(example.device, example.dtype)
    else:
        inputs = lo + (hi - lo) * smooth_noise(opts["num_noise_samples"], (c, h, w), generator)
        inputs = inputs.to(example.device, example.dtype)
    train, held = split_inputs(inputs, generator, opts["held_out"]) if opts["held_out"] > 0 else (inputs, inputs)
    cell = max(1, math.ceil(max(h, w) / opts["cells"]))
    rounds = math.ceil(opts["n_steps"] / opts["check_every"])
    bar = _progress(show_progress, rounds)
    stream = _batch_stream(train, opts["batch_size"], generator)

    def batches(round_: int):
        return [next(stream) for _ in range(_round_steps(round_, opts["n_steps"], opts["check_every"]))]

    try:
        with preserved_model_state(model, freeze_parameters=True):
            untestable = _base_classes(model, held, classes) if clean_inputs is None else []
            found = reverse_triggers(
                model, classes, batches, (c, h, w), cell, rounds, opts["lr"], opts["init_cost"],
                opts["cost_multiplier"], opts["patience"], opts["early_stop_patience"], opts["attack_success"],
                (lo, hi), generator, example.device, example.dtype, progress=bar.update if bar else None,
                confidence=opts["success_confidence"],
            )
            success = _success(model, held, classes, found.masks, found.patterns)
            evaluations = found.evaluations + len(classes) * held.shape[0] + (held.shape[0] if clean_inputs is None else 0)
            specificity = None
            if opts["position_check"]:
                specificity = _position_specificity(model, held, classes, found.masks, found.patterns, success, cell)
                evaluations += 4 * len(classes) * held.shape[0]
            per_image = None
            if opts["per_image"] > 0:
                per_image, spent = _per_image_cost(model, classes, train, opts, cell, (c, h, w), (lo, hi), generator,
                                                   example.device, example.dtype)
                evaluations += spent
            if opts["class_maps"]:
                maps = InputAgnosticSaliency(model).attribute(
                    example[:1].expand(len(classes), c, h, w), target=classes,
                    distribution=inputs if clean_inputs is not None else "smooth", seed=seed)
                evaluations += 1 + 100 * 16 * len(classes)
            else:
                maps = found.masks.unsqueeze(1) * found.patterns
    finally:
        if bar:
            bar.close()
    area = float(h * w)
    norms = torch.where(torch.isfinite(found.mask_l1), found.mask_l1, torch.full_like(found.mask_l1, area))
    statistics = {"mask_l1": norms}
    decided_on = norms
    if per_image is not None:
        statistics["per_image_l1"] = per_image
        statistics["relative_l1"] = decided_on = norms / per_image
    if specificity is not None:
        statistics["position_specificity"] = specificity
        statistics["position_weighted_l1"] = decided_on = decided_on * specificity
    index = _anomaly(decided_on, classes, untestable, opts["noise_floor"])
    return BackdoorScan(
        method="input-agnostic scan", classes=classes, statistics=statistics, anomaly_index=index,
        flagged=flagged_classes(classes, index, threshold), threshold=threshold, maps=maps.detach(),
        trigger_masks=found.masks.detach(), trigger_patterns=found.patterns.detach(), attack_success=success,
        localisation=localisation(found.masks, region), num_evaluations=evaluations,
        seconds=time.perf_counter() - start,
        settings={**{k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()}, "seed": seed,
                  "cell_pixels": cell,
                  "steps_run": min(found.epochs * opts["check_every"], opts["n_steps"]),
                  "inputs": "clean_inputs" if clean_inputs is not None else "smooth noise",
                  "num_inputs": int(inputs.shape[0]), "untestable": untestable},
    )


def _check_options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InvalidArgumentTypeError(f"unknown option(s) {unknown}; scan_for_backdoor takes {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **options}
    return dict(
        cells=check_int(s["cells"], "cells", minimum=1),
        n_steps=check_int(s["n_steps"], "n_steps", minimum=1),
        batch_size=check_int(s["batch_size"], "batch_size", minimum=1),
        check_every=check_int(s["check_every"], "check_every", minimum=1),
        lr=check_number(s["lr"], "lr", minimum=0.0, min_inclusive=False),
        init_cost=check_number(s["init_cost"], "init_cost", minimum=0.0, min_inclusive=False),
        cost_multiplier=check_number(s["cost_multiplier"], "cost_multiplier", minimum=1.0, min_inclusive=False),
        patience=check_int(s["patience"], "patience", minimum=1),
        early_stop_patience=check_int(s["early_stop_patience"], "early_stop_patience", minimum=1),
        attack_success=check_number(s["attack_success"], "attack_success", 0.0, 1.0, min_inclusive=False),
        noise_floor=check_number(s["noise_floor"], "noise_floor", minimum=0.0),
        held_out=check_number(s["held_out"], "held_out", 0.0, 1.0, max_inclusive=False),
        num_noise_samples=check_int(s["num_noise_samples"], "num_noise_samples", minimum=2),
        value_range=check_value_range(s["value_range"]),
        class_maps=check_bool(s["class_maps"], "class_maps"),
        per_image=check_int(s["per_image"], "per_image", minimum=0),
        per_image_steps=check_int(s["per_image_steps"], "per_image_steps", minimum=1),
        success_confidence=None if s["success_confidence"] is None else check_number(
            s["success_confidence"], "success_confidence", 0.0, 1.0, min_inclusive=False, max_inclusive=False),
        position_check=check_bool(s["position_check"], "position_check"),
    )


def smooth_noise(n: int, shape, generator: torch.Generator) -> Tensor:
    """``n`` smooth random images in [0, 1] (InputAgnosticSaliency's ``"smooth"`` samples)."""
    return smooth(0.0, 1.0)(n, tuple(shape), generator)


def _progress(show: bool, total: int):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scan_for_backdoor (schedule rounds)")


def _round_steps(round_: int, n_steps: int, check_every: int) -> int:
    """Steps in schedule round ``round_`` (from 1): ``check_every``, the last round
    only what is left, so that exactly ``n_steps`` steps run in all."""
    return min(check_every, n_steps - (round_ - 1) * check_every)


def _batch_stream(inputs: Tensor, size: int, generator: torch.Generator):
    """Endless mini-batches: passes over ``inputs`` in a fresh seeded order each time."""
    while True:
        order = torch.randperm(inputs.shape[0], generator=generator).to(inputs.device)
        for i in range(0, inputs.shape[0] - size + 1 if inputs.shape[0] >= size else 1, size):
            yield inputs[order[i:i + size]]


def _base_classes(model: nn.Module, inputs: Tensor, classes: Sequence[int]) -> list:
    """Classes the model gives most unstamped ``inputs`` to: reaching them proves nothing."""
    with torch.no_grad():
        predicted = checked_logits(model, inputs, "scan_for_backdoor", "the unstamped noise samples").argmax(1)
    return [c for c in classes if float((predicted == c).float().mean()) >= 0.5]


def _per_image_cost(model, classes, inputs, opts, cell, shape, value_range, generator, device, dtype):
    """Per class, the median l1 of stamps made for one image each (images of the class left out).

    Reaching a class with a stamp for one image is cheap for a class the
    model reaches easily anyway; a backdoor makes the *shared* stamp about
    as cheap as these, natural ease does not.
    """
    m = min(opts["per_image"], inputs.shape[0])
    images = inputs[torch.randperm(inputs.shape[0], generator=generator)[:m].to(inputs.device)]
    with torch.no_grad():
        predicted = checked_logits(model, images, "scan_for_backdoor", "the per-image inputs").argmax(1).cpu()
    rounds = math.ceil(opts["per_image_steps"] / opts["check_every"])
    found = reverse_triggers(
        model, classes, lambda round_: [images] * _round_steps(round_, opts["per_image_steps"], opts["check_every"]),
        shape, cell, rounds, opts["lr"],
        opts["init_cost"], opts["cost_multiplier"], opts["patience"], opts["early_stop_patience"],
        opts["attack_success"], value_range, generator, device, dtype, per_image=images,
    )
    area = float(shape[1] * shape[2])
    l1 = torch.where(torch.isfinite(found.mask_l1), found.mask_l1, torch.full_like(found.mask_l1, area))
    l1 = l1.view(len(classes), m)
    costs = []
    for k, c in enumerate(classes):
        others = l1[k][predicted != c]
        costs.append(float(others.log().median().exp()) if others.numel() else area)
    return torch.tensor(costs), found.evaluations + m


def _position_specificity(model: nn.Module, inputs: Tensor, classes: Sequence[int], masks: Tensor,
                          patterns: Tensor, success: Tensor, shift: int) -> Tensor:
    """Mean success of each class's stamp moved by ``shift`` pixels in the four
    directions (circularly), over its success in place; at most 1, and 1 for
    a stamp that flips nothing in place (nothing to lose). A moved success
    of 0 counts as half an input, the resolution of the measure, so that
    the weighted norm stays positive (its log is taken)."""
    moved = torch.stack([
        _success(model, inputs, classes, masks.roll(offset, dims), patterns.roll(offset, dims))
        for offset, dims in ((shift, -2), (-shift, -2), (shift, -1), (-shift, -1))
    ]).mean(0)
    ratio = moved.clamp_min(0.5 / inputs.shape[0]) / success.clamp_min(1e-12)
    return torch.where(success > 0, ratio.clamp(max=1.0), torch.ones_like(ratio))


def _success(model: nn.Module, inputs: Tensor, classes: Sequence[int], masks: Tensor, patterns: Tensor) -> Tensor:
    """Share of ``inputs`` each class's stamp flips to the class."""
    rates = []
    with torch.no_grad():
        for k, c in enumerate(classes):
            out = checked_logits(model, stamp(inputs, masks[k:k + 1], patterns[k:k + 1])[0], "scan_for_backdoor",
                                 f"the suspected trigger of class {c}")
            rates.append(float((out.argmax(1) == c).float().mean()))
    return torch.tensor(rates)


def _anomaly(norms: Tensor, classes: Sequence[int], untestable: Sequence[int], noise_floor: float) -> Tensor:
    """Low-side MAD index of the log norms; untestable classes get 0 and are no reference."""
    testable = torch.tensor([c not in untestable for c in classes])
    index = torch.zeros(len(classes), dtype=torch.float32)  # not the default dtype, which a user may have set
    if int(testable.sum()) < 3:
        return index
    index[testable] = low_side_index(norms[testable].double().log(), min_scale=noise_floor).float()
    return index
