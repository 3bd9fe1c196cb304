"""Neural Cleanse (Wang et al., IEEE S&P 2019): reverse-engineer a trigger per label.

For every label ``t`` a mask ``m`` (``H x W``, in ``[0, 1]``) and a pattern
``p`` (``C x H x W``, in the value range) are optimised on clean inputs so
that the stamped inputs ``(1 - m) * x + m * p`` are classified as ``t``,
with an l1 penalty on the mask whose weight adapts (Neural Cleanse's cost
schedule). The smallest mask that reaches the attack-success target is the
label's reversed trigger; a label whose mask is anomalously small (median
absolute deviation over labels) is flagged.
"""
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global._checks import (
    check_bool,
    check_finite_output,
    check_int,
    check_module,
    check_number,
    check_value_range,
)
from captum_global._model_state import autograd_on, preserved_model_state
from captum_global._seeding import check_seed, draw_uniform, make_generator
from captum_global.backdoor._common import (
    check_classes,
    check_images,
    check_label,
    checked_logits,
    check_threshold,
    check_trigger_mask,
    count_classes,
    flagged_classes,
    localisation,
    low_side_index,
    stamp,
)
from captum_global.backdoor.result import BackdoorScan
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["NeuralCleanse", "neural_cleanse"]

# tanh keeps values strictly inside (0, 1): atanh of the initial values stays finite.
_TANH_SCALE = 2 - 1e-6

DEFAULTS: Dict[str, Any] = dict(
    n_epochs=50,
    batch_size=32,
    lr=0.1,
    betas=(0.5, 0.9),
    init_cost=1e-3,
    cost_multiplier=1.5,
    patience=5,
    attack_success=0.99,
    early_stop_patience=25,
    value_range=(0.0, 1.0),
)


