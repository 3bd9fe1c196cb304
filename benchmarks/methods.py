"""Registry of the attribution methods the benchmark compares.

A method is registered as ``register(name, factory)``; ``factory(model,
layer_info)`` returns a callable ``(inputs, target) -> attributions`` giving
``[N, C, H, W]`` or ``[N, 1, h, w]`` tensors for an ``[N, C, H, W]`` batch.
The benchmark builds every method afresh per model, so a factory may close
over the model and the layer.

The methods that the package's demo also shows come from its line-up
(:data:`captum_global.lineup.LINEUP`, built from ``(model, example_input)``),
so the demo's pictures and these numbers use identical settings:

- ``sise``, ``sise_paper``, ``sise_budget``: ``SISE`` with its defaults / with
  the paper's settings (every kept map scored, hard Otsu fusion, logit
  scores) / with ``max_maps_per_layer=0.25``.
- ``gradcam``: Captum ``LayerGradCam`` on the last spatial block, ReLU on,
  upsampled bilinearly with ``LayerAttribution.interpolate``.
- ``occlusion``: Captum ``Occlusion``, black square window of 1/8 of the
  image side, stride half the window, all channels at once.
- ``integrated_gradients``: Captum ``IntegratedGradients``, black baseline,
  50 steps (Captum's default).

Peers that the demo does not show stay here:

- ``saliency``: Captum ``Saliency`` (absolute gradient).
- ``feature_ablation``: Captum ``FeatureAblation`` on an 8 x 8 grid of cells
  (64 features), ablated to black.
- ``scorecam``, ``gradcam++``: ``ScoreCAM`` / ``GradCAMPlusPlus`` from the
  ``grad-cam`` package (``pytorch_grad_cam``) on the same layer as
  ``gradcam``, targets via ``ClassifierOutputTarget``.
- ``rise``: :class:`captum_global.attr.RISE`, our implementation with
  the paper's defaults (4000 masks, s = 7, p1 = 0.5); ``layer_info.options
  ["rise_masks"]`` lowers the count.
- ``input_agnostic``: ``captum_global.attr.InputAgnosticSaliency`` when the
  package provides it.
"""
import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from captum.attr import FeatureAblation, Saliency
from torch import Tensor, nn

from captum_global.attr import RISE
from captum_global.errors import InvalidArgumentError
from captum_global.lineup import LINEUP, last_spatial_layer
from captum_global.targets import target_classes

__all__ = ["LayerInfo", "register", "available", "get_factory", "BASELINES", "pick_cam_layer", "grid_feature_mask"]

Explainer = Callable[[Tensor, Tensor], Tensor]
Factory = Callable[[nn.Module, "LayerInfo"], Explainer]


@dataclass
class LayerInfo:
    """What a factory may need besides the model.

    Attributes:
        name: dotted name of the CAM layer (the last spatial block).
        layer: that module.
        image_size: ``(H, W)`` of the inputs.
        batch_size: examples (or perturbed inputs) per model call.
        options: method settings, e.g. ``{"rise_masks": 500}``.
        example: an input batch ``[n, C, H, W]``, which the line-up's
            builders need (they raise a ValueError when it is None).
    """

    name: str
    layer: nn.Module
    image_size: Tuple[int, int]
    batch_size: int = 32
    options: Dict[str, Any] = field(default_factory=dict)
    example: Optional[Tensor] = None


_REGISTRY: Dict[str, Factory] = {}


def register(name: str, factory: Factory, overwrite: bool = False) -> None:
    """Add a method under ``name``; refuses to replace one unless ``overwrite``."""
    if not isinstance(name, str) or not name or "," in name:
        raise InvalidArgumentError(f"name must be a non-empty string without commas, got {name!r}")
    if not callable(factory):
        raise InvalidArgumentError(f"factory must be callable (model, layer_info) -> explain, got {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise InvalidArgumentError(f"a method named {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> List[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get_factory(name: str) -> Factory:
    if name not in _REGISTRY:
        raise InvalidArgumentError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def pick_cam_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module]:
    """``(name, module)`` of the line-up's CAM layer (:func:`captum_global.lineup.last_spatial_layer`)."""
    layer = last_spatial_layer(model, example)
    return next(name for name, module in model.named_modules() if module is layer), layer


def grid_feature_mask(height: int, width: int, cells: int = 8) -> Tensor:
    """``[1, 1, H, W]`` long mask numbering ``cells x cells`` grid cells."""
    rows = torch.arange(height) * cells // height
    cols = torch.arange(width) * cells // width
    return (rows.view(-1, 1) * cells + cols.view(1, -1)).view(1, 1, height, width)


def _saliency(model, info):
    method = Saliency(model)
    return lambda x, t: method.attribute(x, target=t, abs=True)


def _from_lineup(spec_name: str) -> Factory:
    build = {spec.name: spec.build for spec in LINEUP}[spec_name]

    def factory(model, info):
        if info.example is None:
            raise InvalidArgumentError(f"{spec_name} is built from an example input: LayerInfo.example is None")
        return build(model, info.example)

    return factory


def _feature_ablation(model, info):
    method = FeatureAblation(model)

    def explain(x, t):
        mask = grid_feature_mask(*x.shape[-2:]).to(x.device)
        return method.attribute(x, target=t, feature_mask=mask, baselines=0,
                                perturbations_per_eval=max(1, info.batch_size // x.shape[0]))

    return explain


def _grad_cam_package(cls_name: str) -> Factory:
    def factory(model, info):
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = getattr(pytorch_grad_cam, cls_name)

        outputs: List[int] = []  # the model's number of outputs, read once (a timed call pays no extra pass)

        def explain(x, t):
            if not outputs:
                with torch.no_grad():
                    outputs.append(model(x[:1]).shape[-1])
            targets = [ClassifierOutputTarget(c) for c in target_classes(t, x.shape[0], outputs[0])]
            # The CAM object hooks the layer when built: build and release it
            # per call so its hooks never run during another method.
            with cls(model=model, target_layers=[info.layer]) as cam:
                cam.batch_size = info.batch_size  # Score-CAM's masked-input batch (default 16)
                with contextlib.redirect_stderr(io.StringIO()):  # Score-CAM's own progress bars
                    maps = cam(input_tensor=x, targets=targets)
            return torch.from_numpy(maps).to(x.device).unsqueeze(1)

        return explain

    return factory


def _rise(model, info):
    method, n_masks = RISE(model), int(info.options.get("rise_masks", 4000))

    def explain(x, t):  # one map per example: RISE repeats it over the channels
        return method.attribute(x, t, n_masks=n_masks, perturbations_per_eval=info.batch_size)[:, :1]

    return explain


register("saliency", _saliency)
register("integrated_gradients", _from_lineup("Integrated Gradients"))
register("gradcam", _from_lineup("Grad-CAM"))
register("gradcam++", _grad_cam_package("GradCAMPlusPlus"))
register("scorecam", _grad_cam_package("ScoreCAM"))
register("occlusion", _from_lineup("Occlusion"))
register("feature_ablation", _feature_ablation)
register("rise", _rise)

BASELINES: Tuple[str, ...] = tuple(available())

register("sise", _from_lineup("SISE"))
register("sise_paper", _from_lineup("SISE (paper settings)"))
register("sise_budget", _from_lineup("SISE (budget 25%)"))


try:
    from captum_global.attr import InputAgnosticSaliency

    def _input_agnostic(model, info):
        method = InputAgnosticSaliency(model)
        return lambda x, t: method.attribute(x, target=t, seed=0)

    register("input_agnostic", _input_agnostic)
except ImportError:
    pass
