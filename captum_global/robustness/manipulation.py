"""Adversarial model manipulation: fine-tune a copy of a model to fool an explanation.

Heo, Joo and Moon (NeurIPS 2019) fine-tune a classifier with its
classification loss plus a penalty on its explanation, so that accuracy
barely moves while the explanation changes radically. :func:`manipulate_model`
does this on a copy of the model (the caller's model is never changed) and
returns the copy with its accuracy before and after and its fooling losses,
so a user can check whether an explanation method survives it.
"""
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from captum_global._checks import (check_bool, check_choice, check_finite_output, check_int, check_model_weights,
                                  check_module, check_number, check_tensor)
from captum_global._model_state import autograd_on, preserved_model_state
from captum_global._seeding import check_seed, cuda_devices, make_generator, seeded_global_rng
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.robustness.explanations import check_differentiable, differentiable_explanation
from captum_global.robustness.measures import (
    _centre,
    _detached,
    _mass_on,
    _paired,
    _top_k,
    border_region,
    location_loss,
    normalised_maps,
)

__all__ = ["FOOLINGS", "ManipulationResult", "manipulate_model", "fooling_penalty"]

FOOLINGS = ("location", "top_k", "center_mass", "active")


@dataclass
class ManipulationResult:
    """What :func:`manipulate_model` returns.

    Attributes:
        model: the manipulated copy, in eval mode (the weights of ``kept_step``),
            with the original's ``requires_grad`` flags.
        fooling: the fooling kind.
        explanation: the name of the fooled explanation.
        accuracy_before, accuracy_after: top-1 accuracy on the evaluation
            data of the original model and of the returned copy.
        fooling_loss_before, fooling_loss_after: the fooling penalty on the
            first ``fooling_eval_examples`` evaluation examples, for the
            original model and the returned copy (lower is more fooled; for
            ``center_mass`` it is the distance to the far corner).
        steps: fine-tuning steps run.
        kept_step: the step whose weights were returned (the last checkpoint
            within ``max_accuracy_drop``; 0 means no step qualified and the
            copy equals the original).
        history: per step ``loss``, ``classification_loss``, ``fooling_loss``.
        checkpoints: ``{"step", "accuracy", "fooling_loss"}`` per accuracy
            check (``fooling_loss``: mean training penalty since the last one).
        seconds: wall time of the fine-tuning loop (accuracy checks included).
        step_seconds: wall time of the fine-tuning steps alone.
        settings: the arguments, for the record.
    """

    model: nn.Module
    fooling: str
    explanation: str
    accuracy_before: float
    accuracy_after: float
    fooling_loss_before: float
    fooling_loss_after: float
    steps: int
    kept_step: int
    history: Dict[str, List[float]] = field(default_factory=dict)
    checkpoints: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy_drop(self) -> float:
        """``accuracy_before - accuracy_after`` (positive when the copy is worse)."""
        return self.accuracy_before - self.accuracy_after

    def as_dict(self) -> Dict[str, Any]:
        """JSON-serialisable record (no model, no tensors)."""
        keys = ("fooling", "explanation", "accuracy_before", "accuracy_after", "fooling_loss_before",
                "fooling_loss_after", "steps", "kept_step", "checkpoints", "seconds", "step_seconds", "settings")
        return {**{k: getattr(self, k) for k in keys}, "accuracy_drop": self.accuracy_drop}

    def summary(self) -> str:
        return (f"{self.fooling} fooling of {self.explanation}: accuracy {self.accuracy_before:.4f} -> "
                f"{self.accuracy_after:.4f}, fooling loss {self.fooling_loss_before:.4f} -> "
                f"{self.fooling_loss_after:.4f}, kept step {self.kept_step} of {self.steps}, {self.seconds:.1f} s")


