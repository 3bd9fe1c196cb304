"""Explain a whole dataset with any attribution, resumably, on one or many processes."""
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captum_global._checks import check_bool, check_finite_output, check_model_output, check_module
from captum_global._model_state import preserved_model_state
from captum_global._seeding import check_seed, cuda_devices, preserved_global_rng, seeded_global_rng
from captum_global._targets import parse_target
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.explain._data import TensorItems, as_dataset, split_batch
from captum_global.explain._methods import resolve_method
from captum_global.explain.files import (
    FORMAT,
    INDEX_FILE,
    Explanations,
    _jsonable,
    _shard_damage,
    _tensor_digest,
    _text_digest,
    _write_json,
    _write_shard,
    read_explanations,
    shard_file_name,
)

__all__ = ["explain_dataset"]

_SHARD = re.compile(r"^shard-\d{5,}\.safetensors$")
_TEMP = re.compile(r"^\..+\.\d+\.tmp$")


def explain_dataset(
    model: nn.Module,
    method: Union[str, Any, Callable[[Tensor, Tensor], Tensor]],
    data: Any,
    out: Union[str, Path],
    *,
    target: Any = None,
    batch_size: Optional[int] = None,
    layer: Optional[str] = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    image_size: Optional[Tuple[int, int]] = None,
    seed: int = 0,
    overwrite: bool = False,
    show_progress: bool = False,
    num_workers: int = 0,
) -> Explanations:
    r"""Run an attribution over a whole dataset and write the maps to ``out``, one shard per batch.

    Each batch of ``batch_size`` consecutive examples is one shard file,
    written atomically once its maps are done, so an interrupted run
    resumes: calling again with the same settings computes only the missing
    (or damaged) shards (a call with other settings into the same folder is
    refused unless ``overwrite``). Under ``torch.distributed`` (e.g. ``torchrun``,
    with the process group initialised) the shards are split across the
    processes (shard ``k`` goes to rank ``k mod world_size``); each shard is
    computed exactly as on one process, so the files are the same whatever
    the number of processes. The format is described in
    :mod:`captum_global.explain.files`.

    Args:
        model: the classifier; it is run in eval mode and given back as found.
        method: an attribution name: ours (``"SISE"``,
            ``"InputAgnosticSaliency"``) or a class of ``captum.attr`` such as
            ``"IntegratedGradients"``, ``"Saliency"``, ``"Occlusion"``,
            ``"LayerGradCam"`` (case, ``-`` and ``_`` do not matter; see
            :func:`method_names`); or a Captum ``Attribution`` object; or a
            callable ``explain(inputs, target) -> attributions``.
        data: a map-style ``Dataset`` (items are an input tensor or
            ``(input, label, ...)``), a ``DataLoader`` over one without
            shuffling (its batch size, collate function and workers are
            used), a tensor ``[N, C, H, W]``, or an image folder
            (:class:`~captum_global.loading.ImageFiles`).
        out: the output folder (created).
        target: ``None`` (the model's top-1 class for each example),
            ``"labels"`` (the dataset's labels), one class for every example,
            or one class per example (list or tensor of length ``N``).
        batch_size: examples per shard and per call of the method; default
            the DataLoader's, else 16. Changing it changes the shards.
        layer: layer (dotted name) for layer methods such as
            ``"LayerGradCam"``; default the last block output, the layer
            Grad-CAM usually reads. Layer maps are upsampled (bilinear) to
            the input's size.
        attribute_kwargs: keywords for ``attribute`` (e.g. ``{"n_steps": 32}``
            for IntegratedGradients, ``{"sliding_window_shapes": (3, 8, 8)}``
            for Occlusion) when ``method`` is a name or an Attribution.
        image_size: ``(H, W)`` images of a folder are resized to.
        seed: the global random state is seeded from ``seed`` and the shard
            number around each shard (for methods that draw from it, e.g.
            NoiseTunnel, and for a method whose own ``seed`` defaults to a
            fresh one, InputAgnosticSaliency); the caller's state is restored.
        overwrite: replace a run with other settings in ``out`` (only this
            format's files are removed).
        show_progress: progress bar (on rank 0) counting examples.
        num_workers: DataLoader worker processes for reading the data.

    Returns:
        :class:`~captum_global.explain.files.Explanations` of the complete folder.

    Examples::

        >>> import tempfile, torch
        >>> from captum_global.explain import explain_dataset
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> images = torch.rand(10, 3, 16, 16)
        >>> result = explain_dataset(net, "IntegratedGradients", images, tempfile.mkdtemp(),
        ...                          batch_size=4, attribute_kwargs={"n_steps": 8})
        >>> result.num_shards, result.maps().shape, result.targets.shape
        (3, torch.Size([10, 3, 16, 16]), torch.Size([10]))
    """
    check_module(model, "model", "explain_dataset runs it")
    if attribute_kwargs is not None and not isinstance(attribute_kwargs, dict):
        raise InvalidArgumentTypeError(f"attribute_kwargs must be a dict, got {type(attribute_kwargs).__name__}")
    attribute_kwargs = dict(attribute_kwargs or {})
    seed = check_seed(seed, allow_none=False)
    overwrite, show_progress = check_bool(overwrite, "overwrite"), check_bool(show_progress, "show_progress")
    if not isinstance(out, (str, Path)):
        raise InvalidArgumentTypeError(f"out must be a folder path, got {type(out).__name__}")
    out = Path(out)
    dataset, shard_size, collate, num_workers, names = as_dataset(data, batch_size, image_size, num_workers)
    n_examples = len(dataset)
    plan = [(k, start, min(start + shard_size, n_examples)) for k, start in enumerate(range(0, n_examples, shard_size))]
    rank, world = _process_group()
    device, devices = _device_of(model), cuda_devices(model)
    with preserved_model_state(model), preserved_global_rng(devices):
        example = split_batch(collate([dataset[0]]))[0].to(device)
        with torch.no_grad():
            output = check_model_output(model(example), "model")
        if output.dim() != 2:
            raise InvalidArgumentError(f"model must return class scores [N, classes], got {tuple(output.shape)}")
        targets_for, target_rule = _target_rule(target, n_examples, output.shape[1])
        if target_rule == "labels":
            _check_dataset_labels(dataset, names, output.shape[1])
        explain, described = resolve_method(model, method, layer, example, attribute_kwargs)
        settings = _jsonable({
            **described, "attribute_kwargs": attribute_kwargs, "target": target_rule, "shard_size": shard_size,
            "seed": seed, "num_examples": n_examples, "names_sha256": _text_digest(names),
            "model_sha256": _tensor_digest(model.state_dict().values()),
            # other images as many as before: a tensor's content (a dataset is known by its names)
            **({"data_sha256": _tensor_digest([dataset.tensor])} if isinstance(dataset, TensorItems) else {}),
        })
        _together(world, lambda: rank != 0 or _prepare(out, settings, names, plan, overwrite))
        mine = [p for p in plan if p[0] % world == rank and _to_compute(out, *p)]

        def run_shards() -> None:
            loader = DataLoader(dataset, batch_sampler=[list(range(s, e)) for _, s, e in mine],
                                collate_fn=collate, num_workers=num_workers)
            bar = tqdm(total=sum(e - s for _, s, e in mine), desc=f"explain {settings['method']}",
                       unit="image", disable=not show_progress or rank != 0)
            with bar:
                for (k, start, stop), batch in zip(mine, loader):
                    inputs, labels = split_batch(batch)
                    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
                        first = start + int((~torch.isfinite(inputs.reshape(len(inputs), -1))).any(1).nonzero()[0])
                        named = "" if names[first] == str(first) else f" ({names[first]})"
                        raise InvalidArgumentError(f"data: examples {start}-{stop - 1} hold NaN or infinite values; "
                                                   f"the first is example {first}{named}")
                    inputs = inputs.to(device)
                    targets = targets_for(model, inputs, labels, start, stop)
                    with seeded_global_rng(_shard_seed(seed, k), devices):
                        maps = explain(inputs, targets)
                    maps = _checked_maps(maps, stop - start, settings["method"], k, start, stop)
                    _write_shard(out, k, start, maps, targets)
                    bar.update(stop - start)

        _together(world, run_shards)
        _together(world, lambda: rank != 0 or _finish(out))
    return read_explanations(out)


