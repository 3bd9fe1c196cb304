"""Registry of the attribution methods the benchmark compares.

A method is registered as ``register(name, factory)``; ``factory(model,
layer_info)`` returns a callable ``(inputs, target) -> attributions`` giving
``[N, C, H, W]`` or ``[N, 1, h, w]`` tensors for an ``[N, C, H, W]`` batch.
The benchmark builds every method afresh per model, so a factory may close
over the model and the layer.

Baselines (Captum and the peers users choose instead of us):

- ``saliency``: Captum ``Saliency`` (absolute gradient).
- ``integrated_gradients``: Captum ``IntegratedGradients``, black baseline,
  50 steps (Captum's default).
- ``gradcam``: Captum ``LayerGradCam`` on the CAM layer, ReLU on, upsampled
  bilinearly to the input with ``LayerAttribution.interpolate``.
- ``occlusion``: Captum ``Occlusion``, black square window of 1/8 of the
  image side (8 px at 64 px, 28 px at 224 px), stride half the window, all
  channels at once.
- ``feature_ablation``: Captum ``FeatureAblation`` on an 8 x 8 grid of cells
  (64 features), ablated to black.
- ``scorecam``, ``gradcam++``: ``ScoreCAM`` / ``GradCAMPlusPlus`` from the
  ``grad-cam`` package (``pytorch_grad_cam``) on the CAM layer, targets via
  ``ClassifierOutputTarget``; they return numpy ``[N, H, W]``.
- ``rise``: :class:`benchmarks.rise.RISE`, our baseline implementation with
  the paper's defaults (4000 masks, s = 7, p1 = 0.5); ``layer_info.options
  ["rise_masks"]`` lowers the count for quick runs.

captum_global's own methods (``sise``, ``input_agnostic``) register below
when ``captum_global.attr`` provides them.
"""
import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import torch
from captum.attr import (
    FeatureAblation,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from benchmarks.rise import RISE

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
    """

    name: str
    layer: nn.Module
    image_size: Tuple[int, int]
    batch_size: int = 32
    options: Dict[str, Any] = field(default_factory=dict)


_REGISTRY: Dict[str, Factory] = {}


def register(name: str, factory: Factory, overwrite: bool = False) -> None:
    """Add a method under ``name``; refuses to replace one unless ``overwrite``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a method named {name!r} is already registered")
    _REGISTRY[name] = factory


def available() -> List[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def get_factory(name: str) -> Factory:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def pick_cam_layer(model: nn.Module, example: Tensor) -> Tuple[str, nn.Module]:
    """The last spatial block of ``model``: where CAM methods read it.

    Uses SISE's block discovery (``captum_global.attr._layers``) when it is
    available; otherwise the last leaf module whose output is a spatial map
    (``[N, C, h, w]``, h, w > 1) in one traced forward pass.
    """
    try:
        from captum_global.attr._layers import find_block_outputs
    except ImportError:
        find_block_outputs = None
    if find_block_outputs is not None:
        last = find_block_outputs(model, example[:1])[-1]
        return last.name, last.module
    seen: List[Tuple[str, nn.Module]] = []
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            def hook(mod, args, out, name=name):
                if isinstance(out, Tensor) and out.dim() == 4 and min(out.shape[-2:]) > 1:
                    seen.append((name, mod))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("model has no layer with a spatial [N, C, h, w] output for CAM methods")
    return seen[-1]


def grid_feature_mask(height: int, width: int, cells: int = 8) -> Tensor:
    """``[1, 1, H, W]`` long mask numbering ``cells x cells`` grid cells."""
    rows = torch.arange(height) * cells // height
    cols = torch.arange(width) * cells // width
    return (rows.view(-1, 1) * cells + cols.view(1, -1)).view(1, 1, height, width)


def _saliency(model, info):
    method = Saliency(model)
    return lambda x, t: method.attribute(x, target=t, abs=True)


def _integrated_gradients(model, info):
    method = IntegratedGradients(model)
    return lambda x, t: method.attribute(x, target=t, n_steps=50, internal_batch_size=info.batch_size)


def _gradcam(model, info):
    method = LayerGradCam(model, info.layer)

    def explain(x, t):
        cam = method.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    return explain


def _occlusion(model, info):
    method = Occlusion(model)

    def explain(x, t):
        side = max(1, round(x.shape[-1] / 8))
        stride = max(1, side // 2)
        c = x.shape[1]
        return method.attribute(x, target=t, sliding_window_shapes=(c, side, side), strides=(c, stride, stride),
                                baselines=0, perturbations_per_eval=max(1, info.batch_size // x.shape[0]))

    return explain


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

        def explain(x, t):
            targets = [ClassifierOutputTarget(int(c)) for c in torch.as_tensor(t).reshape(-1).expand(x.shape[0])]
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
    method = RISE(model, n_masks=int(info.options.get("rise_masks", 4000)), batch_size=info.batch_size)
    return method.attribute


register("saliency", _saliency)
register("integrated_gradients", _integrated_gradients)
register("gradcam", _gradcam)
register("gradcam++", _grad_cam_package("GradCAMPlusPlus"))
register("scorecam", _grad_cam_package("ScoreCAM"))
register("occlusion", _occlusion)
register("feature_ablation", _feature_ablation)
register("rise", _rise)

BASELINES: Tuple[str, ...] = tuple(available())

# captum_global's own methods join when the package provides them.
try:
    from captum_global.attr import SISE

    def _sise(model, info):
        method = SISE(model)
        return lambda x, t: method.attribute(x, target=t, perturbations_per_eval=info.batch_size)

    register("sise", _sise)
except ImportError:
    pass

try:
    from captum_global.attr import InputAgnosticSaliency

    def _input_agnostic(model, info):
        method = InputAgnosticSaliency(model)
        return lambda x, t: method.attribute(x, target=t, seed=0)

    register("input_agnostic", _input_agnostic)
except ImportError:
    pass
