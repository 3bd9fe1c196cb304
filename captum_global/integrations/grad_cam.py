"""captum_global and Captum methods where pytorch-grad-cam expects a CAM object.

pytorch-grad-cam's CAM objects are called as
``cam(input_tensor=x, targets=[ClassifierOutputTarget(k), ...])`` and
return one float32 map in [0, 1] per image, ``[N, H, W]`` NumPy; its
metrics (ROAD, ``CamMultImageConfidenceChange``...) and its
``show_cam_on_image`` take such maps. :class:`AttributionCAM` gives any
attribution that interface, and :func:`attributions_to_cams` turns
attributions you already have into maps those metrics accept.

Targets: grad-cam's target callables are accepted. A
``ClassifierOutputTarget(k)`` is class ``k`` (one batched call); any other
callable (``ClassifierOutputSoftmaxTarget``, ``BinaryClassifierOutputTarget``,
your own) becomes the explained score: while the method runs, a forward
hook on the model turns each output row into ``target(row)``, example by
example, and is removed afterwards (RISE then scores that value as it is:
its ``apply_softmax`` defaults to False for such targets).
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from captum_global._checks import (check_bool, check_finite, check_finite_output, check_model_output, check_module,
                                  check_tensor)
from captum_global._maps import minmax_normalise
from captum_global._model_state import HookBag
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.integrations._methods import (
    MethodLike,
    as_target_list,
    bind_method,
    isolated_run,
    num_classes_of,
    reduce_channels,
)

__all__ = ["AttributionCAM", "attributions_to_cams"]


def attributions_to_cams(attributions: Any, relu: bool = True, normalise: bool = True) -> np.ndarray:
    r"""Attributions as pytorch-grad-cam maps: float32 NumPy ``[N, H, W]``.

    Args:
        attributions (Tensor or 1-tuple): ``[N, C, H, W]`` (channels are
                    averaged: a channel-broadcast map stays itself) or
                    ``[N, H, W]``.
        relu (bool): keep the positive part, as grad-cam does with its CAMs.
                    Default: True
        normalise (bool): min-max each map to [0, 1] (grad-cam's scaling);
                    a map with no signal (constant up to float round-off)
                    becomes all zeros, never stretched noise. Default: True

    Returns:
        *np.ndarray* float32 ``[N, H, W]``.

    Examples::

        >>> import torch
        >>> from captum_global.integrations.grad_cam import attributions_to_cams
        >>> attr = torch.tensor([[[[0.0, 2.0], [-1.0, 4.0]]]]).expand(1, 3, 2, 2)
        >>> attributions_to_cams(attr)
        array([[[0. , 0.5],
                [0. , 1. ]]], dtype=float32)
    """
    relu = check_bool(relu, "relu")
    normalise = check_bool(normalise, "normalise")
    if isinstance(attributions, Tensor) and attributions.dim() == 3:
        attributions = attributions.unsqueeze(1)
    if not isinstance(attributions, (Tensor, tuple)):
        raise InvalidArgumentTypeError(
            f"attributions must be a tensor [N, C, H, W] or [N, H, W], got {type(attributions).__name__}"
        )
    size = (attributions[0] if isinstance(attributions, tuple) else attributions).shape[-2:]
    maps = check_finite(reduce_channels(attributions, size, "mean")[:, 0], "attributions")
    if relu:
        maps = maps.clamp(min=0)
    if normalise:
        maps = minmax_normalise(maps)
    return maps.cpu().numpy().astype(np.float32)


def _class_of(target: Any) -> Optional[int]:
    """The class of a ``ClassifierOutputTarget``-like callable, None for any other callable."""
    try:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:  # grad-cam not installed: only plain callables can reach here
        return None
    if type(target) is ClassifierOutputTarget:
        return int(target.category)
    return None


def _scored_by(target: Callable[[Tensor], Tensor]) -> Callable:
    """A forward hook that replaces the model output ``[B, ...]`` by ``[B, 1]`` scores ``target(row)``."""

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
        scores = [torch.as_tensor(target(row)) for row in output]
        if any(s.numel() != 1 for s in scores):
            raise InvalidArgumentError(
                f"targets: the callable {type(target).__name__} must return one score per output row, "
                f"got shape {tuple(scores[0].shape)}"
            )
        return torch.stack([s.reshape(()) for s in scores]).unsqueeze(1)

    return hook


class AttributionCAM:
    r"""Any attribution as a pytorch-grad-cam CAM object.

    Replace ``GradCAM(model=model, target_layers=[layer])`` by
    ``AttributionCAM(model=model, method="SISE")`` and keep the rest of the
    grad-cam code: calls, context-manager use, metrics, ``show_cam_on_image``.
    Nothing is attached to the model between calls (grad-cam's CAM objects
    keep hooks until released); the model's mode is not changed (use
    ``model.eval()`` as for any explanation).

    Args:
        model (nn.Module): the classifier.
        method (str, class, Attribution or MethodSpec): the attribution: a
                    class name of :mod:`captum_global.attr` or
                    ``captum.attr``, the class, an object built on ``model``,
                    or a line-up recipe. Default: ``"SISE"``
        target_layers (list of nn.Module or str, optional): grad-cam's
                    argument: SISE's layers, or the one layer of a Captum
                    layer method (default: the deepest spatial block
                    output). Refused for methods that read no layer.
        init_kwargs (dict, optional): constructor keywords of ``method``.
        relu (bool): keep the positive part of each map. Default: True
        normalise (bool): min-max each map to [0, 1] (no signal: zeros).
                    Default: True
        **attribute_kwargs: passed to ``attribute`` on every call.

    Examples::

        >>> import torch
        >>> from torch import nn
        >>> from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> from captum_global.integrations.grad_cam import AttributionCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...                     nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
        >>> with AttributionCAM(model=net, method="SISE") as cam:
        ...     maps = cam(input_tensor=torch.rand(2, 3, 32, 32),
        ...                targets=[ClassifierOutputTarget(0), ClassifierOutputTarget(2)])
        >>> maps.shape, maps.dtype, float(maps.max())
        ((2, 32, 32), dtype('float32'), 1.0)
    """

    def __init__(
        self,
        model: nn.Module,
        method: MethodLike = "SISE",
        target_layers: Optional[Sequence[Any]] = None,
        init_kwargs: Optional[Dict[str, Any]] = None,
        relu: bool = True,
        normalise: bool = True,
        **attribute_kwargs: Any,
    ) -> None:
        self.model = check_module(model, "model", "the CAM explains it")
        self.method = method
        self.target_layers = list(target_layers) if target_layers is not None else None
        if self.target_layers is not None and len(self.target_layers) == 0:
            raise InvalidArgumentError("target_layers must name at least one layer, or be None")
        self.relu = check_bool(relu, "relu")
        self.normalise = check_bool(normalise, "normalise")
        self.attribute_kwargs = attribute_kwargs
        self._bound = bind_method(method, model, layer=self.target_layers, init_kwargs=init_kwargs)

    def __repr__(self) -> str:
        name = self.method if isinstance(self.method, str) else type(self.method).__name__
        return f"AttributionCAM(method={name!r})"

    def __call__(
        self,
        input_tensor: Tensor,
        targets: Optional[List[Callable]] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Maps ``[N, H, W]`` float32 in [0, 1] at the input's size (a layer method's maps upsampled
        bilinearly); ``targets=None`` explains each image's top class."""
        return self.forward(input_tensor, targets, eigen_smooth=eigen_smooth, aug_smooth=aug_smooth)

    def forward(
        self,
        input_tensor: Tensor,
        targets: Optional[List[Callable]] = None,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
    ) -> np.ndarray:
        if check_bool(aug_smooth, "aug_smooth") or check_bool(eigen_smooth, "eigen_smooth"):
            raise InvalidArgumentError(
                "aug_smooth and eigen_smooth are Grad-CAM options this adapter does not have; for smoothing, "
                "wrap the method in captum.attr.NoiseTunnel and pass that object as method"
            )
        if not isinstance(input_tensor, Tensor) or input_tensor.dim() != 4:
            shape = tuple(input_tensor.shape) if isinstance(input_tensor, Tensor) else type(input_tensor).__name__
            raise InvalidArgumentError(f"input_tensor must be an image batch [N, C, H, W], got {shape}")
        input_tensor = check_tensor(input_tensor, "input_tensor", dims=(4,))
        n = input_tensor.shape[0]
        if targets is not None and not isinstance(targets, (list, tuple)):
            raise InvalidArgumentTypeError(
                f"targets must be a list of grad-cam targets, one per image (e.g. [ClassifierOutputTarget(k)]), "
                f"got a {type(targets).__name__}"
            )
        if targets is not None:
            if len(targets) != n:
                raise InvalidArgumentError(f"targets has {len(targets)} entries for {n} images: give one per image")
            if not all(callable(t) for t in targets):
                raise InvalidArgumentTypeError("targets must be grad-cam target callables, e.g. ClassifierOutputTarget(k)")
        # the top-class pass and the method alike run as explain() runs them (eval mode, flags back, RNG seeded
        # and restored): grad-cam's CAMs switch the model to eval mode; this adapter leaves it as it was
        with isolated_run(self.model, self._bound, self.attribute_kwargs, input_tensor):
            attributions = self._attribute(input_tensor, targets)
        # at the input's size, as grad-cam's CAMs (show_cam_on_image and its metrics multiply them with the
        # image): a layer method's [N, 1, h, w] maps are upsampled bilinearly, as in quantus's explain
        if isinstance(attributions, Tensor) and attributions.dim() == 3:  # [N, H, W], as attributions_to_cams takes
            attributions = attributions.unsqueeze(1)
        maps = reduce_channels(attributions, input_tensor.shape[-2:], "mean")
        return attributions_to_cams(maps, relu=self.relu, normalise=self.normalise)

    def _attribute(self, input_tensor: Tensor, targets: Optional[List[Callable]]) -> Tensor:
        n = input_tensor.shape[0]
        if targets is None:
            with torch.no_grad():
                # a copy: a model working in place must not change the caller's input
                scores = check_model_output(self.model(input_tensor.clone()), "model")
            # argmax would still name a class for NaN scores: an error, never an explained class
            check_finite_output(scores, "AttributionCAM", "the top-class pass of targets=None")
            targets_int: List[Optional[int]] = [int(c) for c in scores.argmax(dim=-1)]
            callables: List[Any] = [None] * n
        else:
            targets_int = [_class_of(t) for t in targets]
            callables = list(targets)
            given = [c for c in targets_int if c is not None]
            if given:  # a class out of range fails here, naming targets, not deep in an index operation
                checked = iter(as_target_list(given, len(given), num_classes_of(self.model, input_tensor)))
                targets_int = [None if c is None else next(checked) for c in targets_int]
        if all(c is not None for c in targets_int):
            return self._bound(input_tensor, targets_int, **self.attribute_kwargs)
        return torch.cat([self._one(input_tensor[i:i + 1], targets_int[i], callables[i]) for i in range(n)])

    def _one(self, image: Tensor, class_index: Optional[int], target: Callable) -> Tensor:
        if class_index is not None:
            return self._bound(image, [class_index], **self.attribute_kwargs)
        if self._bound.input_agnostic:
            raise InvalidArgumentError(
                "targets: InputAgnosticSaliency optimises a class (cross-entropy over the logits); give "
                "ClassifierOutputTarget(k) targets"
            )
        kwargs = dict(self.attribute_kwargs)
        if self._bound.takes_apply_softmax:
            # the callable's value is the explained score: no softmax of the method (RISE's default) over
            # the one hooked output on top (a softmax over one class is 1 whatever the input)
            kwargs.setdefault("apply_softmax", False)
        with HookBag() as bag:
            bag.add(self.model.register_forward_hook(_scored_by(target)))
            return self._bound(image, 0, **kwargs)

    def __enter__(self) -> "AttributionCAM":
        return self

    def __exit__(self, exc_type, exc_value, exc_tb) -> None:
        # nothing to release: no hook outlives a call
        return None
