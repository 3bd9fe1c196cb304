"""Public result types of :class:`~captum_global.attr.ClassWiseSynthesis`.

- :class:`ClassGradients`: the fixed real-data targets of gradient matching
  (one streaming pass over the data), reusable across several syntheses.
- :class:`ClassWiseResult`: the synthetic sets, with the trajectory they were
  matched along, the distances per checkpoint and the model's confidence.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from torch import Tensor

__all__ = ["ClassGradients", "ClassWiseResult", "WeightPoint"]

WeightPoint = Dict[str, Tensor]
"""A model's parameters and buffers by name (a state dict)."""


@dataclass
class ClassGradients:
    """Fixed gradient targets of a class-wise synthesis.

    Attributes:
        classes: class ids, in the order of ``grads[k]``.
        names: matched weight names, in the order of ``grads[k][c]``.
        points: the weight points, in training order (the checkpoints of the
            trajectory, or the model's own weights when none were given).
        grads: ``grads[k][c]`` the gradient (list over ``names``) of the mean
            cross-entropy over all real examples of ``classes[c]`` at point k.
        counts: ``[C]`` real examples per class (over all processes).
        num_outputs: the model's number of logits.
        input_shape, dtype: shape (without batch) and dtype of one input.
        real_examples: ``{class: [m, *input_shape]}`` kept real examples (for
            ``init="real"`` and figures), a seeded random choice in the class.
        point_names: a label per point (``"model"``, ``"checkpoints[3]"``,
            a file name...).
        trajectory_given: False when only the model's own weights were used.
        cluster_grads: with ``match="clusters"``: ``cluster_grads[k][c][j]``
            the mean gradient (list over ``names``) of group ``j`` of class
            ``classes[c]`` at point k; else None.
        cluster_counts: ``[C, n]`` real examples in each group, or None.
    """

    classes: Tuple[int, ...]
    names: List[str]
    points: List[WeightPoint]
    grads: List[List[List[Tensor]]]
    counts: Tensor
    num_outputs: int
    input_shape: Tuple[int, ...]
    dtype: object
    real_examples: Dict[int, Tensor] = field(default_factory=dict)
    point_names: Tuple[str, ...] = ("model",)
    trajectory_given: bool = False
    cluster_grads: Optional[List[List[List[List[Tensor]]]]] = None
    cluster_counts: Optional[Tensor] = None


@dataclass
class ClassWiseResult:
    """What :meth:`ClassWiseSynthesis.attribute` returns.

    Attributes:
        images: ``[C, n, *input_shape]`` synthetic inputs, row ``i`` for ``classes[i]``.
        classes: the class ids, in the order of ``images``.
        initial_images: the starting point of ``images`` (noise or real examples).
        loss_history: ``[iterations]`` objective before each step (gradient
            mode: matching distance summed over classes and the checkpoints of
            that step; trajectory mode: normalised parameter distance).
        initial_distance, final_distance: ``[C]`` gradient-matching distance of
            each class's set summed over all checkpoints, at the start and at
            the end (no augmentation).
        confidence: ``[C, n]`` the model's softmax probability of its class on
            each synthetic input (the model's own weights).
        predictions: ``[C, n]`` the model's predicted class on each input.
        counts: ``[C]`` number of real examples of each class that were matched.
        mode: ``"gradient"`` or ``"trajectory"``.
        trajectory: the weight points matched along (state dicts in training
            order; the model's own weights alone when no trajectory was given).
        checkpoint_names: a label per point of ``trajectory``.
        initial_distances, distances: ``[K, C]`` gradient-matching distance per
            checkpoint and class, at the start and at the end.
        trajectory_distances: trajectory mode only: ``[S]`` normalised parameter
            distance reached from each start checkpoint at the end (1 = no
            better than staying at the start), else None.
        initial_trajectory_distances: the same for the starting images.
        step_scale: trajectory mode only: ``[len(matched weights)]`` the
            student's learnt step length per weight tensor, as a multiple of
            the real displacement per student step, else None.
        real_examples: ``{class: [m, *input_shape]}`` a few real examples per
            class (for figures; empty unless requested).
        note: what a reader must know (e.g. that no trajectory was given).
        cluster_sizes: with ``match="clusters"``: ``[C, n]`` the number of
            real examples of the group each synthetic input imitates; else None.
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
    mode: str = "gradient"
    trajectory: List[WeightPoint] = field(default_factory=list)
    checkpoint_names: Tuple[str, ...] = ()
    initial_distances: Optional[Tensor] = None
    distances: Optional[Tensor] = None
    trajectory_distances: Optional[Tensor] = None
    initial_trajectory_distances: Optional[Tensor] = None
    step_scale: Optional[Tensor] = None
    real_examples: Dict[int, Tensor] = field(default_factory=dict)
    note: str = ""
    cluster_sizes: Optional[Tensor] = None

    def as_dict(self) -> Dict[int, Tensor]:
        """``{class id: [n, *input_shape] synthetic inputs}``."""
        return {c: self.images[i] for i, c in enumerate(self.classes)}

    def __getitem__(self, cls: int) -> Tensor:
        """The synthetic set of class id ``cls`` (not of row ``cls``)."""
        if cls not in self.classes:
            raise KeyError(f"class {cls!r} was not synthesised; classes are {list(self.classes)}")
        return self.images[self.classes.index(cls)]

    def summary(self) -> str:
        """A per-class text table: confidence and matching distance."""
        lines = [f"class-wise synthesis ({self.mode} matching, {len(self.trajectory)} weight point(s))"]
        if self.note:
            lines.append(f"note: {self.note}")
        lines.append("class | confidence mean (min) | distance start -> end")
        for i, c in enumerate(self.classes):
            lines.append(f"{c:>5} | {float(self.confidence[i].mean()):.3f} ({float(self.confidence[i].min()):.3f})"
                         f" | {float(self.initial_distance[i]):.3g} -> {float(self.final_distance[i]):.3g}")
        if self.trajectory_distances is not None:
            lines.append("trajectory distance per start checkpoint: "
                         + ", ".join(f"{float(d):.3f}" for d in self.trajectory_distances))
        return "\n".join(lines)
