"""Private parts of :mod:`captum_global.attr.classwise`: argument checks,
initialisation, image priors, the optimiser schedule and the gradient-matching
loop. The public face (arguments, result) stays in ``classwise.py``; the
trajectory-matching loop is in ``_trajectory_matching.py``."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_global._checks import (
    check_bool,
    check_choice,
    check_finite_output,
    check_int,
    check_model_output,
    check_number,
    check_tensor,
    check_value_range,
)
from captum_global.attr._gradient_matching import DISTANCES, class_gradient, forward_on, gradient_distance
from captum_global.attr._image_parametrization import PARAMETRIZATIONS, Parametrization
from captum_global.attr.classwise_types import ClassGradients
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

_PRIORS = ("tv", "l2", "class")
_NOISE = 0.1  # half-width of the "noise" initialisation, as a share of value_range
MODES = ("gradient", "trajectory")
NO_TRAJECTORY = ("no trajectory was given: gradients were matched at the model's final weights only; "
                 "pass checkpoints= (weights saved during training) to imitate the training run")


def note(rg: ClassGradients) -> str:
    """What a reader of the result must know about the weight points used."""
    if not rg.trajectory_given:
        return NO_TRAJECTORY
    if len(rg.points) == 1:
        return ("one checkpoint was given: gradients were matched there only, not along a training run; "
                "pass the weights saved during training, in order, to imitate the run")
    return ""


def check_model(model: nn.Module) -> None:
    """The weights must exist and be float32/float64 (second derivatives in
    half precision underflow, and CPU kernels lack them)."""
    params = [p for p in model.parameters()]
    if not params:
        raise InvalidArgumentError(
            "model has no parameters: class-wise synthesis matches training gradients in the "
            "model's weights, so it needs a model with weights"
        )
    low = sorted({str(p.dtype) for p in params if p.dtype in (torch.float16, torch.bfloat16)})
    if low:
        raise InvalidArgumentTypeError(
            f"model has {', '.join(low)} weights; class-wise synthesis differentiates the training "
            "gradient a second time, which half precision does not hold: pass model.float()"
        )
    if any(not p.is_floating_point() for p in params):
        raise InvalidArgumentTypeError("model must have floating point weights")


def check_options(optimizer, lr, init, distance, images_per_class, iterations, priors,
                  value_range, augment, momentum, mode, parametrization, match) -> Tuple[Dict[str, float], Optional[Tuple[float, float]]]:
    """Validate the options of ``attribute``; returns ``(priors, value_range)``."""
    check_choice(match, "match", ("class", "clusters"))
    check_choice(optimizer, "optimizer", ("adam", "sgd"))
    check_choice(parametrization, "parametrization", PARAMETRIZATIONS)
    if lr is not None:
        check_number(lr, "lr", 0.0, min_inclusive=False)
    check_number(momentum, "momentum", 0.0, 1.0, max_inclusive=False)
    if not isinstance(init, Tensor):
        check_choice(init, "init", ("noise", "real"))
    check_choice(distance, "distance", DISTANCES)
    check_choice(mode, "mode", MODES)
    check_int(images_per_class, "images_per_class", minimum=1)
    check_int(iterations, "iterations", minimum=0)
    if priors is not None and not isinstance(priors, dict):
        raise InvalidArgumentTypeError(f"priors must be a dict like {{'tv': 0.1}}, got {type(priors).__name__}")
    priors = dict(priors or {})
    unknown = set(priors) - set(_PRIORS)
    if unknown:
        raise InvalidArgumentError(f"priors takes the keys {_PRIORS}, got {sorted(unknown)}")
    priors = {k: check_number(v, f"priors[{k!r}]", 0.0) for k, v in priors.items()}
    value_range = check_value_range(value_range, "value_range")
    if augment is not None and not callable(augment):
        raise InvalidArgumentTypeError(f"augment must be a callable on a batch of inputs, got {type(augment).__name__}")
    return priors, value_range


#: Options that only one mode reads (``momentum`` only the SGD optimiser of gradient mode).
GRADIENT_ONLY = ("optimizer", "momentum", "checkpoints_per_iteration", "match")  # a student trains on the whole set
TRAJECTORY_ONLY = ("student_steps", "checkpoint_gap", "student_batch", "step_scale", "learn_step_scale")


def check_mode_options(mode: str, optimizer: str, given: Dict[str, object], defaults: Dict[str, object]) -> None:
    """Refuse an option set away from its default where ``mode`` (or the optimiser) never reads it:
    it would be silently ignored."""
    unused = TRAJECTORY_ONLY if mode == "gradient" else GRADIENT_ONLY
    if mode == "gradient" and optimizer != "sgd":
        unused += ("momentum",)
    for name in unused:
        if given[name] != defaults[name]:
            reader = "the SGD optimiser of mode='gradient'" if name == "momentum" else (
                "mode='trajectory'" if name in TRAJECTORY_ONLY else "mode='gradient'")
            raise InvalidArgumentError(
                f"{name}={given[name]!r} has no effect here: only {reader} reads it (mode={mode!r}, "
                f"optimizer={optimizer!r}); leave it at its default {defaults[name]!r}")


def checked_augment(augment: Optional[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    """``augment`` (or the identity) whose output is checked for shape and finiteness."""
    if augment is None:
        return lambda x: x

    def run(x: Tensor) -> Tensor:
        out = augment(x)
        if not isinstance(out, Tensor) or out.shape[0] != x.shape[0]:
            raise InvalidArgumentError(
                f"augment must return a tensor with one row per input ({x.shape[0]}), got "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        if not bool(torch.isfinite(out).all()):
            raise InvalidArgumentError("augment returned NaN or infinite values on finite inputs")
        return out

    return run


def optimiser(kind: str, params: List[Tensor], lr: Optional[float], momentum: float,
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


def show(show_progress: bool) -> bool:
    """Whether this process draws progress bars (``show_progress`` checked; rank 0 only)."""
    show_progress = check_bool(show_progress, "show_progress")
    dist = torch.distributed
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    return bool(show_progress) and rank0


def check_data(data) -> None:
    if isinstance(data, (Tensor, tuple, list)):
        raise InvalidArgumentTypeError(
            "data must be a Dataset yielding (input, label), a DataLoader or ClassGradients; got "
            f"{type(data).__name__}. ClassWiseSynthesis is a global explanation of a whole "
            "dataset, not a per-example attribution: it cannot be wrapped by NoiseTunnel and "
            "per-input metrics do not apply (use TensorDataset(inputs, labels) for tensors)"
        )


def format_classes(classes) -> Optional[Tuple[int, ...]]:
    if classes is None:
        return None
    if isinstance(classes, (Tensor, np.ndarray)):
        classes = classes.flatten().tolist()
    elif not isinstance(classes, (list, tuple, range)):
        classes = [classes]
    return tuple(check_int(c, "classes") for c in classes)


def select(rg: ClassGradients, classes, parameters, checkpoints, keep: int) -> ClassGradients:
    """Reuse precomputed targets, restricted to ``classes``."""
    if parameters is not None or checkpoints is not None:
        raise InvalidArgumentError(
            "parameters and checkpoints are fixed by the precomputed ClassGradients; pass None")
    classes = format_classes(classes)
    if classes is None:
        classes = rg.classes
    missing = [c for c in classes if c not in rg.classes]
    if missing:
        raise InvalidArgumentError(f"classes {missing} are not among the precomputed classes {list(rg.classes)}")
    if keep and any(len(rg.real_examples.get(c, ())) < keep for c in classes):
        raise InvalidArgumentError(
            "init='real' needs ClassGradients computed with real_examples >= images_per_class")
    rows = [rg.classes.index(c) for c in classes]
    clusters = None if rg.cluster_grads is None else [[per_point[i] for i in rows] for per_point in rg.cluster_grads]
    return ClassGradients(
        tuple(classes), rg.names, rg.points, [[per_point[i] for i in rows] for per_point in rg.grads],
        rg.counts[rows], rg.num_outputs, rg.input_shape, rg.dtype, rg.real_examples,
        rg.point_names, rg.trajectory_given, clusters,
        None if rg.cluster_counts is None else rg.cluster_counts[rows],
    )


def initial_images(rg: ClassGradients, n: int, init, param: Parametrization, seed: int) -> Tensor:
    if isinstance(init, Tensor):
        shape = tuple(rg.input_shape)
        start = check_tensor(init, "init", floating=True)
        if tuple(start.shape) == (n,) + shape:
            start = start.unsqueeze(0).expand((len(rg.classes), n) + shape)
        elif tuple(start.shape) != (len(rg.classes), n) + shape:
            raise InvalidArgumentError(
                f"init as a tensor must have shape [images_per_class, *input_shape] = {(n,) + shape} (the same "
                f"start for every class) or [classes, images_per_class, *input_shape] = "
                f"{(len(rg.classes), n) + shape}, got {tuple(start.shape)}")
        return start.detach().to(rg.dtype).clone()
    if init == "real":
        short = {c: len(rg.real_examples.get(c, ())) for c in rg.classes if len(rg.real_examples.get(c, ())) < n}
        if short:
            raise InvalidArgumentError(
                f"init='real' needs images_per_class={n} real examples per class; classes "
                f"{sorted(short)} have only {sorted(short.values())}"
            )
        return torch.stack([rg.real_examples[c][:n] for c in rg.classes]).to(rg.dtype)
    gen = torch.Generator().manual_seed(seed)
    shape = (len(rg.classes) * n,) + tuple(rg.input_shape)
    noise = param.noise(shape, gen, rg.dtype).view((len(rg.classes), n) + tuple(rg.input_shape))
    # Faint noise around mid-grey: full-range noise sits far from any natural
    # image and the matching stalls there (measured, see the docs).
    value_range = param.value_range
    if value_range is None:
        return _NOISE * noise
    low, high = value_range
    return (low + high) / 2 + _NOISE * (high - low) * noise


def prior(x: Tensor, priors: Dict[str, float], value_range, model: Optional[nn.Module] = None,
          labels: Optional[Tensor] = None) -> Tensor:
    """Image priors, each a per-input mean summed over the set. ``"class"``: the
    cross-entropy of ``model`` (its own weights) on ``x`` towards ``labels``
    (one per input)."""
    total = x.new_zeros(())
    if priors.get("class"):
        logits = check_model_output(forward_on(model, {}, x), "model")
        check_finite_output(logits.detach(), "ClassWiseSynthesis", "priors['class'] (the model on the set)")
        total = total + priors["class"] * F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
    if priors.get("tv"):
        if x.dim() < 3:
            raise InvalidArgumentError("priors['tv'] needs inputs with at least two spatial dimensions")
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1) + \
             (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
        total = total + priors["tv"] * tv.sum()
    if priors.get("l2"):
        centre = 0.0 if value_range is None else (value_range[0] + value_range[1]) / 2
        total = total + priors["l2"] * ((x - centre) ** 2).flatten(1).mean(1).sum()
    return total


def class_distance(model: nn.Module, x: Tensor, ci: int, rg: ClassGradients, distance: str,
                   create_graph: bool, points: Optional[List[int]] = None) -> Tensor:
    """Matching distance of ``x`` for row ``ci``, summed over ``points`` (all by default)."""
    c = rg.classes[ci]
    ks = range(len(rg.points)) if points is None else points
    where = {k: f"{rg.point_names[k]}, synthetic inputs of class {c}" for k in ks}
    if rg.cluster_grads is not None:  # input j imitates group j of the class
        return sum(
            gradient_distance(class_gradient(model, rg.points[k], rg.names, x[j:j + 1], c, create_graph,
                                             where=where[k]), rg.cluster_grads[k][ci][j], distance)
            for k in ks for j in range(x.shape[0]))
    return sum(
        gradient_distance(class_gradient(model, rg.points[k], rg.names, x, c, create_graph, where=where[k]),
                          rg.grads[k][ci], distance)
        for k in ks
    )


def run_gradient_matching(model: nn.Module, rg: ClassGradients, start: Tensor, *, distance: str,
                          iterations: int, optimizer: str, lr, momentum: float, priors, param: Parametrization,
                          augment: Callable[[Tensor], Tensor], per_iteration: Optional[int],
                          generator: torch.Generator, progress: bool) -> Tuple[Tensor, List[float]]:
    """Optimise each class's set on its matching distance summed over the
    checkpoints (all, or ``per_iteration`` drawn at random per iteration);
    returns the last iterate and the objective before each step."""
    leaves = [param.encode(x).requires_grad_(True) for x in start]
    sampled = per_iteration is not None and per_iteration < len(rg.points)
    step = optimiser(optimizer, leaves, lr, momentum, iterations)
    history = []
    for _ in tqdm(range(iterations), desc="gradient matching", disable=not progress):
        ks = None
        if sampled:
            ks = sorted(torch.randperm(len(rg.points), generator=generator)[:per_iteration].tolist())
        total = 0.0
        for ci, z in enumerate(leaves):
            x = param.decode(z)
            d = class_distance(model, augment(x), ci, rg, distance, True, ks)
            label = torch.full((x.shape[0],), rg.classes[ci], dtype=torch.long)
            objective = d + prior(x, priors, param.value_range, model, label)
            # a model that ignores its input gives the set no gradient: it stays where it is (no signal)
            (grad,) = torch.autograd.grad(objective, z, allow_unused=True) if objective.requires_grad else (None,)
            z.grad = torch.zeros_like(z) if grad is None else grad
            total += float(d.detach())
        history.append(total)
        step()
        for z in leaves:
            param.project(z)
    return torch.stack([param.result(z, x0, iterations) for z, x0 in zip(leaves, start)]), history