class NeuralCleanse:
    r"""Neural Cleanse: per-label trigger reverse engineering and a MAD test over labels.

    A reconstruction of Wang et al., "Neural Cleanse: Identifying and
    Mitigating Backdoor Attacks in Neural Networks" (IEEE S&P 2019), with a
    Captum-style interface: the constructor takes the model, :meth:`attribute`
    reverses one label's trigger, :meth:`scan` runs every label and the
    outlier test. The model is never changed (eval mode during the run;
    flags restored), randomness comes from ``seed`` alone.

    Per label ``t``::

        mask = (tanh(a) / s + 1/2),  pattern = lo + (hi - lo) (tanh(b) / s + 1/2)
        loss = CE(f((1 - mask) x + mask * pattern), t) + cost * |mask|_1
        Adam(lr, betas) over epochs of mini-batches of the clean inputs
        cost: 0 until the epoch's attack success reaches ``attack_success`` for
              ``patience`` epochs, then ``init_cost``; afterwards multiplied by
              ``cost_multiplier`` after ``patience`` successful epochs in a row,
              divided by ``cost_multiplier ** 1.5`` after ``patience`` failed ones
        keep the smallest |mask|_1 of an epoch whose success reached the target;
        stop early once it has not improved for ``early_stop_patience`` epochs
        (after the cost has gone both up and down), or after ``n_epochs``

    Then the anomaly index ``|l1 - median| / (1.4826 * MAD)`` over labels;
    a label below the median with an index above ``threshold`` is flagged.
    """

    def __init__(self, forward_func: nn.Module) -> None:
        r"""
        Args:
            forward_func (nn.Module): the classifier, returning ``[batch, classes]``
                        scores (logits).
        """
        self.forward_func = check_module(forward_func, "model", "Neural Cleanse runs it in eval mode")

    @classmethod
    def get_name(cls) -> str:
        return "Neural Cleanse"

    def attribute(
        self,
        clean_inputs: Tensor,
        target: int,
        seed: Optional[int] = 0,
        show_progress: bool = False,
        **options: Any,
    ) -> Tuple[Tensor, Tensor, float, float]:
        r"""Reverse-engineer the smallest trigger that flips ``clean_inputs`` to ``target``.

        Args:
            clean_inputs (Tensor): ``[N, C, H, W]`` clean images.
            target (int): the label (a NumPy integer or a one-element integer tensor is accepted;
                a negative label counts from the end, as in Captum).
            seed (int, optional): seed of the initialisation and batch order.
            show_progress (bool): a progress bar over the epochs.
            **options: ``n_epochs`` (50), ``batch_size`` (32), ``lr`` (0.1),
                        ``betas`` ((0.5, 0.9)), ``init_cost`` (1e-3),
                        ``cost_multiplier`` (1.5), ``patience`` (5),
                        ``attack_success`` (0.99), ``early_stop_patience`` (25),
                        ``value_range`` ((0, 1)).

        Returns:
            ``(mask [H, W], pattern [C, H, W], mask_l1, attack_success)``:
            the best mask and pattern (the last ones if the target success was
            never reached, with ``mask_l1`` then ``inf``) and the share of
            ``clean_inputs`` the pair flips to ``target``.

        Examples::

            >>> import torch
            >>> from torch import nn
            >>> from captum_global.backdoor import NeuralCleanse
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            ...                     nn.Flatten(), nn.Linear(4, 3))
            >>> mask, pattern, l1, success = NeuralCleanse(net).attribute(
            ...     torch.rand(8, 3, 12, 12), target=1, n_epochs=2, batch_size=4)
            >>> mask.shape, pattern.shape
            (torch.Size([12, 12]), torch.Size([3, 12, 12]))
        """
        clean_inputs = check_images(clean_inputs, "clean_inputs")
        settings = _check_options(options)
        num_classes = count_classes(self.forward_func, clean_inputs)
        target = check_label(target, num_classes)
        generator = make_generator(check_seed(seed))
        # the masks and patterns are learnt also under the caller's torch.inference_mode()
        with preserved_model_state(self.forward_func, freeze_parameters=True), autograd_on():
            result = _reverse(self.forward_func, clean_inputs, target, generator, settings,
                              check_bool(show_progress, "show_progress"))
        return result[0], result[1], result[2], result[3]

    def scan(
        self,
        clean_inputs: Tensor,
        classes: Optional[Sequence[int]] = None,
        trigger_mask: Optional[Tensor] = None,
        threshold: float = 2.0,
        seed: Optional[int] = 0,
        show_progress: bool = False,
        **options: Any,
    ) -> BackdoorScan:
        r"""Reverse every label's trigger and flag the anomalously small ones.

        Args:
            clean_inputs (Tensor): ``[N, C, H, W]`` clean images (Neural
                        Cleanse needs them; a few per class suffice).
            classes (sequence of int, optional): labels to scan (distinct, at
                        least 3; negative indices count from the end); default
                        every class of the model.
            trigger_mask (Tensor, optional): bool ``[H, W]`` region of a
                        known planted trigger, only to report localisation.
            threshold (float): anomaly-index cut-off (> 0). Default: 2.0
            seed (int, optional): seed; label ``k`` uses ``seed + k``.
            show_progress (bool): a progress bar over the labels.
            **options: as in :meth:`attribute`.

        Returns:
            :class:`BackdoorScan` with ``statistics["mask_l1"]``.
        """
        start = time.perf_counter()
        clean_inputs = check_images(clean_inputs, "clean_inputs")
        settings = _check_options(options)
        threshold = check_threshold(threshold)
        seed = check_seed(seed)
        show_progress = check_bool(show_progress, "show_progress")
        num_classes = count_classes(self.forward_func, clean_inputs)
        classes = check_classes(classes, num_classes)
        region = check_trigger_mask(trigger_mask, *clean_inputs.shape[-2:])
        masks, patterns, norms, success, evaluations = [], [], [], [], 0
        labels = classes
        if show_progress:
            from tqdm.auto import tqdm

            labels = tqdm(classes, desc=self.get_name())
        # the masks and patterns are learnt also under the caller's torch.inference_mode()
        with preserved_model_state(self.forward_func, freeze_parameters=True), autograd_on():
            for k, label in enumerate(labels):
                mask, pattern, l1, rate, spent = _reverse(
                    self.forward_func, clean_inputs, label, make_generator(seed + k), settings, False)
                masks.append(mask)
                patterns.append(pattern)
                norms.append(l1)
                success.append(rate)
                evaluations += spent
        norms_t = torch.tensor(norms, dtype=torch.float64)
        # A label that never reached the success target gets the largest finite
        # norm seen (or the image area): it is not easy to reach.
        area = float(clean_inputs.shape[-1] * clean_inputs.shape[-2])
        finite = norms_t[torch.isfinite(norms_t)]
        ceiling = max(area, float(finite.max())) if finite.numel() else area
        norms_t = torch.where(torch.isfinite(norms_t), norms_t, torch.full_like(norms_t, ceiling)).float()
        index = low_side_index(norms_t)
        masks_t = torch.stack(masks)
        return BackdoorScan(
            method="neural cleanse", classes=classes, statistics={"mask_l1": norms_t}, anomaly_index=index,
            flagged=flagged_classes(classes, index, threshold), threshold=threshold,
            maps=masks_t.unsqueeze(1).expand(-1, clean_inputs.shape[1], -1, -1).contiguous(),
            trigger_masks=masks_t, trigger_patterns=torch.stack(patterns),
            attack_success=torch.tensor(success), localisation=localisation(masks_t, region),
            num_evaluations=evaluations, seconds=time.perf_counter() - start,
            settings={**{k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
                      "seed": seed, "num_clean_inputs": int(clean_inputs.shape[0])},
        )


def neural_cleanse(
    model: nn.Module,
    clean_inputs: Tensor,
    classes: Optional[Sequence[int]] = None,
    trigger_mask: Optional[Tensor] = None,
    threshold: float = 2.0,
    seed: Optional[int] = 0,
    show_progress: bool = False,
    **options: Any,
) -> BackdoorScan:
    r"""Scan ``model`` with Neural Cleanse; see :meth:`NeuralCleanse.scan` for the arguments.

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.backdoor import neural_cleanse
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> scan = neural_cleanse(net, torch.rand(8, 3, 12, 12), n_epochs=2, batch_size=4)
        >>> scan.classes, scan.trigger_masks.shape
        ([0, 1, 2], torch.Size([3, 12, 12]))
    """
    return NeuralCleanse(model).scan(clean_inputs, classes=classes, trigger_mask=trigger_mask,
                                     threshold=threshold, seed=seed, show_progress=show_progress, **options)


def _check_options(options: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise InvalidArgumentTypeError(f"unknown option(s) {unknown}; Neural Cleanse takes {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **options}
    betas = s["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise InvalidArgumentError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return dict(
        n_epochs=check_int(s["n_epochs"], "n_epochs", minimum=1),
        batch_size=check_int(s["batch_size"], "batch_size", minimum=1),
        lr=check_number(s["lr"], "lr", minimum=0.0, min_inclusive=False),
        betas=tuple(check_number(b, f"betas[{i}]", 0.0, 1.0, max_inclusive=False) for i, b in enumerate(betas)),
        init_cost=check_number(s["init_cost"], "init_cost", minimum=0.0, min_inclusive=False),
        cost_multiplier=check_number(s["cost_multiplier"], "cost_multiplier", minimum=1.0, min_inclusive=False),
        patience=check_int(s["patience"], "patience", minimum=1),
        attack_success=check_number(s["attack_success"], "attack_success", 0.0, 1.0, min_inclusive=False),
        early_stop_patience=check_int(s["early_stop_patience"], "early_stop_patience", minimum=1),
        value_range=check_value_range(s["value_range"]),
    )


def _reverse(model, inputs: Tensor, label: int, generator: torch.Generator, s: Dict[str, Any],
             show_progress: bool) -> Tuple[Tensor, Tensor, float, float, int]:
    """One label: (best mask, best pattern, best l1 or inf, attack success, evaluations)."""
    n, c, h, w = inputs.shape
    lo, hi = s["value_range"]
    # Random start in (0, 1), as the reference implementation.
    mask_init = draw_uniform((1, 1, h, w), generator) * 0.98 + 0.01
    pattern_init = draw_uniform((1, c, h, w), generator) * 0.98 + 0.01
    mask_free = torch.atanh((mask_init - 0.5) * _TANH_SCALE).to(inputs).requires_grad_(True)
    pattern_free = torch.atanh((pattern_init - 0.5) * _TANH_SCALE).to(inputs).requires_grad_(True)
    optimiser = torch.optim.Adam([mask_free, pattern_free], lr=s["lr"], betas=s["betas"])

    def current() -> Tuple[Tensor, Tensor]:
        mask = torch.tanh(mask_free) / _TANH_SCALE + 0.5
        pattern = lo + (hi - lo) * (torch.tanh(pattern_free) / _TANH_SCALE + 0.5)
        return mask, pattern

    cost, cost_set, up, down, went_up, went_down = 0.0, 0, 0, 0, False, False
    best_l1, best, stale, early_best, evaluations = float("inf"), None, 0, float("inf"), 0
    epochs = range(s["n_epochs"])
    if show_progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=f"Neural Cleanse, label {label}")
    for epoch in epochs:
        order = torch.randperm(n, generator=generator).to(inputs.device)
        hits, seen, l1_sum, batches = 0, 0, 0.0, 0
        for start in range(0, n, s["batch_size"]):
            x = inputs[order[start:start + s["batch_size"]]]
            with torch.enable_grad():
                mask, pattern = current()
                logits = model(stamp(x, mask[:, 0], pattern)[0])
                check_finite_output(logits.detach(), "Neural Cleanse", f"label {label}, epoch {epoch + 1}")
                labels = torch.full((x.shape[0],), label, device=logits.device)
                l1 = mask.sum()
                loss = F.cross_entropy(logits, labels) + cost * l1
                optimiser.zero_grad()
                loss.backward()
            optimiser.step()
            evaluations += x.shape[0]
            hits += int((logits.argmax(1) == labels).sum())
            seen += x.shape[0]
            l1_sum += float(l1.detach())
            batches += 1
        rate, mean_l1 = hits / seen, l1_sum / batches
        if rate >= s["attack_success"] and mean_l1 < best_l1:
            best_l1 = mean_l1
            mask, pattern = current()
            best = (mask.detach()[0, 0].clone(), pattern.detach()[0].clone())
        # early stop: the best norm has not improved (by any amount) for a while
        if best_l1 < float("inf"):
            stale = stale + 1 if best_l1 >= early_best else 0
            early_best = min(early_best, best_l1)
            if went_up and went_down and stale >= s["early_stop_patience"]:
                break
        # cost schedule
        if cost == 0.0:
            cost_set = cost_set + 1 if rate >= s["attack_success"] else 0
            if cost_set >= s["patience"]:
                cost, up, down = s["init_cost"], 0, 0
            continue
        up, down = (up + 1, 0) if rate >= s["attack_success"] else (0, down + 1)
        if up >= s["patience"]:
            cost, up, went_up = cost * s["cost_multiplier"], 0, True
        elif down >= s["patience"]:
            cost, down, went_down = cost / s["cost_multiplier"] ** 1.5, 0, True
    if best is None:
        mask, pattern = current()
        best = (mask.detach()[0, 0].clone(), pattern.detach()[0].clone())
    with torch.no_grad():
        rate = 0.0
        for start in range(0, n, s["batch_size"]):
            x = inputs[start:start + s["batch_size"]]
            out = checked_logits(model, stamp(x, best[0][None], best[1][None])[0], "Neural Cleanse",
                                 f"label {label}, the reversed trigger's attack success")
            rate += float((out.argmax(1) == label).sum())
        evaluations += n
    return best[0], best[1], best_l1, rate / n, evaluations
