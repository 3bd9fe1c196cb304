"""Trajectory matching (private helper of class-wise synthesis).

Matching training trajectories (Cazenavette et al., CVPR 2022): a *student*
copy of the model starts at checkpoint ``t`` of the real training run,
takes ``steps`` differentiable SGD steps on the synthetic set, and the
parameters it reaches are compared with checkpoint ``t + gap``, normalised
by how far real training moved between the two:

    D = || student after steps - theta_{t+gap} ||^2 / || theta_t - theta_{t+gap} ||^2

``D`` is differentiated through the unrolled steps with respect to the
synthetic inputs and the student's step sizes (learnt, one per weight
tensor: real trajectories often come from Adam, whose per-tensor step sizes
plain SGD cannot reproduce with one scalar). BatchNorm runs in eval mode with
the statistics stored in checkpoint ``t``. The student is a set of tensors
passed through :func:`torch.func.functional_call`; the model is never changed.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from captum_global.attr.classwise_types import WeightPoint
from captum_global.errors import InvalidArgumentError

__all__ = ["check_trajectory", "initial_student_lrs", "run_trajectory_matching", "student_distance",
           "trajectory_starts"]

_TINY = 1e-30


def trajectory_starts(num_points: int, gap: int) -> List[int]:
    """Start checkpoints ``t`` with a target ``t + gap`` inside the trajectory."""
    return list(range(num_points - gap))


def initial_student_lrs(points: Sequence[WeightPoint], real_grads: Sequence[Sequence[Tensor]],
                        names: Sequence[str], gap: int, steps: int) -> Tensor:
    """``[len(names)]`` step sizes such that ``steps`` SGD steps along the real
    gradient cover the real displacement, per tensor, averaged over starts.

    ``real_grads[t]`` is the gradient of the mean training loss over all real
    examples at point ``t`` (list over ``names``). Its log is the student's
    starting log step size; the geometric mean over starts is taken.
    """
    logs = []
    for t in trajectory_starts(len(points), gap):
        row = []
        for n, g in zip(names, real_grads[t]):
            moved = float((points[t + gap][n].double() - points[t][n].double()).norm())
            pull = float(g.double().norm()) * steps
            row.append(math.log(max(moved, _TINY) / max(pull, _TINY)) if moved > 0 and pull > 0 else float("nan"))
        logs.append(row)
    logs_t = torch.tensor(logs, dtype=torch.float64)
    finite = torch.isfinite(logs_t)
    mean = torch.where(finite, logs_t, torch.zeros_like(logs_t)).sum(0) / finite.sum(0).clamp_min(1)
    fallback = float(mean[finite.any(0)].mean()) if bool(finite.any()) else math.log(0.01)
    return torch.where(finite.any(0), mean, torch.full_like(mean, fallback)).exp()


def student_distance(
    model: nn.Module,
    start: WeightPoint,
    target: WeightPoint,
    names: Sequence[str],
    images: Tensor,
    labels: Tensor,
    log_lrs: Tensor,
    steps: int,
    batch: Optional[int],
    generator: torch.Generator,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
    check: Optional[Callable[[Tensor, str], Tensor]] = None,
    create_graph: bool = True,
) -> Tensor:
    """Normalised distance reached by ``steps`` differentiable SGD steps from
    ``start`` on ``(images, labels)`` to ``target`` (a scalar with a graph to
    ``images`` and ``log_lrs``).

    Each step uses ``batch`` inputs drawn without replacement from the set
    (all of them when ``batch`` is None or not smaller), augmented by
    ``augment`` when given; ``check(logits, where)`` vets the logits of every
    step. ``create_graph=False`` only evaluates the distance (no graph).
    """
    state = dict(start)
    weights = [start[n].detach().requires_grad_(True) for n in names]
    lrs = log_lrs.exp()
    count = images.shape[0]
    for step in range(steps):
        if batch is None or batch >= count:
            x, y = images, labels
        else:
            rows = torch.randperm(count, generator=generator)[:batch].to(images.device)
            x, y = images[rows], labels[rows]
        if augment is not None:
            x = augment(x)
        state.update(zip(names, weights))
        logits = functional_call(model, state, (x,))
        if check is not None:
            check(logits, f"student step {step}")
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
        weights = [w - lr * g for w, lr, g in zip(weights, lrs, grads)]
        if not create_graph:
            weights = [w.detach().requires_grad_(True) for w in weights]
    reached = sum(((w - target[n]) ** 2).sum() for w, n in zip(weights, names))
    real = sum(((start[n] - target[n]) ** 2).sum() for n in names)
    return reached / real.clamp_min(_TINY)


def check_trajectory(points: Sequence[WeightPoint], names: Sequence[str], gap: int, labels: Sequence[str]) -> None:
    """Trajectory mode needs ``gap + 1`` checkpoints that move between starts and targets."""
    if len(points) < gap + 1:
        raise InvalidArgumentError(
            f"mode='trajectory' needs at least checkpoint_gap + 1 = {gap + 1} checkpoints in training "
            f"order; checkpoints gave {len(points)}"
            + (" (none was given: pass the weights saved during training)" if labels == ("model",) else "")
        )
    for t in trajectory_starts(len(points), gap):
        if all(torch.equal(points[t][n], points[t + gap][n]) for n in names):
            raise InvalidArgumentError(
                f"checkpoints: {labels[t]} and {labels[t + gap]} hold the same matched weights; "
                "a trajectory must move between a start and its target"
            )


def run_trajectory_matching(model: nn.Module, points: Sequence[WeightPoint], names: Sequence[str],
                            start: Tensor, labels: Tensor, log_lrs: Tensor, *, gap: int, steps: int,
                            batch: Optional[int], iterations: int, lr: Optional[float],
                            learn_lr: bool, prior: Callable[[Tensor], Tensor],
                            value_range, augment, check, generator: torch.Generator,
                            progress: bool) -> Tuple[Tensor, Tensor, List[float]]:
    """Optimise the synthetic set (all classes jointly: the student trains on
    all of it) and the student's log step sizes; returns the last iterate,
    the learnt log step sizes and the objective per iteration."""
    images = start.clone().requires_grad_(True)
    log_lrs = log_lrs.clone().requires_grad_(learn_lr)
    groups = [{"params": [images], "lr": 0.01 if lr is None else lr}]
    if learn_lr:
        groups.append({"params": [log_lrs], "lr": 0.01})
    opt = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))
    starts = trajectory_starts(len(points), gap)
    history = []
    for _ in tqdm(range(iterations), desc="trajectory matching", disable=not progress):
        t = starts[int(torch.randint(len(starts), (1,), generator=generator))]
        d = student_distance(model, points[t], points[t + gap], names, images, labels, log_lrs, steps,
                             batch, generator, augment, check)
        objective = d + prior(images)
        wrt = [images, log_lrs] if learn_lr else [images]
        grads = torch.autograd.grad(objective, wrt)
        for tensor, g in zip(wrt, grads):
            tensor.grad = g
        history.append(float(d.detach()))
        opt.step()
        schedule.step()
        if value_range is not None:
            with torch.no_grad():
                images.clamp_(*value_range)
    return images.detach(), log_lrs.detach(), history
