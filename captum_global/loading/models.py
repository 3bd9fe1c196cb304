"""Load a user's classifier from a file without running untrusted code.

A model comes either as a **TorchScript** file (``torch.jit.save``; the
file carries its own architecture) or as a **state dict** (a safetensors
file, or a ``torch.save(model.state_dict())`` file read with
``torch.load(weights_only=True)``) together with an architecture: a
torchvision classification model name (built with
``torchvision.models.get_model(name, weights=None, num_classes=...)``) or a
``"module:callable"`` entry point of the user's own code that returns an
``nn.Module``.

Nothing here unpickles arbitrary Python objects: a file saved with
``torch.save(model)`` (a pickled module), or a pickle that would run code
on load, is refused with an error that says how to save the model instead.
TorchScript archives are read by PyTorch's TorchScript loader, which
restores TorchScript code and tensors only, never Python objects.

Models that expect normalised inputs (ImageNet ``mean``/``std``) or another
value range (``[0, 255]``, ``[-1, 1]``) are wrapped in
:class:`NormalizedModel`, so every method of this package passes ``[0, 1]``
images to them, as it does to the reference models.
"""
import difflib
import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from captum_global._checks import check_int, check_number, check_value_range
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.loading.tensors import _check_file, _file_kind, _first_line, _read_tensors

__all__ = ["load_model", "build_architecture", "NormalizedModel", "torchvision_classifiers"]

PathLike = Union[str, Path]
# Keys under which training scripts commonly nest the weights of a checkpoint.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
# Prefixes that wrappers add to every key: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 8


