"""The on-disk format of dataset explanations, and its reader.

A folder written by :func:`~captum_global.explain.explain_dataset` holds:

- ``index.json``: ``format`` (``"captum_global.explanations/1"``),
  ``complete`` (false while a run is unfinished), ``settings`` (method,
  its source, layer, attribute keywords, target rule, shard size, seed, and
  SHA-256 digests of the model's weights, of the example names and of a
  tensor's content: a rerun with the same settings resumes, any other is
  refused), ``num_examples``,
  ``shard_size``, ``num_shards``, ``names`` (one per example: file names
  relative to the image folder, else the dataset index), and once
  complete ``targets`` (the class explained for each example),
  ``map_shape`` and ``dtype`` of one map, and ``shards``: a list of
  ``{"file", "start", "stop"}`` (examples ``start`` to ``stop - 1``).
- ``shard-00000.safetensors``, ... one per batch of ``shard_size``
  consecutive examples: tensors ``attributions`` ``[n, *map_shape]`` (as
  the method returned them; layer methods upsampled to the input's size),
  ``targets`` ``[n]`` int64 and ``indices`` ``[n]`` int64 (the examples'
  positions in the dataset).

safetensors files are read by ``safetensors`` in PyTorch, NumPy, JAX or
TensorFlow without running code, e.g.
``safetensors.numpy.load_file("shard-00000.safetensors")["attributions"]``.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_global.errors import InvalidArgumentError

__all__ = ["FORMAT", "INDEX_FILE", "Explanations", "read_explanations", "shard_file_name"]

FORMAT = "captum_global.explanations/1"
INDEX_FILE = "index.json"


def shard_file_name(k: int) -> str:
    """File name of shard ``k`` (``shard-00000.safetensors``)."""
    return f"shard-{k:05d}.safetensors"


@dataclass(frozen=True)
class Explanations:
    """A complete folder of dataset explanations (see the module docstring for the format).

    Attributes:
        folder: the folder.
        index: the parsed ``index.json``.
    """

    folder: Path
    index: Dict[str, Any]

    def __len__(self) -> int:
        return int(self.index["num_examples"])

    @property
    def method(self) -> str:
        return self.index["settings"]["method"]

    @property
    def names(self) -> List[str]:
        return list(self.index["names"])

    @property
    def targets(self) -> Tensor:
        """``[N]`` the class explained for each example."""
        return torch.tensor(self.index["targets"], dtype=torch.int64)

    @property
    def num_shards(self) -> int:
        return int(self.index["num_shards"])

    def shard(self, k: int) -> Dict[str, Tensor]:
        """Tensors of shard ``k``: ``attributions``, ``targets``, ``indices``."""
        from safetensors.torch import load_file

        return load_file(str(self.folder / self.index["shards"][k]["file"]))

    def maps(self) -> Tensor:
        """``[N, *map_shape]`` every map, in dataset order (loads every shard)."""
        return torch.cat([self.shard(k)["attributions"] for k in range(self.num_shards)])


def read_explanations(folder: Union[str, Path]) -> Explanations:
    """Open a folder written by :func:`~captum_global.explain.explain_dataset`.

    Args:
        folder: the folder ``explain_dataset`` (or ``captum-global explain``) wrote.

    Returns:
        :class:`Explanations`.

    Raises:
        InvalidArgumentError: no index, another format, an unfinished run
            (rerun the same call or command to finish it) or a missing shard.

    Examples::

        >>> import tempfile, torch
        >>> from captum_global.explain import explain_dataset, read_explanations
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> folder = tempfile.mkdtemp()
        >>> _ = explain_dataset(net, "Saliency", torch.rand(5, 3, 2, 2), folder, batch_size=2)
        >>> done = read_explanations(folder)
        >>> len(done), done.num_shards, done.shard(2)["indices"].tolist(), done.index["map_shape"]
        (5, 3, [4], [3, 2, 2])
    """
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise InvalidArgumentError(f"folder: no {INDEX_FILE} in {str(folder)!r}")
    try:
        index = json.loads(path.read_text())
    except ValueError as error:  # cut short, or not text
        raise InvalidArgumentError(f"folder: {str(path)!r} is damaged (not JSON: {error})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise InvalidArgumentError(f"folder: {str(path)!r} has format {found!r}, expected {FORMAT!r}")
    if not index.get("complete"):
        raise InvalidArgumentError(f"folder: the run in {str(folder)!r} is unfinished; rerun it to resume")
    missing = [s["file"] for s in index["shards"] if not (folder / s["file"]).is_file()]
    if missing:
        raise InvalidArgumentError(f"folder: {len(missing)} shard file(s) missing from {str(folder)!r}: {missing[:8]}")
    damaged = [(s["file"], why) for s in index["shards"] if (why := _shard_damage(folder, s)) is not None]
    if damaged:
        names = ", ".join(name for name, _ in damaged[:8])
        first = damaged[0][1] if len(damaged) == 1 else f"{damaged[0][0]}: {damaged[0][1]}"
        raise InvalidArgumentError(f"folder: {names} in {str(folder)!r} {'is' if len(damaged) == 1 else 'are'} "
                                   f"damaged ({first}); rerun the same call or command to compute it again")
    return Explanations(folder, index)


def _shard_damage(folder: Path, shard: Dict[str, Any]) -> Optional[str]:
    """Why the file of ``shard`` (an entry of the index's ``shards``) is not a whole shard of its examples,
    or None. Reads the header and the indices only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / shard["file"]), framework="pt") as handle:
            indices = handle.get_tensor("indices").tolist()
            sizes = {handle.get_slice(name).get_shape()[0] for name in ("attributions", "targets")}
    except (SafetensorError, OSError, IndexError) as error:
        return f"not a whole shard file: {(str(error).strip().splitlines() or [type(error).__name__])[0]}"
    expected = list(range(shard["start"], shard["stop"]))
    if indices != expected or sizes != {len(expected)}:
        held = f"{indices[0]}-{indices[-1]}" if indices else "none"
        return f"it holds examples {held}, not {expected[0]}-{expected[-1]}"
    return None


def _jsonable(value: Any) -> Any:
    """A JSON-serialisable description of a setting (tensors by shape and content hash)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return {"tensor_shape": list(value.shape), "sha256": _tensor_digest([value])}
    if isinstance(value, nn.Module):
        return {"module": type(value).__name__, "sha256": _tensor_digest(value.state_dict().values())}
    return {"object": f"{type(value).__module__}.{type(value).__qualname__}"}


def _tensor_digest(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy of the data
    return digest.hexdigest()


def _text_digest(values: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()


def _write_json(path: Path, content: Dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(content, indent=1))
    os.replace(temp, path)


def _write_shard(folder: Path, k: int, start: int, attributions: Tensor, targets: Tensor) -> None:
    """Write shard ``k`` atomically: a half-written file never carries the final name."""
    from safetensors.torch import save_file

    n = attributions.shape[0]
    tensors = {"attributions": attributions.detach().cpu().contiguous(),
               "targets": targets.detach().cpu().to(torch.int64).contiguous(),
               "indices": torch.arange(start, start + n, dtype=torch.int64)}
    final = folder / shard_file_name(k)
    temp = folder / f".{final.name}.{os.getpid()}.tmp"
    save_file(tensors, str(temp), metadata={"format": FORMAT})  # one key: the header bytes are then stable
    os.chmod(temp, 0o666 & ~_umask())  # the writer creates 0600 files; give them the usual mode
    os.replace(temp, final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