def _to_compute(out: Path, k: int, start: int, stop: int) -> bool:
    """Whether shard ``k`` is to be computed: its file is missing or damaged (a warning names it)."""
    path = out / shard_file_name(k)
    if not path.is_file():
        return True
    why = _shard_damage(out, {"file": path.name, "start": start, "stop": stop})
    if why is not None:
        warnings.warn(f"explain_dataset: {path.name} in {str(out)!r} is damaged ({why}); it is computed again",
                      RuntimeWarning, stacklevel=3)
    return why is not None


def _process_group() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _together(world: int, step: Callable[[], Any]) -> None:
    """Run ``step`` on every process; if it fails on any, every process raises (none waits forever)."""
    if world == 1:
        step()
        return
    import torch.distributed as dist

    error: Optional[BaseException] = None
    try:
        step()
    except Exception as caught:  # re-raised below, after the others know
        error = caught
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    failed = torch.tensor([0 if error is None else 1], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if int(failed.item()):
        raise RuntimeError("explain_dataset: another process failed (its error is in its own output)")


def _device_of(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _shard_seed(seed: int, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "little") % 2**63


def _target_rule(target: Any, n_examples: int, n_classes: int):
    """``(targets_for(model, inputs, labels, start, stop) -> [n] classes, description)``."""
    if target is None or (isinstance(target, str) and target == "top1"):
        def top1(model, inputs, labels, start, stop):
            with torch.no_grad():
                scores = check_model_output(model(inputs), "model")
            check_finite_output(scores, "explain_dataset (top-1 target)", f"examples {start}-{stop - 1}")
            return scores.argmax(1).cpu()
        return top1, "top1"
    if isinstance(target, str):
        if target != "labels":
            raise InvalidArgumentError(f"target must be None, 'top1', 'labels', a class or one class per "
                                       f"example, got {target!r}")

        def from_labels(model, inputs, labels, start, stop):
            if labels is None:
                raise InvalidArgumentError("target='labels' but the data items carry no label")
            labels = labels.reshape(-1).to(torch.int64).cpu()
            bad = (labels < 0) | (labels >= n_classes)
            if bool(bad.any()):
                raise InvalidArgumentError(f"target: label {int(labels[bad][0])} of example "
                                           f"{start + int(bad.nonzero()[0])} is not a class 0..{n_classes - 1}")
            return labels
        return from_labels, "labels"
    if isinstance(target, (Tensor, list, np.ndarray)):
        parsed = parse_target(target, n_examples).checked((n_examples, n_classes))
        classes = torch.tensor(parsed.classes(), dtype=torch.int64)
        return (lambda model, inputs, labels, start, stop: classes[start:stop]), \
            {"per_example_sha256": _tensor_digest([classes])}
    single = parse_target(target, 1).checked((1, n_classes)).classes()[0]
    return (lambda model, inputs, labels, start, stop: torch.full((stop - start,), single, dtype=torch.int64)), \
        {"class": single}


def _check_dataset_labels(dataset: Any, names: List[str], n_classes: int) -> None:
    """Labels a dataset lists up front (an image folder's): refuse one that is no class before any work."""
    labels = getattr(dataset, "labels", None)
    if not isinstance(labels, (list, tuple)) or len(labels) != len(names):
        return  # other datasets' labels are checked batch by batch
    for i, label in enumerate(labels):
        if isinstance(label, int) and not 0 <= label < n_classes:
            raise InvalidArgumentError(f"target: label {label} of example {i} ({names[i]}) is not a class "
                                       f"0..{n_classes - 1}")


def _checked_maps(maps: Any, n: int, method: str, k: int, start: int, stop: int) -> Tensor:
    if isinstance(maps, tuple):
        raise InvalidArgumentError(f"method {method} returned a tuple; explain_dataset stores one tensor per "
                                   "example (one input tensor, no convergence delta)")
    if not isinstance(maps, Tensor) or maps.dim() == 0 or maps.shape[0] != n:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InvalidArgumentError(f"method {method} must return one map per example ([{n}, ...]), got {shape}")
    return check_finite_output(maps.detach(), f"explain_dataset ({method})",
                               f"shard {k} (examples {start}-{stop - 1})")


def _prepare(out: Path, settings: Dict[str, Any], names: List[str], plan, overwrite: bool) -> None:
    """Check the folder (resume, refuse or overwrite) and write the unfinished index; a folder that
    cannot be made or written to (no write permission, a read-only file system) is an argument error."""
    try:
        _prepare_folder(out, settings, names, plan, overwrite)
    except OSError as error:
        reason = re.sub(r"^\[Errno \d+\] ", "", str(error))
        raise InvalidArgumentError(f"out: {str(out)!r} cannot be made or written: {reason}") from None


def _prepare_folder(out: Path, settings: Dict[str, Any], names: List[str], plan, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"out: {str(out)!r} is a file, not a folder")
    index_path = out / INDEX_FILE
    existing = None
    if index_path.is_file():
        try:
            existing = json.loads(index_path.read_text())
        except ValueError as error:  # cut short, or not text: not a run with "other settings"
            if not overwrite:
                raise InvalidArgumentError(
                    f"out: {str(index_path)!r} is damaged (not JSON: {error}); the shards cannot be matched to "
                    "their settings: start again with overwrite=True (--force on the command line)") from None
            existing = {}
    if overwrite:
        for path in out.iterdir() if out.is_dir() else ():
            if path.name == INDEX_FILE or _SHARD.match(path.name) or _TEMP.match(path.name):
                path.unlink()
    elif existing is not None:
        old = existing.get("settings") if existing.get("format") == FORMAT else None
        if old != settings:
            differ = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise InvalidArgumentError(
                f"out: {str(out)!r} holds explanations made with other settings (differing: {differ}); "
                "choose another folder or overwrite it (overwrite=True, --force on the command line)"
            )
        for path in out.iterdir():
            if _TEMP.match(path.name):  # left by an interrupted write
                path.unlink()
    elif out.is_dir() and any(out.iterdir()):
        raise InvalidArgumentError(f"out: {str(out)!r} is not empty and holds no explanations; choose an empty "
                                   "or new folder (or overwrite=True, --force on the command line)")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(index_path, {
        "format": FORMAT, "complete": False, "settings": settings, "num_examples": len(names),
        "shard_size": settings["shard_size"], "num_shards": len(plan), "names": names,
        "shards": [{"file": shard_file_name(k), "start": s, "stop": e} for k, s, e in plan],
    })


def _finish(out: Path) -> None:
    """Complete the index from the shard files: targets, map shape and dtype."""
    from safetensors import safe_open

    index = json.loads((out / INDEX_FILE).read_text())
    targets: List[int] = []
    for shard in index["shards"]:
        with safe_open(str(out / shard["file"]), framework="pt") as handle:
            targets += handle.get_tensor("targets").tolist()
            if shard is index["shards"][0]:
                first = handle.get_tensor("attributions")
                index["map_shape"], index["dtype"] = list(first.shape[1:]), str(first.dtype).replace("torch.", "")
    index.update(targets=targets, complete=True)
    _write_json(out / INDEX_FILE, index)
