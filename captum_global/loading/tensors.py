"""Read tensors from files without unpickling Python objects.

The format of a file is read from its content, not its extension: a
safetensors file (read with ``safetensors``), a TorchScript archive (left
to :func:`~captum_global.loading.load_model`), or a ``torch.save`` file,
read with ``torch.load(weights_only=True)``, which refuses every Python
object that is not a tensor or a plain container, so no code in the file
ever runs.
"""
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["load_tensor"]

PathLike = Union[str, Path]
_SHOWN = 8


def _check_file(path: PathLike, argument: str) -> Path:
    if not isinstance(path, (str, Path)):
        raise InvalidArgumentTypeError(f"{argument} must be a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"{argument}: no such file: {str(path)!r}")
    try:  # a file without read permission, or one the system cannot read, is refused here by name
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise InvalidArgumentError(f"{argument}: cannot read {str(path)!r}: {error.strerror or error}") from None
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
    with open(path, "rb") as handle:
        damaged_zip = handle.read(4) == b"PK\x03\x04" and not zipfile.is_zipfile(path)
    if damaged_zip:  # a zip archive whose end is missing: damage, not a refused pickle
        raise InvalidArgumentError(
            f"{argument}: {str(path)!r} is a damaged or truncated zip archive (the format of torch.save and "
            "torch.jit.save files); copy or save the file again"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # any refusal or damage (torch.load hands '.safetensors' names to safetensors)
        raise InvalidArgumentError(
            f"{argument}: {str(path)!r} cannot be read with torch.load(weights_only=True) "
            f"({_unpickling_reason(error)}). "
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
    if len(text) > 1 and "TorchScript interpreter" in text[0]:
        # a TorchScript model's error starts with a generic line and a traceback of its code;
        # the reason ("RuntimeError: Given groups=1, ...") is the last line
        return text[-1].strip()
    return text[0] if text else type(error).__name__



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
