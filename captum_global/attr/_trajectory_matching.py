"""Trajectory matching (private helper of class-wise synthesis).

Matching training trajectories (Cazenavette et al., CVPR 2022): a *student*
copy of the model starts at checkpoint ``t`` of the real training run,
takes ``steps`` differentiable SGD steps on the synthetic set, and the
parameters it reaches are compared with checkpoint ``t + gap``, normalised
by how far real training moved between the two:

    D = || student after steps - theta_{t+gap} ||^2 / || theta_t - theta_{t+gap} ||^2

``D`` is differentiated through the unrolled steps with respect to the
synthetic inputs and the student's step sizes. Our adaptation: real
trajectories usually come from Adam-like optimisers, whose steps have a
per-tensor length that does not follow the gradient's magnitude (which
changes a thousandfold along a run), so plain SGD with one step size either
stalls or diverges. The student therefore takes *normalised* steps, per
weight tensor ``n``::

    w_n <- w_n - scale_n * (|theta_{t+gap,n} - theta_{t,n}| / steps) * g_n / |g_n|

so that ``steps`` steps in a constant direction cover the real displacement
exactly when ``scale_n = 1``; the synthetic set decides the directions, and
``scale_n`` (one per tensor) is learnt from 1. BatchNorm runs in eval mode
with the statistics stored in checkpoint ``t``. The student is a set of
tensors passed through :func:`torch.func.functional_call`; the model is
never changed.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_global._checks import check_finite_output, check_model_output
from captum_global.attr._gradient_matching import forward_on, twice_differentiable
from captum_global.attr.classwise_types import ClassGradients, WeightPoint
from captum_global.errors import InvalidArgumentError

__all__ = ["check_trajectory", "run_trajectory_matching", "student_distance", "trajectory_mode", "trajectory_starts"]

_TINY = 1e-30


def trajectory_starts(num_points: int, gap: int) -> List[int]:
    """Start checkpoints ``t`` with a target ``t + gap`` inside the trajectory."""
    return list(range(num_points - gap))


def student_distance(
    model: nn.Module,
    start: WeightPoint,
    target: WeightPoint,
    names: Sequence[str],
    images: Tensor,
    labels: Tensor,
    log_scales: Tensor,
    steps: int,
    batch: Optional[int],
    generator: torch.Generator,
    augment: Optional[Callable[[Tensor], Tensor]] = None,
    check: Optional[Callable[[Tensor, str], Tensor]] = None,
    create_graph: bool = True,
) -> Tensor:
    """Normalised distance reached by ``steps`` differentiable normalised
    gradient steps from ``start`` on ``(images, labels)`` to ``target`` (a
    scalar with a graph to ``images`` and ``log_scales``).

    Each step uses ``batch`` inputs drawn without replacement from the set
    (all of them when ``batch`` is None or not smaller), augmented by
    ``augment`` when given; ``check(logits, where)`` vets the logits of every
    step. ``create_graph=False`` only evaluates the distance (no graph).
    """
    state = dict(start)
    weights = [start[n].detach().requires_grad_(True) for n in names]
    lengths = torch.stack([(target[n] - start[n]).norm() for n in names]) / steps
    lrs = log_scales.exp() * lengths
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
        with twice_differentiable(model):
            logits = check_model_output(forward_on(model, state, x), "model")
            if check is not None:
                check(logits, f"student step {step}")
            loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, weights, create_graph=create_graph)
        weights = [w - lr * g / g.norm().clamp_min(_TINY) for w, lr, g in zip(weights, lrs, grads)]
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
                            start: Tensor, labels: Tensor, log_scales: Tensor, *, gap: int, steps: int,
                            batch: Optional[int], iterations: int, lr: Optional[float],
                            learn_lr: bool, prior: Callable[[Tensor], Tensor],
                            param, augment, check, generator: torch.Generator,
                            progress: bool) -> Tuple[Tensor, Tensor, List[float]]:
    """Optimise the synthetic set (all classes jointly: the student trains on
    all of it) and the student's log step scales; returns the last iterate,
    the learnt log step scales and the objective per iteration."""
    leaf = param.encode(start).requires_grad_(True)
    log_scales = log_scales.clone().requires_grad_(learn_lr)
    groups = [{"params": [leaf], "lr": 0.01 if lr is None else lr}]
    if learn_lr:
        groups.append({"params": [log_scales], "lr": 0.01})
    opt = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iterations, 1))
    starts = trajectory_starts(len(points), gap)
    history = []
    for _ in tqdm(range(iterations), desc="trajectory matching", disable=not progress):
        t = starts[int(torch.randint(len(starts), (1,), generator=generator))]
        images = param.decode(leaf)
        d = student_distance(model, points[t], points[t + gap], names, images, labels, log_scales, steps,
                             batch, generator, augment, check)
        objective = d + prior(images)
        wrt = [leaf, log_scales] if learn_lr else [leaf]
        grads = [None] * len(wrt)
        if objective.requires_grad:
            grads = torch.autograd.grad(objective, wrt, allow_unused=True)
        for tensor, g in zip(wrt, grads):  # no gradient (a model that ignores its input): no move
            tensor.grad = torch.zeros_like(tensor) if g is None else g
        history.append(float(d.detach()))
        opt.step()
        schedule.step()
        param.project(leaf)
    return param.result(leaf, start, iterations), log_scales.detach(), history


def trajectory_mode(model: nn.Module, rg: ClassGradients, start: Tensor, *, gap: int, steps: int, batch,
                    step_scale: float, learn_scale: bool, iterations: int, lr, prior, param, augment,
                    generator: torch.Generator, progress: bool):
    """Trajectory matching along ``rg.points``; returns the images ``[C, n, ...]``,
    the objective per iteration and the result's trajectory fields."""
    check_trajectory(rg.points, rg.names, gap, rg.point_names)
    n = start.shape[1]
    labels = torch.tensor(rg.classes, device=start.device).repeat_interleave(n)
    log_scales = torch.full((len(rg.names),), float(step_scale), dtype=start.dtype, device=start.device).log()

    def check(logits: Tensor, where: str) -> None:
        check_finite_output(logits.detach(), "ClassWiseSynthesis", f"{where} of the student")

    def distances(images: Tensor, scales: Tensor) -> Tensor:
        fixed = torch.Generator().manual_seed(0)  # the same minibatches for start and end
        return torch.stack([
            student_distance(model, rg.points[t], rg.points[t + gap], rg.names, images.flatten(0, 1), labels,
                             scales, steps, batch, fixed, None, check, create_graph=False).detach()
            for t in trajectory_starts(len(rg.points), gap)])

    flat, learnt, history = run_trajectory_matching(
        model, rg.points, rg.names, start.flatten(0, 1), labels, log_scales, gap=gap, steps=steps, batch=batch,
        iterations=iterations, lr=lr, learn_lr=learn_scale, prior=prior, param=param, augment=augment,
        check=check, generator=generator, progress=progress)
    images = flat.view_as(start)
    info = dict(initial_trajectory_distances=distances(start, log_scales),
                trajectory_distances=distances(images, learnt), step_scale=learnt.exp())
    return images, history, info
