"""Load a user's model, tensors and image folders without running untrusted code.

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
import csv
import difflib
import importlib
import inspect
import json
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_global._checks import check_int, check_number, check_value_range
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "load_model",
    "build_architecture",
    "NormalizedModel",
    "torchvision_classifiers",
    "load_tensor",
    "ImageFiles",
    "IMAGE_EXTENSIONS",
]

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
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


def _check_file(path: PathLike, argument: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise InvalidArgumentTypeError(f"{argument} must be a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{argument}: no such file: {str(path)!r}")
    return path


def _file_kind(path: Path) -> str:
    """``"torchscript"``, ``"safetensors"`` or ``"torch"`` (a torch.save file) from the content."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        return "torch"
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9:
        # safetensors: an 8-byte little-endian header length, then a JSON header
        (length,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < length <= path.stat().st_size - 8:
            return "safetensors"
    return "torch"


def _read_tensors(path: Path, argument: str, map_location: Any = "cpu") -> Any:
    """What ``path`` holds, read without unpickling arbitrary objects."""
    kind = _file_kind(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as error:  # a damaged header or data section
            raise InvalidArgumentError(f"{argument}: {str(path)!r} is not a readable safetensors file: {error}")
    if kind == "torchscript":
        raise InvalidArgumentError(
            f"{argument}: {str(path)!r} is a TorchScript model, not a file of tensors"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as error:
        raise InvalidArgumentError(
            f"{argument}: {str(path)!r} cannot be read with torch.load(weights_only=True) ({_unpickling_reason(error)}). "
            "captum_global never unpickles arbitrary Python objects: save the weights with "
            "torch.save(model.state_dict(), path) or safetensors, or the whole model with torch.jit.save"
        ) from None


def _unpickling_reason(error: BaseException) -> str:
    # torch's message suggests weights_only=False; keep only the reason (the refused global)
    for line in str(error).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return re.sub(r"\x1b\[[0-9;]*m", "", line.split("error:", 1)[-1]).split(". Please")[0].strip()
    return re.sub(r"\x1b\[[0-9;]*m", "", _first_line(error))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


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
    for part in parts:
        if not hasattr(target, part):
            raise InvalidArgumentError(f"arch={arch!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise InvalidArgumentError(f"arch={arch!r} names a {type(target).__name__}, not a callable")
    if extra and not _accepts(target, "num_classes"):
        extra = {}  # the entry point fixes its own class count; the output check compares it
    model = target(**extra)
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
            once on it to check that it returns ``[1, num_classes]`` scores.
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
    if mean is not None or std is not None or value_range is not None:
        model = NormalizedModel(model, mean, std, value_range).to(map_location).eval()
        if input_shape is not None and model.mean.shape[1] not in (1, input_shape[0]):
            raise InvalidArgumentError(f"mean must hold 1 or {input_shape[0]} values, got {model.mean.shape[1]}")
        if input_shape is not None and model.std.shape[1] not in (1, input_shape[0]):
            raise InvalidArgumentError(f"std must hold 1 or {input_shape[0]} values, got {model.std.shape[1]}")
    if input_shape is not None:
        _check_runs(model, path, input_shape, num_classes)
    return model


def load_tensor(path: PathLike, argument: str = "path", dims: Optional[Sequence[int]] = None) -> Tensor:
    """One tensor from a safetensors file or a ``torch.save`` file, read safely.

    The file holds a tensor, or a mapping with exactly one tensor (a
    safetensors file always is a mapping). Never unpickles Python objects.

    Args:
        path: the file.
        argument: the name used in error messages (e.g. ``"--clean"``).
        dims: allowed numbers of dimensions, e.g. ``(4,)``.

    Examples::

        >>> import tempfile, torch
        >>> from captum_global.loading import load_tensor
        >>> path = tempfile.mkdtemp() + "/images.pt"
        >>> torch.save(torch.zeros(2, 3, 8, 8), path)
        >>> load_tensor(path, dims=(4,)).shape
        torch.Size([2, 3, 8, 8])
    """
    path = _check_file(path, argument)
    content = _read_tensors(path, argument)
    if isinstance(content, Mapping):
        tensors = [v for v in content.values() if isinstance(v, Tensor)]
        if len(tensors) != 1 or len(content) != 1:
            raise InvalidArgumentError(
                f"{argument}: {str(path)!r} must hold one tensor, got keys {[str(k) for k in list(content)[:_SHOWN]]}"
            )
        content = tensors[0]
    if not isinstance(content, Tensor):
        raise InvalidArgumentError(f"{argument}: {str(path)!r} holds a {type(content).__name__}, not a tensor")
    if dims is not None and content.dim() not in dims:
        raise InvalidArgumentError(f"{argument}: {str(path)!r} holds a tensor of shape {tuple(content.shape)}; "
                                   f"expected {' or '.join(f'{d}-D' for d in dims)}")
    return content


class ImageFiles(Dataset):
    """The image files of a folder (and its sub-folders) as a dataset, in sorted order.

    Item ``i`` is the image ``[C, H, W]`` in ``[0, 1]`` (RGB for
    ``channels=3``, grey for ``channels=1``), resized to ``size``; or
    ``(image, label)`` when ``labels`` is given.

    Args:
        root: the folder.
        size: ``(H, W)`` every image is resized to (bilinear); default the
            size of the first image (then all images must have it).
        channels: 3 or 1.
        labels: a CSV file of ``file,label`` rows (an optional header row),
            a JSON file ``{"file": label}``, or a mapping; files are named by
            their path relative to ``root`` with ``/`` separators.

    Attributes:
        names: the relative file names, in item order.
        labels: the labels in item order, or ``None``.
    """

    def __init__(self, root: PathLike, size: Optional[Tuple[int, int]] = None, channels: int = 3,
                 labels: Union[None, PathLike, Mapping[str, int]] = None) -> None:
        from PIL import Image

        root = Path(root)
        if not root.is_dir():
            raise InvalidArgumentError(f"images: no such folder: {str(root)!r}")
        self.root = root
        self.files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise InvalidArgumentError(f"images: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r}")
        self.names = [p.relative_to(root).as_posix() for p in self.files]
        self.channels = check_int(channels, "channels", minimum=1)
        if self.channels not in (1, 3):
            raise InvalidArgumentError(f"channels must be 1 or 3, got {channels}")
        if size is None:
            with Image.open(self.files[0]) as first:
                size = (first.height, first.width)
        self.size = (check_int(size[0], "size[0]", minimum=1), check_int(size[1], "size[1]", minimum=1))
        self.labels = None if labels is None else _labels_for(self.names, labels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import numpy as np
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB" if self.channels == 3 else "L")
                if (image.height, image.width) != self.size:
                    image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
                array = np.asarray(image, dtype=np.float32) / 255.0
        except OSError as error:
            raise InvalidArgumentError(f"images: cannot read {str(path)!r}: {error}") from None
        tensor = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1)).permute(2, 0, 1).contiguous()
        return tensor if self.labels is None else (tensor, self.labels[index])


def _labels_for(names: List[str], labels: Union[PathLike, Mapping[str, int]]) -> List[int]:
    if not isinstance(labels, Mapping):
        path = _check_file(labels, "labels")
        text = path.read_text()
        if path.suffix.lower() == ".json":
            try:
                labels = json.loads(text)
            except json.JSONDecodeError as error:
                raise InvalidArgumentError(f"labels: {str(path)!r} is not valid JSON: {error}") from None
            if not isinstance(labels, dict):
                raise InvalidArgumentError(f"labels: {str(path)!r} must hold a JSON object {{file: label}}")
        else:
            rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
            if rows and not rows[0][-1].strip().lstrip("-").isdigit():
                rows = rows[1:]  # a header row
            if any(len(r) != 2 for r in rows):
                raise InvalidArgumentError(f"labels: {str(path)!r} must have rows 'file,label'")
            labels = {r[0].strip(): r[1].strip() for r in rows}
    missing = [n for n in names if n not in labels]
    if missing:
        raise InvalidArgumentError(f"labels: no label for {len(missing)} image(s), e.g. {missing[:_SHOWN]}")
    out = []
    for name in names:
        value = labels[name]
        try:
            out.append(check_int(int(value) if isinstance(value, str) else value, f"labels[{name!r}]", minimum=0))
        except ValueError:
            raise InvalidArgumentError(f"labels[{name!r}] must be a class index, got {value!r}") from None
    return out