class NormalizedModel(nn.Module):
    """Wrap a model so that it takes ``[0, 1]`` images.

    ``forward(x)`` maps ``x`` from ``[0, 1]`` to ``value_range`` (when
    given), subtracts ``mean`` and divides by ``std`` (per channel, when
    given), and calls the wrapped model. The wrapped model is the submodule
    ``model``, so its layers are named ``"model.<name>"``.

    Args:
        model: the model that expects normalised inputs.
        mean: per-channel means (one value, or one per channel), in the
            units of ``value_range``.
        std: per-channel standard deviations, all > 0.
        value_range: ``(low, high)`` the model's raw input range, e.g.
            ``(0, 255)``; default ``(0, 1)``.

    Examples::

        >>> import torch
        >>> from captum_global.loading import NormalizedModel
        >>> wrapped = NormalizedModel(torch.nn.Identity(), mean=[0.5], std=[0.25])
        >>> wrapped(torch.tensor([[[[0.0, 1.0]]]]))
        tensor([[[[-2.,  2.]]]])
    """

    def __init__(self, model: nn.Module, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None,
                 value_range: Optional[Tuple[float, float]] = None) -> None:
        super().__init__()
        self.model = model
        low, high = check_value_range(value_range) or (0.0, 1.0)
        self.low, self.scale = low, high - low
        self.register_buffer("mean", _per_channel(mean, "mean", default=0.0))
        self.register_buffer("std", _per_channel(std, "std", default=1.0, positive=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((self.low + self.scale * x - self.mean) / self.std)


def _per_channel(values: Optional[Sequence[float]], argument: str, default: float,
                 positive: bool = False) -> Tensor:
    if values is None:
        values = [default]
    if isinstance(values, (int, float)):
        values = [values]
    if len(values) == 0:
        raise InvalidArgumentError(f"{argument} must hold one value or one per channel, got none")
    checked = [check_number(v, f"{argument}[{i}]", minimum=0.0 if positive else None, min_inclusive=not positive)
               for i, v in enumerate(values)]
    return torch.tensor(checked, dtype=torch.float32).reshape(1, -1, 1, 1)


def torchvision_classifiers() -> List[str]:
    """Names of torchvision's image classification models (``get_model`` accepts them)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _state_dict_from(content: Any, path: Path) -> Dict[str, Tensor]:
    """The ``{name: tensor}`` weights in a loaded file (also nested in a checkpoint dict)."""
    def is_weights(value: Any) -> bool:
        return isinstance(value, Mapping) and len(value) > 0 and all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())

    if is_weights(content):
        return dict(content)
    if isinstance(content, Mapping):
        for key in _NESTED_KEYS:
            if is_weights(content.get(key)):
                return dict(content[key])
        keys = [str(k) for k in list(content)[:_SHOWN]]
        raise InvalidArgumentError(
            f"path: {str(path)!r} holds a dict without model weights (top-level keys {keys}); expected "
            f"{{name: tensor}} or a checkpoint with the weights under one of {list(_NESTED_KEYS)}"
        )
    raise InvalidArgumentError(
        f"path: {str(path)!r} holds a {type(content).__name__}, not a state dict {{name: tensor}}"
    )


def _strip_wrapper_prefix(weights: Dict[str, Tensor], expected: Mapping[str, Any]) -> Dict[str, Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in weights) and not any(k.startswith(prefix) for k in expected):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def build_architecture(arch: str, num_classes: Optional[int] = None) -> nn.Module:
    """An untrained model from a torchvision classifier name or ``"package.module:callable"``.

    torchvision models are built with ``weights=None`` (nothing is
    downloaded); the callable gets ``num_classes`` when it accepts it.

    Examples::

        >>> from captum_global.loading import build_architecture
        >>> type(build_architecture("captum_global.world.models:SmallVGG", num_classes=3).fc).__name__
        'Linear'
    """
    if not isinstance(arch, str) or not arch:
        raise InvalidArgumentTypeError(f"arch must be a torchvision model name or 'module:callable', got {arch!r}")
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if ":" not in arch:
        names = torchvision_classifiers()
        if arch not in names:
            close = difflib.get_close_matches(arch, names, n=4)
            hint = f"; did you mean {close}?" if close else f"; torchvision has {len(names)} (e.g. {names[:4]})"
            raise InvalidArgumentError(
                f"arch={arch!r} is not a torchvision classification model nor 'module:callable'{hint}"
            )
        import torchvision.models as tvm

        return tvm.get_model(arch, weights=None, **extra)
    module_name, _, attribute = arch.partition(":")
    parts = attribute.split(".")
    if not module_name or not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise InvalidArgumentError(f"arch={arch!r} must have the form 'package.module:callable'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise InvalidArgumentError(f"arch={arch!r}: cannot import module {module_name!r} ({error})") from None
    except Exception as error:  # the user's module fails while it is imported (SyntaxError, its own errors)
        raise InvalidArgumentError(f"arch={arch!r}: importing module {module_name!r} failed: "
                                   f"{type(error).__name__}: {_first_line(error)}") from None
    for part in parts:
        if not hasattr(target, part):
            raise InvalidArgumentError(f"arch={arch!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InvalidArgumentError(f"arch={arch!r} names a {type(target).__name__}, not a callable")
    if extra and not _accepts(target, "num_classes"):
        extra = {}  # the entry point fixes its own class count; the output check compares it
    try:
        model = target(**extra)
    except Exception as error:  # the user's code: a missing argument, a failing constructor
        raise InvalidArgumentError(
            f"arch={arch!r}: calling it{' with num_classes=' + str(num_classes) if extra else ''} failed: "
            f"{type(error).__name__}: {_first_line(error)}"
        ) from error
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"arch={arch!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _accepts(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def _check_keys(model: nn.Module, weights: Dict[str, Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"path: the weights in {str(path)!r} do not fit arch={arch!r}:"]
    if missing:
        lines.append(f"  {len(missing)} key(s) missing from the file: {missing[:_SHOWN]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} key(s) in the file that the model lacks: {unexpected[:_SHOWN]}")
    if mismatched:
        shown = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
                 for k in mismatched[:_SHOWN]]
        lines.append(f"  {len(mismatched)} shape mismatch(es): {shown}")
        last = mismatched[-1]
        if weights[last].dim() >= 1 and weights[last].shape[1:] == expected[last].shape[1:]:
            lines.append(f"  (the file's classifier has {weights[last].shape[0]} outputs: "
                         f"pass num_classes={weights[last].shape[0]}?)")
    raise InvalidArgumentError("\n".join(lines))


def _check_finite_weights(model: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN or infinity: every map built on them would be meaningless."""
    bad = [name for name, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InvalidArgumentError(f"path: the weights in {str(path)!r} hold NaN or infinite values in "
                                   f"{len(bad)} tensor(s): {bad[:_SHOWN]}")


def _check_runs(model: nn.Module, path: Path, input_shape: Tuple[int, ...], num_classes: Optional[int]) -> None:
    probe = torch.full((1, *input_shape), 0.5)
    try:
        with torch.no_grad():
            output = model(probe)
    except Exception as error:
        raise InvalidArgumentError(
            f"input_shape: the model from {str(path)!r} does not run on inputs of shape "
            f"{(1, *input_shape)}: {_first_line(error)}"
        ) from None
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[0] != 1:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise InvalidArgumentError(
            f"path: the model from {str(path)!r} must return class scores [N, num_classes], got {shape}"
        )
    if num_classes is not None and output.shape[1] != num_classes:
        raise InvalidArgumentError(
            f"num_classes={num_classes} but the model from {str(path)!r} returns {output.shape[1]} scores"
        )
    # every method runs batches: a model that folds its batch into one row (x.view(1, -1)) would
    # otherwise give each example another example's scores, without an error
    try:
        with torch.no_grad():
            batch = model(torch.full((2, *input_shape), 0.5))
    except Exception as error:
        raise InvalidArgumentError(
            f"path: the model from {str(path)!r} runs on one input but not on a batch of inputs of shape "
            f"{(2, *input_shape)}: {_first_line(error)}"
        ) from None
    if not isinstance(batch, Tensor) or tuple(batch.shape) != (2, output.shape[1]):
        shape = tuple(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise InvalidArgumentError(
            f"path: the model from {str(path)!r} returns {shape} for a batch of 2 inputs; it must return one "
            f"row of scores per input, (2, {output.shape[1]}) (does its forward fix the batch size, such as "
            "x.view(1, -1)?)"
        )


def load_model(
    path: PathLike,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    *,
    input_shape: Optional[Sequence[int]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    value_range: Optional[Tuple[float, float]] = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a user's classifier from a file, safely, in eval mode.

    Args:
        path: a TorchScript file, or a state dict: a ``.safetensors`` file
            or a ``torch.save`` file of tensors (read with
            ``weights_only=True``; weights nested under ``"state_dict"`` or
            ``"model"`` and ``"module."`` prefixes are handled). The format
            is read from the content, not the extension.
        arch: for a state dict, the architecture: a torchvision
            classification model name (``"resnet18"``; see
            :func:`torchvision_classifiers`) or ``"package.module:callable"``
            returning an ``nn.Module`` (called with ``num_classes`` when it
            accepts it). Must be ``None`` for a TorchScript file.
        num_classes: number of classes; passed to the architecture and
            checked against the model's output when ``input_shape`` is given.
        input_shape: ``(C, H, W)`` of one input; when given, the model is run
            on it to check that it returns ``[1, num_classes]`` scores, and
            ``[2, num_classes]`` for a batch of two.
        mean, std: per-channel normalisation the model expects; the model is
            then wrapped in :class:`NormalizedModel` and takes ``[0, 1]`` images.
        value_range: ``(low, high)`` raw input range the model expects
            (e.g. ``(0, 255)``); wraps the model the same way.
        map_location: device to load the weights to.

    Returns:
        The model (``nn.Module``, eval mode), wrapped in
        :class:`NormalizedModel` when ``mean``, ``std`` or ``value_range``
        is given.

    Raises:
        InvalidArgumentError: a missing or unreadable file, a pickle of
            Python objects (never unpickled), an unknown architecture,
            missing/unexpected keys or shape mismatches (the message names
            the file and the keys), or a model that does not run on
            ``input_shape``.

    Examples::

        >>> import tempfile, torch, torchvision
        >>> from safetensors.torch import save_file
        >>> from captum_global.loading import load_model
        >>> net = torchvision.models.squeezenet1_1(weights=None, num_classes=4)
        >>> path = tempfile.mkdtemp() + "/weights.safetensors"
        >>> save_file(net.state_dict(), path)
        >>> model = load_model(path, arch="squeezenet1_1", num_classes=4, input_shape=(3, 32, 32),
        ...                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        >>> type(model).__name__, model.training, model(torch.rand(2, 3, 32, 32)).shape
        ('NormalizedModel', False, torch.Size([2, 4]))
    """
    path = _check_file(path, "path")
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", minimum=1)
    if input_shape is not None:
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape:
            raise InvalidArgumentError(f"input_shape must be a sequence such as (3, 224, 224), got {input_shape!r}")
        input_shape = tuple(check_int(v, f"input_shape[{i}]", minimum=1) for i, v in enumerate(input_shape))
    if _file_kind(path) == "torchscript":
        if arch is not None:
            raise InvalidArgumentError(
                f"arch={arch!r} given but {str(path)!r} is a TorchScript model, which carries its own "
                "architecture; leave arch out"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
            try:
                model = torch.jit.load(str(path), map_location=map_location)
            except RuntimeError as error:
                raise InvalidArgumentError(f"path: {str(path)!r} is not a loadable TorchScript file: "
                                           f"{_first_line(error)}") from None
    else:
        weights = _state_dict_from(_read_tensors(path, "path", map_location), path)
        if arch is None:
            raise InvalidArgumentError(
                f"arch is required: {str(path)!r} holds weights only (a state dict); name the architecture "
                "as a torchvision model name such as 'resnet18' or as 'package.module:callable'"
            )
        model = build_architecture(arch, num_classes)
        weights = _strip_wrapper_prefix(weights, model.state_dict())
        _check_keys(model, weights, path, arch)
        model.load_state_dict(weights, strict=True)
        model.to(map_location)
    model.eval()
    _check_finite_weights(model, path)
    if mean is not None or std is not None or value_range is not None:
        model = NormalizedModel(model, mean, std, value_range).to(map_location).eval()
        if input_shape is not None and model.mean.shape[1] not in (1, input_shape[0]):
            raise InvalidArgumentError(f"mean must hold 1 or {input_shape[0]} values, got {model.mean.shape[1]}")
        if input_shape is not None and model.std.shape[1] not in (1, input_shape[0]):
            raise InvalidArgumentError(f"std must hold 1 or {input_shape[0]} values, got {model.std.shape[1]}")
    if input_shape is not None:
        _check_runs(model, path, input_shape, num_classes)
    return model
