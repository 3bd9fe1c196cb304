"""Pieces both backdoor scans share: argument checks, stamping, anomaly flags, localisation."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numbers

import numpy as np
import torch
from torch import Tensor, nn

from captum_global._checks import (check_finite_output, check_int, check_model_output, check_model_weights,
                                  check_number, check_tensor)
from captum_global._model_state import preserved_model_state
from captum_global._targets import parse_target
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics import mad_anomaly_index, trigger_energy_share, trigger_iou

# The smallest number of classes a median-absolute-deviation test over
# classes makes sense for (with two, both sit at the same distance from
# their median).
MIN_CLASSES = 3


def count_classes(model: nn.Module, example: Tensor) -> int:
    """Number of classes of ``model``, from one forward pass on ``example[:1]``; first refuses
    weights the scans cannot differentiate through (meta, or made under ``torch.inference_mode()``)."""
    check_model_weights(model, "model", autograd=True)
    with preserved_model_state(model), torch.no_grad():
        # a copy: a model that works in place on its input must not change the caller's tensor
        out = check_model_output(model(example[:1].clone()), "model")
    if out.dim() != 2:
        raise InvalidArgumentError(f"model must return [batch, classes] scores, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def checked_logits(model: nn.Module, inputs: Tensor, what: str, where: str) -> Tensor:
    """``model(inputs)``: one ``[N, classes]`` tensor of finite scores, else a clear error
    (:class:`~captum_global.errors.NonFiniteOutputError` for NaN or infinity)."""
    out = check_model_output(model(inputs), "model")
    return check_finite_output(out.detach(), what, where)


def check_label(target: Any, num_classes: int) -> int:
    """One class index (an int, a NumPy integer or a one-element integer tensor) within the model's output."""
    if isinstance(target, Tensor) and target.numel() == 1 and not target.is_floating_point() \
            and not target.is_complex() and target.dtype != torch.bool:
        target = int(target.reshape(-1)[0])
    label = check_int(target, "target")
    # Captum's rule, from the one target parser: negative labels count from the end
    return parse_target(label, 1, "target").checked((1, num_classes)).classes()[0]


def check_images(value: Any, argument: str, min_examples: int = 1) -> Tensor:
    """A floating ``[N, C, H, W]`` batch of finite images with at least ``min_examples`` rows."""
    value = check_tensor(value, argument, dims=(4,), floating=True)
    if value.shape[0] < min_examples:
        raise InvalidArgumentError(
            f"{argument} must hold at least {min_examples} example(s), got shape {tuple(value.shape)}"
        )
    return value.detach()


def check_classes(classes: Any, num_classes: int) -> List[int]:
    """Distinct integer class indices within the model's output, at least ``MIN_CLASSES``."""
    if classes is None:
        classes = list(range(num_classes))
    elif isinstance(classes, Tensor):
        if classes.is_floating_point() or classes.dtype == torch.bool or classes.dim() != 1:
            raise InvalidArgumentTypeError(
                f"classes must be a 1-D integer tensor or a sequence of ints, got dtype {classes.dtype}, "
                f"shape {tuple(classes.shape)}"
            )
        classes = classes.tolist()
    elif isinstance(classes, np.ndarray):
        classes = classes.tolist() if np.issubdtype(classes.dtype, np.integer) else list(classes)
    if not isinstance(classes, (list, tuple, range)):
        raise InvalidArgumentTypeError(f"classes must be a sequence of ints, got {type(classes).__name__}")
    bad = [c for c in classes
           if isinstance(c, (bool, np.bool_)) or not isinstance(c, (numbers.Integral, np.integer))]
    if bad:
        raise InvalidArgumentTypeError(f"classes must hold ints, got {bad[0]!r} ({type(bad[0]).__name__})")
    classes = [int(c) for c in classes]
    out_of_range = [c for c in classes if not -num_classes <= c < num_classes]
    if out_of_range:
        raise InvalidArgumentError(
            f"classes {out_of_range} out of range: the model has {num_classes} classes "
            f"(0..{num_classes - 1}, or -{num_classes}..-1 counted from the end as in a target)"
        )
    # negative indices count from the end, as Captum's targets do (the one parser resolves them)
    classes = parse_target(classes, len(classes), "classes").checked((len(classes), num_classes)).classes()
    if len(set(classes)) != len(classes):
        dupes = sorted({c for c in classes if classes.count(c) > 1})
        raise InvalidArgumentError(f"classes must not repeat a class, got {dupes} more than once")
    if len(classes) < MIN_CLASSES:
        raise InvalidArgumentError(
            f"classes must hold at least {MIN_CLASSES} classes for an anomaly index over classes, got {classes}"
        )
    return classes


def check_threshold(threshold: Any) -> float:
    return check_number(threshold, "threshold", minimum=0.0, min_inclusive=False)


def check_trigger_mask(trigger_mask: Any, height: int, width: int, argument: str = "trigger_mask") -> Optional[Tensor]:
    """``None`` or a bool ``[H, W]`` region matching the images."""
    if trigger_mask is None:
        return None
    mask = check_tensor(trigger_mask, argument, dims=(2,))
    if tuple(mask.shape) != (height, width):
        raise InvalidArgumentError(
            f"{argument} must have the images' spatial shape ({height}, {width}), got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise InvalidArgumentError(f"{argument} must be a bool mask (or hold only 0 and 1)")
        mask = mask != 0
    if not bool(mask.any()):
        raise InvalidArgumentError(f"{argument} must mark at least one pixel")
    return mask.cpu()


def stamp(images: Tensor, masks: Tensor, patterns: Tensor) -> Tensor:
    """``(1 - m) * x + m * p`` for every class and image: ``[K, B, C, H, W]``.

    ``images`` ``[B, C, H, W]``, ``masks`` ``[K, 1, H, W]`` (or ``[K, H, W]``),
    ``patterns`` ``[K, C, H, W]``.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    return (1 - masks).unsqueeze(1) * images.unsqueeze(0) + (masks * patterns).unsqueeze(1)


def low_side_index(values: Tensor, min_scale: float = 0.0) -> Tensor:
    """MAD anomaly index of ``values`` (scale floored at ``min_scale``), kept only
    for values below the median (0 elsewhere)."""
    values = values if values.is_floating_point() else values.float()
    index = mad_anomaly_index(values, min_scale=min_scale)
    return torch.where(values < values.quantile(0.5), index, torch.zeros_like(index))


def flagged_classes(classes: Sequence[int], index: Tensor, threshold: float) -> List[int]:
    return [c for c, i in zip(classes, index.tolist()) if i > threshold]


def localisation(masks: Tensor, trigger_mask: Optional[Tensor]) -> Dict[str, Tensor]:
    """Energy share and top-pixel IoU of ``[K, H, W]`` suspected masks on the planted region."""
    if trigger_mask is None:
        return {}
    masks = masks.detach().float().cpu()
    return {
        "energy_share": trigger_energy_share(masks, trigger_mask, sign="absolute", normalize=False),
        "iou": trigger_iou(masks, trigger_mask),
    }


def split_inputs(inputs: Tensor, generator: torch.Generator, held_out: float) -> Tuple[Tensor, Tensor]:
    """A seeded split of ``inputs`` into (optimisation, evaluation) rows."""
    n = inputs.shape[0]
    n_eval = min(n - 1, max(1, int(round(held_out * n))))
    order = torch.randperm(n, generator=generator)
    return inputs[order[n_eval:]], inputs[order[:n_eval]]