def fooling_penalty(fooling: str, maps: Tensor, reference: Optional[Tensor] = None, *,
                    region: Optional[Tensor] = None, top_k_fraction: float = 0.1,
                    maps_second: Optional[Tensor] = None, reference_second: Optional[Tensor] = None) -> Tensor:
    r"""The fooling penalty (a scalar, differentiable in ``maps``), averaged over examples.

    - ``location``: :func:`location_loss` of the maps and ``region``.
    - ``top_k``: the share of the map's mass on the pixels that held the
      reference map's top ``top_k_fraction`` (:func:`top_k_mass`).
    - ``center_mass``: L1 distance of the map's centre of mass to the image
      corner farthest from the reference map's centre. (Maximising the
      distance to the reference centre, the paper's form, has a zero
      gradient where the copy starts: at the reference itself.)
    - ``active``: ``(mse(h1, h2_ref) + mse(h2, h1_ref)) / 2`` on normalised
      maps: each class's map should become the other's original map
      (``maps``/``reference``: class ``c1``, ``maps_second``/``reference_second``: ``c2``).

    Examples::

        >>> import torch
        >>> from captum_global.robustness import border_region, fooling_penalty
        >>> maps = torch.zeros(1, 4, 4)
        >>> maps[0, 0, :] = 1.0                       # the top row only
        >>> fooling_penalty("location", maps, region=border_region(4, 4, 0.25))
        tensor(0.5000)
    """
    check_choice(fooling, "fooling", FOOLINGS)
    if fooling == "location":
        return location_loss(maps, region).mean()
    if reference is None:
        raise InvalidArgumentError(f"reference maps are required for {fooling} fooling")
    h, h_ref = _paired(normalised_maps(maps), normalised_maps(_detached(reference), "reference"))
    if fooling == "top_k":
        fraction = check_number(top_k_fraction, "top_k_fraction", 0.0, 1.0, min_inclusive=False)
        return _mass_on(h, _top_k(h_ref, fraction)).mean()
    if fooling == "center_mass":
        far = (_centre(h_ref) < 0.5).to(h.dtype)  # the far corner, in image sides (maps may be a 1-tuple)
        return (_centre(h) - far).abs().sum(dim=1).mean()
    if maps_second is None or reference_second is None:
        raise InvalidArgumentError("active fooling needs the maps of both classes")
    h2, h2_ref = _paired(normalised_maps(maps_second, "maps_second"),
                         normalised_maps(_detached(reference_second), "reference_second"),
                         "maps_second and reference_second")
    _paired(h, h2, "maps and maps_second")
    first = ((h - h2_ref) ** 2).flatten(1).mean(1)
    second = ((h2 - h_ref) ** 2).flatten(1).mean(1)
    return ((first + second) / 2).mean()


