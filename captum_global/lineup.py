"""The attribution methods that the demo and the benchmark run side by side.

Each entry is a :class:`MethodSpec` whose ``build(model, example_input)``
returns an :data:`Explain`: ``explain(inputs, target) -> Tensor``, an
attribution that follows Captum's shape rules (input-shaped ``[N, C, H, W]``
or a ``[N, 1, H, W]`` map), never a pair. Keeping the line-up in one place
means the demo's pictures and the benchmark's numbers come from exactly the
same method settings.

Every ``explain`` follows the package's contract whatever method it wraps:
``inputs`` must be a finite ``[N, C, H, W]`` tensor, and ``target`` takes
every format Captum accepts plus NumPy integers, checked against the
model's output (learnt from one no-grad forward pass of ``example_input``
when the method is built) and handed to the method in Captum's own form;
a bad one raises :class:`~captum_global.errors.InvalidArgumentError` naming
``target`` before any work. Every method explains the model in eval mode
and hands it back as it came (``training`` and ``requires_grad`` flags,
batch-norm statistics), Captum's methods included.

A method that has intermediate maps worth showing (SISE's per-block maps)
says so with an optional second builder, ``build_with_parts``, whose
callable returns ``(attribution, {part name: [N, 1, H, W] map})`` from the
same single run; :func:`build_lineup_with_parts` gives every method that
form (with no parts for the others), so a caller never asks for a method by
name to get its details.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion
from torch import Tensor, nn

from captum_global._checks import check_model_output, check_module, check_tensor
from captum_global._model_state import find_module, preserved_model_state
from captum_global._targets import parse_target
from captum_global.attr import SISE, select_sise_layers
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "Explain",
    "ExplainWithParts",
    "MethodSpec",
    "LINEUP",
    "SISE_PAPER_SETTINGS",
    "build_lineup",
    "build_lineup_with_parts",
    "last_spatial_layer",
]

Explain = Callable[[Tensor, Any], Tensor]
ExplainWithParts = Callable[[Tensor, Any], Tuple[Tensor, Dict[str, Tensor]]]
Builder = Callable[[nn.Module, Tensor], Explain]
PartsBuilder = Callable[[nn.Module, Tensor], ExplainWithParts]


@dataclass(frozen=True)
class MethodSpec:
    """A named attribution recipe.

    Attributes:
        name: the name shown in figures and tables.
        build: ``build(model, example_input) -> explain``, with
            ``explain(inputs, target) -> Tensor``.
        family: ``"ours"`` or ``"captum"``.
        build_with_parts: optional ``build_with_parts(model, example_input)
            -> explain`` with ``explain(inputs, target) -> (attribution,
            {part name: [N, 1, H, W] map})``, the same attribution as
            ``build``'s plus the maps it was made from, in one run.
        parts_caption: what the parts are, for figure titles.
        parts_file: file stem of the demo's parts figure.
    """

    name: str
    build: Builder
    family: str
    build_with_parts: Optional[PartsBuilder] = None
    parts_caption: str = ""
    parts_file: str = ""


def last_spatial_layer(model: nn.Module, example_input: Tensor) -> nn.Module:
    """The deepest block output with a spatial map: the usual Grad-CAM layer."""
    return find_module(model, select_sise_layers(model, example_input[:1])[-1])


def _output_shape(model: nn.Module, example_input: Tensor) -> Tuple[int, ...]:
    with preserved_model_state(model), torch.no_grad():
        return tuple(check_model_output(model(example_input[:1]), "model").shape)


def _captum_target(target: Any, inputs: Tensor, output_shape: Tuple[int, ...]) -> Any:
    """``target`` checked, in the form every Captum method takes (NumPy integers included)."""
    parsed = parse_target(target, inputs.shape[0]).checked(output_shape)
    if parsed.index is None:
        return None
    if parsed.index.shape[1] == 1:
        return parsed.index[:, 0].to(inputs.device)
    return [tuple(int(v) for v in row) for row in parsed.index]


def _on_contract(raw_build: Callable[[nn.Module, Tensor], Callable]) -> Callable[[nn.Module, Tensor], Callable]:
    """A builder whose explain checks ``inputs`` and ``target`` before calling the method."""

    def build(model: nn.Module, example_input: Tensor):
        check_module(model, "model")
        example_input = check_tensor(example_input, "example_input", dims=(4,))
        output_shape = _output_shape(model, example_input)
        raw = raw_build(model, example_input)

        def explain(inputs: Tensor, target: Any = None):
            inputs = check_tensor(inputs, "inputs", dims=(4,))
            captum_target = _captum_target(target, inputs, output_shape)
            with preserved_model_state(model):
                return raw(inputs, captum_target)

        return explain

    return build


#: SISE's options for the paper's settings: every kept map scored, logit
#: scores, hard Otsu gates (the package's defaults before adaptive mask
#: selection). ``SISE(model).attribute(x, target=t, **SISE_PAPER_SETTINGS)``.
SISE_PAPER_SETTINGS = {"similarity_threshold": None, "fusion": "otsu", "score": "logit"}


def _sise(batch: int = 64, **options) -> Tuple[Builder, PartsBuilder]:
    """SISE's two builders (plain, and with per-block maps), sharing one setting."""

    def run(model: nn.Module, with_parts: bool):
        sise = SISE(model)
        return lambda x, t: sise.attribute(x, target=t, perturbations_per_eval=batch, return_layer_maps=with_parts,
                                           **options)

    return (_on_contract(lambda model, example_input: run(model, False)),
            _on_contract(lambda model, example_input: run(model, True)))


