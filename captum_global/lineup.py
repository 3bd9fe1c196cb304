"""The attribution methods that the demo and the benchmark run side by side.

Each entry is a factory ``build(model, example_input) -> explain`` where
``explain(inputs, target) -> attribution`` follows Captum's shape rules
(input-shaped ``[N, C, H, W]`` or a ``[N, 1, H, W]`` map). Keeping the
line-up in one place means the demo's pictures and the benchmark's numbers
come from exactly the same method settings.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import Tensor, nn

from captum_global._model_state import find_module
from captum_global.attr import SISE, select_sise_layers

__all__ = ["MethodSpec", "LINEUP", "build_lineup", "last_spatial_layer"]

Explain = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """A named attribution recipe: ``build(model, example_input) -> explain``."""

    name: str
    build: Callable[[nn.Module, Tensor], Explain]
    family: str  # "ours" or "captum"


def last_spatial_layer(model: nn.Module, example_input: Tensor) -> nn.Module:
    """The deepest block output with a spatial map: the usual Grad-CAM layer."""
    return find_module(model, select_sise_layers(model, example_input[:1])[-1])


def _sise(batch: int = 64, **options) -> Callable[[nn.Module, Tensor], Explain]:
    def build(model: nn.Module, example_input: Tensor) -> Explain:
        sise = SISE(model)
        # extra keywords (e.g. return_layer_maps) pass through, so a caller that
        # also wants the per-block maps needs no second SISE run
        return lambda x, t, **kw: sise.attribute(x, target=t, perturbations_per_eval=batch, **{**options, **kw})

    return build


# SISE as the paper describes it: every kept map scored, logit scores, hard
# Otsu gates (the package's default before adaptive mask selection).
SISE_PAPER_SETTINGS = {"similarity_threshold": None, "fusion": "otsu", "score": "logit"}


def _grad_cam(model: nn.Module, example_input: Tensor) -> Explain:
    cam = LayerGradCam(model, last_spatial_layer(model, example_input))

    def explain(x: Tensor, t: Tensor) -> Tensor:
        layer_map = cam.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(layer_map, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    return explain


def _occlusion(model: nn.Module, example_input: Tensor) -> Explain:
    # Window one eighth of the image side, stride half a window: the usual
    # trade-off between resolution and the number of forward passes.
    channels, height, width = example_input.shape[1:]
    win = max(2, height // 8)
    occ = Occlusion(model)
    return lambda x, t: occ.attribute(
        x, target=t, sliding_window_shapes=(channels, win, win), strides=(channels, win // 2, win // 2),
        perturbations_per_eval=64,
    )


def _integrated_gradients(model: nn.Module, example_input: Tensor) -> Explain:
    # Captum's default 50 steps: what a user gets without tuning (the
    # benchmark reports this same recipe).
    ig = IntegratedGradients(model)
    return lambda x, t: ig.attribute(x, target=t, n_steps=50, internal_batch_size=64)


LINEUP: List[MethodSpec] = [
    MethodSpec("SISE", _sise(), "ours"),
    MethodSpec("SISE (paper settings)", _sise(**SISE_PAPER_SETTINGS), "ours"),
    MethodSpec("SISE (budget 25%)", _sise(max_maps_per_layer=0.25), "ours"),
    MethodSpec("Grad-CAM", _grad_cam, "captum"),
    MethodSpec("Occlusion", _occlusion, "captum"),
    MethodSpec("Integrated Gradients", _integrated_gradients, "captum"),
]


def build_lineup(model: nn.Module, example_input: Tensor, names: Sequence[str] = ()) -> Dict[str, Explain]:
    """Instantiate the named methods (all of them when ``names`` is empty)."""
    known = {spec.name: spec for spec in LINEUP}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method names {unknown}; expected some of {list(known)}")
    chosen = [known[n] for n in names] if names else LINEUP
    return {spec.name: spec.build(model, example_input) for spec in chosen}