def manipulate_model(
    model: nn.Module,
    data: Iterable,
    explanation: Any = "grad_cam",
    fooling: str = "location",
    *,
    steps: int = 100,
    lr: float = 1e-4,
    fooling_weight: float = 1.0,
    region: Optional[Tensor] = None,
    top_k_fraction: float = 0.1,
    classes: Optional[Sequence[int]] = None,
    fooling_data: Optional[Iterable] = None,
    eval_data: Optional[Iterable] = None,
    eval_every: int = 25,
    max_accuracy_drop: Optional[float] = None,
    fooling_eval_examples: int = 64,
    seed: Optional[int] = 0,
    show_progress: bool = False,
) -> ManipulationResult:
    r"""Fine-tune a copy of ``model`` so that ``explanation`` is fooled (Heo et al., 2019).

    Each step minimises ``cross_entropy + fooling_weight * penalty`` on one
    batch with Adam; the penalty (:func:`fooling_penalty`) is computed on the
    copy's explanation *with its graph*, so its gradient reaches the weights
    through the explanation (double backpropagation). The copy is fine-tuned
    in eval mode: its BatchNorm statistics and dropout stay those of the
    original, only the weights move.

    Args:
        model (nn.Module): the classifier; never changed (weights, flags,
            hooks, BatchNorm statistics).
        data (iterable): batches ``(inputs, labels)`` (e.g. a DataLoader),
            cycled for ``steps`` steps; the explained class is the label.
        explanation (str, DifferentiableExplanation or callable):
            ``"grad_cam"``, ``"gradient"``, ``"soft_sise"``, an instance (or
            its class, for the default settings), or
            ``fn(model, inputs, target) -> maps`` differentiable in the
            weights. A non-differentiable one (any Captum attribution
            object or class, SISE, a detached map) raises an error.
        fooling (str): ``"location"`` (move the map's mass onto ``region``),
            ``"top_k"`` (off the pixels that held the original top
            ``top_k_fraction``), ``"center_mass"`` (move its centre of mass
            away) or ``"active"`` (swap the maps of ``classes``). Default:
            ``"location"``.
        steps (int): fine-tuning steps. Default: 100.
        lr (float): Adam learning rate. Default: 1e-4.
        fooling_weight (float): weight of the penalty. Default: 1.
        region (Tensor, optional): ``[H, W]`` bool target region of
            ``location``; default the image border (:func:`border_region`).
        top_k_fraction (float): the top-k share for ``top_k``. Default: 0.1.
        classes (pair of int): ``(c1, c2)`` for ``active``.
        fooling_data (iterable, optional): batches whose explanations are
            penalised (for ``active``: images that show both classes);
            default the batches of ``data``.
        eval_data (iterable, optional): batches for the accuracy (and the
            fooling losses) before and after; default ``data``.
        eval_every (int): steps between accuracy checks. Default: 25.
        max_accuracy_drop (float, optional): keep the last checked weights
            whose accuracy is at most this far below the original's (e.g.
            0.01 for one point). ``None``: keep the last step.
        fooling_eval_examples (int): evaluation examples for the fooling
            losses before and after. Default: 64.
        seed (int, optional): seeds the data order (the global RNG is
            restored afterwards) and random choices of the explanation.
        show_progress (bool): progress bar over the steps.

    Returns:
        ManipulationResult

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from captum_global.robustness import manipulate_model
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
        >>> batches = [(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]
        >>> result = manipulate_model(net, batches, "grad_cam", "location", steps=3)
        >>> result.steps, result.kept_step, result.model is net
        (3, 3, False)
    """
    check_module(model, "model", "its copy is fine-tuned")
    check_model_weights(model, "model", autograd=True)  # its copy is trained: no weights made under inference_mode
    explainer = differentiable_explanation(explanation)
    check_choice(fooling, "fooling", FOOLINGS)
    steps = check_int(steps, "steps", minimum=1)
    lr = check_number(lr, "lr", 0.0, min_inclusive=False)
    fooling_weight = check_number(fooling_weight, "fooling_weight", 0.0)
    top_k_fraction = check_number(top_k_fraction, "top_k_fraction", 0.0, 1.0, min_inclusive=False)
    eval_every = check_int(eval_every, "eval_every", minimum=1)
    if max_accuracy_drop is not None:
        max_accuracy_drop = check_number(max_accuracy_drop, "max_accuracy_drop", 0.0, 1.0)
    fooling_eval_examples = check_int(fooling_eval_examples, "fooling_eval_examples", minimum=1)
    seed = check_seed(seed)
    check_bool(show_progress, "show_progress")
    pair = _check_classes(classes, fooling)
    eval_data = data if eval_data is None else eval_data
    penalised = data if fooling_data is None else fooling_data

    devices = cuda_devices(model)
    # a graph also under the caller's torch.no_grad() or torch.inference_mode(): the copy is trained
    with preserved_model_state(model), seeded_global_rng(seed, devices), autograd_on():
        first_x, _ = _first_batch(data, "data")
        region = _check_region(region, first_x, fooling)
        explainer = explainer.bind(model, first_x)
        fooled = copy.deepcopy(model).eval().requires_grad_(True)
        params = [p for p in fooled.parameters()]
        generator = make_generator(seed)
        penalty = _Penalty(model, explainer, fooling, region, top_k_fraction, pair, generator)

        x_check, y_check = _first_batch(penalised, "fooling_data")
        check_differentiable(explainer(fooled, x_check[:2], pair[0] if pair else y_check[:2], generator),
                             params, getattr(explainer, "name", "explanation"))
        accuracy_before = _accuracy(model, eval_data)
        fooling_before = penalty.evaluate(model, eval_data, fooling_eval_examples, seed)

        optimiser = torch.optim.Adam(params, lr=lr)
        history: Dict[str, List[float]] = {"loss": [], "classification_loss": [], "fooling_loss": []}
        checkpoints: List[Dict[str, float]] = []
        kept_state, kept_step, step_seconds, last_check = None, 0, 0.0, 0
        start = time.perf_counter()
        batches, fooling_batches = _cycle(data), (None if fooling_data is None else _cycle(fooling_data))
        for step in tqdm(range(1, steps + 1), disable=not show_progress, desc=f"{fooling} fooling"):
            x, y = next(batches)
            xf, yf = (x, y) if fooling_batches is None else next(fooling_batches)
            step_start = time.perf_counter()
            classification = F.cross_entropy(fooled(x), y.to(x.device))
            fooling_loss = penalty(fooled, xf, yf, where=f"step {step}")
            loss = classification + fooling_weight * fooling_loss
            # a diverged step (lr too high, a model that overflows) is an error, never a silent bad copy
            check_finite_output(loss.detach().reshape(1, 1), f"manipulate_model ({fooling} fooling)", f"step {step}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            step_seconds += time.perf_counter() - step_start
            for key, value in zip(history, (loss, classification, fooling_loss)):
                history[key].append(float(value.detach()))
            if step % eval_every == 0 or step == steps:
                accuracy = _accuracy(fooled, eval_data)
                recent = history["fooling_loss"][last_check:]  # since the last check (the final one may be closer)
                last_check = step
                checkpoints.append({"step": step, "accuracy": accuracy, "fooling_loss": sum(recent) / len(recent)})
                if max_accuracy_drop is None or accuracy_before - accuracy <= max_accuracy_drop + 1e-12:
                    kept_state, kept_step = copy.deepcopy(fooled.state_dict()), step
        seconds = time.perf_counter() - start
        if kept_state is not None:
            fooled.load_state_dict(kept_state)
        else:
            fooled = copy.deepcopy(model).eval()
        for mine, theirs in zip(fooled.parameters(), model.parameters()):
            mine.requires_grad_(theirs.requires_grad)  # the copy behaves like the original under other tools
        accuracy_after = _accuracy(fooled, eval_data)
        fooling_after = penalty.evaluate(fooled, eval_data, fooling_eval_examples, seed)
    settings = dict(explanation=repr(explainer), fooling=fooling, steps=steps, lr=lr, fooling_weight=fooling_weight,
                    top_k_fraction=top_k_fraction, classes=list(pair) if pair else None, eval_every=eval_every,
                    max_accuracy_drop=max_accuracy_drop, seed=seed,
                    region_pixels=None if region is None else int(region.sum()))
    return ManipulationResult(fooled, fooling, getattr(explainer, "name", "explanation"), accuracy_before,
                              accuracy_after, fooling_before, fooling_after, steps, kept_step, history,
                              checkpoints, seconds, step_seconds, settings)


class _Penalty:
    """The penalty of one fooling kind; reference maps come from the original model."""

    def __init__(self, original, explainer, fooling, region, fraction, pair, generator):
        self.original, self.explainer, self.fooling = original, explainer, fooling
        self.region, self.fraction, self.pair, self.generator = region, fraction, pair, generator

    def _maps(self, model, x, target, graph: bool, where: str) -> Tensor:
        maps = self.explainer(model, x, target, self.generator)
        if isinstance(maps, Tensor) and maps.dim() > 0:
            # a diverged copy (lr too high) gives NaN maps: the model's failure, not a bad argument
            check_finite_output(maps.detach(), f"manipulate_model ({self.fooling} fooling)", where)
        return maps if graph else maps.detach()

    def __call__(self, model, x, y, graph: bool = True, where: str = "") -> Tensor:
        def maps(of, target, with_graph):
            return self._maps(of, x, target, with_graph, where)

        if self.fooling == "location":
            return fooling_penalty("location", maps(model, y, graph), region=self.region)
        if self.fooling == "active":
            c1, c2 = self.pair
            return fooling_penalty("active", maps(model, c1, graph), maps(self.original, c1, False),
                                   maps_second=maps(model, c2, graph), reference_second=maps(self.original, c2, False))
        return fooling_penalty(self.fooling, maps(model, y, graph), maps(self.original, y, False),
                               top_k_fraction=self.fraction)

    def evaluate(self, model, data, limit: int, seed: int) -> float:
        total, count = 0.0, 0
        self.generator.manual_seed(seed)  # the same mask samples before and after
        for x, y in data:
            x, y = x[:limit - count], y[:limit - count]
            total += float(self(model, x, y, graph=False, where="the evaluation of the fooling loss")) * x.shape[0]
            count += x.shape[0]
            if count >= limit:
                break
        return total / max(count, 1)


def _accuracy(model: nn.Module, data: Iterable) -> float:
    correct, count = 0, 0
    with preserved_model_state(model), torch.no_grad():
        for x, y in data:
            # a NaN image is the caller's mistake (refused by name); NaN logits from finite images are the
            # model's: argmax would still name a class for them, so both are errors, never an accuracy
            x = check_tensor(x, "eval_data inputs", dims=(4,), floating=True)
            logits = check_finite_output(model(x), "manipulate_model", "the accuracy check")
            correct += int((logits.argmax(dim=1) == y.to(x.device)).sum())
            count += int(y.numel())
    if count == 0:
        raise InvalidArgumentError("eval_data yielded no examples")
    return correct / count


def _first_batch(data: Iterable, argument: str) -> Tuple[Tensor, Tensor]:
    try:
        batch = next(iter(data))
    except TypeError:
        raise InvalidArgumentTypeError(f"{argument} must be an iterable of (inputs, labels) batches") from None
    except StopIteration:
        raise InvalidArgumentError(f"{argument} yielded no batch") from None
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(b, Tensor) for b in batch):
        raise InvalidArgumentError(f"{argument} must yield (inputs, labels) pairs of tensors")
    x = check_tensor(batch[0], f"{argument} inputs", dims=(4,), floating=True)
    y = check_tensor(batch[1], f"{argument} labels", dims=(1,))
    if x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(f"{argument} must yield inputs [N, C, H, W] and labels [N], got "
                                   f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _cycle(data: Iterable):
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise InvalidArgumentError("data yielded no batch")


def _check_classes(classes, fooling: str) -> Optional[Tuple[int, int]]:
    if fooling != "active":
        if classes is not None:
            raise InvalidArgumentError("classes is only used by active fooling")
        return None
    if classes is None or not isinstance(classes, (tuple, list)) or len(classes) != 2:
        raise InvalidArgumentError(f"classes must be a pair (c1, c2) of class indices for active fooling, got {classes!r}")
    c1, c2 = check_int(classes[0], "classes[0]", minimum=0), check_int(classes[1], "classes[1]", minimum=0)
    if c1 == c2:
        raise InvalidArgumentError(f"classes must name two different classes, got {classes!r}")
    return c1, c2


def _check_region(region: Optional[Tensor], x: Tensor, fooling: str) -> Optional[Tensor]:
    if fooling != "location":
        if region is not None:
            raise InvalidArgumentError("region is only used by location fooling")
        return None
    height, width = x.shape[-2:]
    if region is None:
        return border_region(height, width).to(x.device)
    region = check_tensor(region, "region", dims=(2,))
    if region.dtype != torch.bool or tuple(region.shape) != (height, width):
        raise InvalidArgumentError(f"region must be a bool tensor of shape {(height, width)}")
    if not bool(region.any()) or bool(region.all()):
        raise InvalidArgumentError("region must hold some pixels but not all of them")
    return region.to(x.device)