@_on_contract
def _grad_cam(model: nn.Module, example_input: Tensor) -> Explain:
    cam = LayerGradCam(model, last_spatial_layer(model, example_input))

    def explain(x: Tensor, t: Any) -> Tensor:
        layer_map = cam.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(layer_map, tuple(x.shape[-2:]), interpolate_mode="bilinear")

    return explain


@_on_contract
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


@_on_contract
def _integrated_gradients(model: nn.Module, example_input: Tensor) -> Explain:
    # Captum's default 50 steps: what a user gets without tuning (the
    # benchmark reports this same recipe).
    ig = IntegratedGradients(model)
    return lambda x, t: ig.attribute(x, target=t, n_steps=50, internal_batch_size=64)


_SISE_FULL, _SISE_FULL_PARTS = _sise()
_SISE_BUDGET, _ = _sise(max_maps_per_layer=0.25)

LINEUP: List[MethodSpec] = [
    MethodSpec("SISE", _SISE_FULL, "ours", build_with_parts=_SISE_FULL_PARTS,
               parts_caption="each block's map V, then the fused map", parts_file="sise_blocks"),
    MethodSpec("SISE (paper settings)", _sise(**SISE_PAPER_SETTINGS)[0], "ours"),
    MethodSpec("SISE (budget 25%)", _SISE_BUDGET, "ours"),
    MethodSpec("Grad-CAM", _grad_cam, "captum"),
    MethodSpec("Occlusion", _occlusion, "captum"),
    MethodSpec("Integrated Gradients", _integrated_gradients, "captum"),
]


def _chosen(model: Any, example_input: Any, names: Any) -> List[MethodSpec]:
    check_module(model, "model")
    check_tensor(example_input, "example_input", dims=(4,))
    if isinstance(names, (str, bytes)) or not isinstance(names, (list, tuple)):
        raise InvalidArgumentTypeError(
            f"names must be a list or tuple of method names (e.g. ['SISE']), got {type(names).__name__} {names!r}"
        )
    known = {spec.name: spec for spec in LINEUP}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgumentError(f"names holds unknown method names {unknown}; expected some of {list(known)}")
    return [known[n] for n in names] if names else list(LINEUP)


def build_lineup(model: nn.Module, example_input: Tensor, names: Sequence[str] = ()) -> Dict[str, Explain]:
    """Instantiate the named methods (all of them when ``names`` is empty).

    Args:
        model: the classifier to explain.
        example_input: an ``[n, C, H, W]`` batch; its shape sets the layer
            and window choices.
        names: method names of :data:`LINEUP`; empty for all.

    Returns:
        ``{name: explain}`` with ``explain(inputs, target) -> Tensor``.

    Examples::

        >>> import torch
        >>> from captum_global.lineup import build_lineup
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 3, 16, 16)
        >>> explain = build_lineup(net, x, ["Grad-CAM"])["Grad-CAM"]
        >>> explain(x, [0, 2]).shape
        torch.Size([2, 1, 16, 16])
    """
    return {spec.name: spec.build(model, example_input) for spec in _chosen(model, example_input, names)}


def _no_parts(explain: Explain) -> ExplainWithParts:
    return lambda x, t: (explain(x, t), {})


def build_lineup_with_parts(
    model: nn.Module, example_input: Tensor, names: Sequence[str] = ()
) -> Dict[str, ExplainWithParts]:
    """As :func:`build_lineup`, but every ``explain`` returns ``(attribution, parts)``.

    ``parts`` is ``{part name: [N, 1, H, W] map}`` for a method with a
    ``build_with_parts`` (from the same run as the attribution) and ``{}``
    for the others.

    Examples::

        >>> import torch
        >>> from captum_global.lineup import build_lineup_with_parts
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        ...                           torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(1, 3, 16, 16)
        >>> explainers = build_lineup_with_parts(net, x, ["SISE", "Grad-CAM"])
        >>> attr, parts = explainers["SISE"](x, 1)
        >>> attr.shape, sorted(parts)
        (torch.Size([1, 3, 16, 16]), ['1', '4'])
        >>> explainers["Grad-CAM"](x, 1)[1]
        {}
    """
    return {
        spec.name: (spec.build_with_parts(model, example_input) if spec.build_with_parts is not None
                    else _no_parts(spec.build(model, example_input)))
        for spec in _chosen(model, example_input, names)
    }
