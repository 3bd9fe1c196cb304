"""Private parts of :mod:`captum_global.attr.classwise`: the result type,
argument checks, initialisation, image priors and the optimiser schedule.
The method itself (targets, objective, optimisation loop) stays in
``classwise.py``; this module only keeps that file readable top to bottom."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from captum_global.attr._gradient_matching import DISTANCES, ClassGradients

_PRIORS = ("tv", "l2")
_NOISE = 0.1  # half-width of the "noise" initialisation, as a share of value_range


@dataclass
class ClassWiseResult:
    """What :meth:`ClassWiseSynthesis.attribute` returns.

    Attributes:
        images: ``[C, n, *input_shape]`` synthetic inputs, row ``i`` for ``classes[i]``.
        classes: the class ids, in the order of ``images``.
        initial_images: the starting point of ``images`` (noise or real examples).
        loss_history: ``[iterations]`` total matching distance (all classes
            and weight points, augmented inputs if ``augment``) before each step.
        initial_distance, final_distance: ``[C]`` matching distance of each
            class's set at the start and at the end (no augmentation).
        confidence: ``[C, n]`` the model's softmax probability of its class
            on each synthetic input.
        predictions: ``[C, n]`` the model's predicted class on each synthetic input.
        counts: ``[C]`` number of real examples of each class that were matched.
    """

    images: Tensor
    classes: Tuple[int, ...]
    initial_images: Tensor
    loss_history: Tensor
    initial_distance: Tensor
    final_distance: Tensor
    confidence: Tensor
    predictions: Tensor
    counts: Tensor

    def as_dict(self) -> Dict[int, Tensor]:
        """``{class id: [n, *input_shape] synthetic inputs}``."""
        return {c: self.images[i] for i, c in enumerate(self.classes)}

    def __getitem__(self, cls: int) -> Tensor:
        """The synthetic set of class id ``cls`` (not of row ``cls``)."""
        if cls not in self.classes:
            raise KeyError(f"class {cls!r} was not synthesised; classes are {list(self.classes)}")
        return self.images[self.classes.index(cls)]


def _check_options(optimizer, lr, init, distance, images_per_class, iterations, priors,
                   value_range, augment) -> Dict[str, float]:
    """Validate the options of ``attribute``; returns ``priors`` as a dict."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if lr is not None and not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if init not in ("noise", "real"):
        raise ValueError(f"init must be 'noise' or 'real', got {init!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    for name, value in (("images_per_class", images_per_class), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "images_per_class" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'images_per_class' else 'non-negative'} integer, got {value!r}")
    priors = dict(priors or {})
    unknown = set(priors) - set(_PRIORS)
    if unknown:
        raise ValueError(f"priors takes the keys {_PRIORS}, got {sorted(unknown)}")
    if value_range is not None and not value_range[0] < value_range[1]:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a callable on a batch of inputs, got {type(augment).__name__}")
    return priors


def _optimiser(kind: str, params: List[Tensor], lr: Optional[float], momentum: float,
               iterations: int) -> Callable[[], None]:
    """One optimiser step followed by one step of a cosine learning-rate decay."""
    if kind == "adam":
        opt = torch.optim.Adam(params, lr=0.003 if lr is None else lr)
    else:
        opt = torch.optim.SGD(params, lr=0.1 if lr is None else lr, momentum=momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))

    def step() -> None:
        opt.step()
        schedule.step()

    return step


def _show(show_progress: bool) -> bool:
    dist = torch.distributed
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return bool(show_progress) and rank0


def _check_data(data) -> None:
    if isinstance(data, (Tensor, tuple, list)):
        raise TypeError(
            "data must be a Dataset yielding (input, label), a DataLoader or ClassGradients; got "
            f"{type(data).__name__}. ClassWiseSynthesis is a global explanation of a whole "
            "dataset, not a per-example attribution: it cannot be wrapped by NoiseTunnel and "
            "per-input metrics do not apply (use TensorDataset(inputs, labels) for tensors)"
        )


def _format_classes(classes) -> Optional[Tuple[int, ...]]:
    if classes is None:
        return None
    if isinstance(classes, Tensor):
        classes = classes.flatten().tolist()
    elif not isinstance(classes, (list, tuple, range)):
        classes = [classes]
    try:
        return tuple(operator.index(c) for c in classes)
    except TypeError:
        raise ValueError(f"classes must hold integer class ids, got {list(classes)!r}") from None


def _select(rg: ClassGradients, classes, parameters, checkpoints, keep: int) -> ClassGradients:
    """Reuse precomputed targets, restricted to ``classes``."""
    if parameters is not None or checkpoints is not None:
        raise ValueError("parameters and checkpoints are fixed by the precomputed ClassGradients; pass None")
    classes = _format_classes(classes)
    if classes is None:
        classes = rg.classes
    missing = [c for c in classes if c not in rg.classes]
    if missing:
        raise ValueError(f"classes {missing} are not among the precomputed classes {list(rg.classes)}")
    if keep and any(len(rg.real_examples.get(c, ())) < keep for c in classes):
        raise ValueError("init='real' needs ClassGradients computed with real_examples >= images_per_class")
    rows = [rg.classes.index(c) for c in classes]
    return ClassGradients(
        tuple(classes), rg.names, rg.points, [[per_point[i] for i in rows] for per_point in rg.grads],
        rg.counts[rows], rg.num_outputs, rg.input_shape, rg.dtype, rg.real_examples,
    )


def _initial_images(rg: ClassGradients, n: int, init: str, value_range, seed: int) -> Tensor:
    if init == "real":
        short = {c: len(rg.real_examples.get(c, ())) for c in rg.classes if len(rg.real_examples.get(c, ())) < n}
        if short:
            raise ValueError(
                f"init='real' needs images_per_class={n} real examples per class; classes "
                f"{sorted(short)} have only {sorted(short.values())}"
            )
        return torch.stack([rg.real_examples[c][:n] for c in rg.classes]).to(rg.dtype)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(rg.classes), n) + tuple(rg.input_shape)
    noise = 2 * torch.rand(shape, generator=gen, dtype=rg.dtype) - 1
    # Faint noise around mid-grey: full-range noise sits far from any natural
    # image and the matching stalls there (measured in docs/classwise.md).
    if value_range is None:
        return _NOISE * noise
    low, high = value_range
    return (low + high) / 2 + _NOISE * (high - low) * noise


def _prior(x: Tensor, priors: Dict[str, float], value_range) -> Tensor:
    """Image priors, each a per-input mean summed over the set."""
    total = x.new_zeros(())
    if priors.get("tv"):
        if x.dim() < 3:
            raise ValueError("priors['tv'] needs inputs with at least two spatial dimensions")
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1) + \
             (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        total = total + priors["tv"] * tv.sum()
    if priors.get("l2"):
        centre = 0.0 if value_range is None else (value_range[0] + value_range[1]) / 2
        total = total + priors["l2"] * ((x - centre) ** 2).flatten(1).mean(1).sum()
    return total
