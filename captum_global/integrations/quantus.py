"""An ``explain_func`` for quantus: any captum_global or Captum attribution, by name or object.

quantus (0.6) evaluates explanations by calling
``explain_func(model=..., inputs=..., targets=..., **explain_func_kwargs)``
with NumPy arrays, again and again (on perturbed inputs for robustness, on
re-initialised copies of the model for randomisation). :func:`explain` is
such a function: it turns the arrays into tensors on the model's device,
runs the chosen method on the model quantus passes, and returns NumPy
``[N, 1, H, W]`` maps. Pass it as ``explain_func`` and choose the method in
``explain_func_kwargs``, as with quantus's own ``quantus.explain``.

One channel, not one per colour: SISE and InputAgnosticSaliency broadcast
one map over the colour channels, and quantus would otherwise count it once
per channel (its metrics sum or compare every element).

InputAgnosticSaliency never reads the input values: its map for a class is
the same for every image. Robustness metrics that perturb the input
(quantus's MaxSensitivity, AvgSensitivity, LocalLipschitzEstimate, Captum's
``sensitivity_max``) therefore report a perfect 0 for it by construction,
which says nothing about its quality; :func:`explain` warns about it
(:class:`InputAgnosticWarning`).
"""
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from captum_global._checks import check_module, check_tensor
from captum_global.errors import InvalidArgumentError
from captum_global.integrations._methods import (
    MethodLike,
    as_target_list,
    bind_method,
    isolated_run,
    num_classes_of,
    reduce_channels,
)

__all__ = ["explain", "InputAgnosticWarning"]


class InputAgnosticWarning(UserWarning):
    """The method does not read its input, so input-perturbation metrics score it 0 by construction."""


_INPUT_AGNOSTIC_MESSAGE = (
    "InputAgnosticSaliency does not read the input values (its map depends on the model and the class "
    "only), so robustness metrics that perturb the input (quantus MaxSensitivity, AvgSensitivity, "
    "LocalLipschitzEstimate, Captum sensitivity_max) report a perfect 0 by construction: that number "
    "says nothing about the explanation. Compare it on faithfulness, localisation and randomisation metrics."
)


def _device_of(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def explain(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    method: MethodLike = "SISE",
    device: Any = None,
    layer: Any = None,
    init_kwargs: Optional[Dict[str, Any]] = None,
    channel_reduce: str = "mean",
    **attribute_kwargs: Any,
) -> np.ndarray:
    r"""Explain a batch for quantus with any captum_global or Captum attribution.

    Args:
        model (nn.Module): the model quantus passes (the user's model, or a
                    re-initialised copy of it in randomisation metrics).
        inputs (np.ndarray or Tensor): ``[N, C, H, W]`` channel-first batch.
        targets (np.ndarray, list, int or Tensor): one class per example
                    (or one for all).
        method (str, class, Attribution or MethodSpec): the attribution.
                    A name of a class of :mod:`captum_global.attr` or
                    ``captum.attr`` (``"SISE"``, ``"InputAgnosticSaliency"``,
                    ``"Saliency"``, ``"LayerGradCam"``...); the class itself;
                    an attribution object (run as it is on its own model;
                    on another model, a copy is rebound by module names); or
                    a line-up recipe (:data:`captum_global.lineup.LINEUP`).
                    Default: ``"SISE"``
        device (str or torch.device, optional): the device quantus asks
                    for (its metrics add this keyword); inputs go there.
                    Never passed on to ``attribute``. Default: the device of
                    the model's parameters.
        layer (nn.Module, str or list, optional): the layer of a Captum
                    layer method (default: the deepest spatial block
                    output, as the line-up's Grad-CAM uses), or SISE's
                    layers (default: automatic).
        init_kwargs (dict, optional): constructor keywords when ``method`` is
                    a name or a class.
        channel_reduce (str): ``"mean"`` over channels (a channel-broadcast
                    map stays itself; for per-channel attributions this is
                    quantus's channel sum divided by ``C``), ``"sum"``
                    (quantus's own reduction for Captum methods) or
                    ``"none"`` (keep every channel). Default: ``"mean"``
        **attribute_kwargs: passed to ``attribute`` (e.g. ``n_steps``,
                    ``sliding_window_shapes``). A method whose
                    ``attribute`` takes a ``seed`` gets ``seed=0`` unless
                    given, so that the explanation is a function of model,
                    input and target, as quantus's metrics assume. For
                    the same reason the method runs in eval mode (the
                    model's flags are restored) with the global RNG seeded
                    from that seed (0 for methods without one, such as
                    NoiseTunnel) and the caller's RNG restored afterwards.

    Returns:
        *np.ndarray* of float32 maps ``[N, 1, H, W]`` (``[N, C, H, W]`` with
        ``channel_reduce="none"``), at the input's size.

    Raises:
        InvalidArgumentError: an unknown method, a tuple input, targets of
            the wrong length.

    Warns:
        InputAgnosticWarning: for InputAgnosticSaliency (robustness metrics
            score it 0 by construction).

    Examples::

        >>> import numpy as np, torch
        >>> from torch import nn
        >>> from captum_global.integrations.quantus import explain
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
        >>> maps = explain(net, x, np.array([0, 2]), method="Saliency")
        >>> maps.shape, maps.dtype
        ((2, 1, 16, 16), dtype('float32'))

    With quantus (``pip install quantus``)::

        metric = quantus.MaxSensitivity(nr_samples=10)
        scores = metric(model=net, x_batch=x, y_batch=y, device="cpu",
                        explain_func=explain, explain_func_kwargs={"method": "SISE"})
    """
    check_module(model, "model", "quantus passes the model to explain")
    bound = bind_method(method, model, layer=layer, init_kwargs=init_kwargs)
    if bound.input_agnostic:
        warnings.warn(_INPUT_AGNOSTIC_MESSAGE, InputAgnosticWarning, stacklevel=2)
    if isinstance(inputs, tuple):
        raise InvalidArgumentError("inputs must be one [N, C, H, W] array; quantus passes one batch")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
    x = x.to(device=_device_of(model, device), dtype=dtype)
    if x.dim() != 4:
        raise InvalidArgumentError(f"inputs must be a channel-first image batch [N, C, H, W], got {tuple(x.shape)}")
    x = check_tensor(x, "inputs", dims=(4,))
    target = torch.tensor(as_target_list(targets, x.shape[0], num_classes_of(model, x)), device=x.device)
    if bound.takes_seed:
        attribute_kwargs.setdefault("seed", 0)
    with isolated_run(model, bound, attribute_kwargs, x):
        attributions = bound(x, target, **attribute_kwargs)
    maps = reduce_channels(attributions, x.shape[-2:], channel_reduce)
    return maps.cpu().numpy().astype(np.float32)
