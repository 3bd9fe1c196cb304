"""Files of the reference zoo: format, reading, writing, cache, and the training command.

Each model ``name`` is three files next to each other:

- ``{name}.safetensors``: the final weights (float32, exact), metadata
  ``settings_hash``;
- ``{name}.json``: the record (settings and their hash, accuracies,
  hashes of the final weights and of the first trajectory point);
- ``{name}.trajectory.safetensors``: the recorded points strictly between
  the first and the last, one tensor per ``"epoch{e}/{state-dict key}"``,
  floating tensors in float16 (integer buffers as they are); metadata
  ``settings_hash``, ``epochs`` (JSON list of every recorded epoch),
  ``first`` (``"initialisation"``: epoch 0 is not stored but rebuilt from
  the seed and checked against the record's ``first_sha256``) and ``dtype``.

A model missing from the package (or whose settings changed) is trained
once, in a subprocess with the pinned CPU kernels, and cached under
``$CAPTUM_GLOBAL_CACHE`` (default ``~/.cache/captum_global``).

Train zoo models into a folder (one thread, sequential)::

    python -m captum_global.world --all --out captum_global/world/weights
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import Tensor, nn

from captum_global._seeding import seeded_global_rng
from captum_global.world.data import WorldConfig
from captum_global.world.models import build_model
from captum_global.world.training import PINNED_KERNELS, state_hash, train_reference_model

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TRAJECTORY_DTYPE = torch.float16
_SETTING_KEYS = ("epochs", "seed", "batch_size", "lr", "weight_decay", "target_class",
                 "poison_rate", "poison_seed", "trigger", "label_noise", "adversarial")


def json_path(stem: Path) -> Path:
    return Path(str(stem) + ".json")


def weights_path(stem: Path) -> Path:
    return Path(str(stem) + ".safetensors")


def trajectory_path(stem: Path) -> Path:
    return Path(str(stem) + ".trajectory.safetensors")


def cache_dir() -> Path:
    """Where models trained on demand go: ``$CAPTUM_GLOBAL_CACHE`` or ``~/.cache/captum_global``."""
    return Path(os.environ.get("CAPTUM_GLOBAL_CACHE",
                               Path.home() / ".cache" / "captum_global"))


def valid_stem(stem: Path, settings_hash: str, trajectory: bool) -> bool:
    """Whether ``stem``'s files exist and hold a model with these settings."""
    js = json_path(stem)
    if not (js.is_file() and weights_path(stem).is_file()):
        return False
    if trajectory and not trajectory_path(stem).is_file():
        return False
    return json.loads(js.read_text()).get("settings_hash") == settings_hash


def locate(entry: Any, trajectory: bool = False) -> Path:
    """The files of a zoo entry: shipped, cached, or trained now (in a subprocess) and cached."""
    want = entry.settings_hash
    shipped = WEIGHTS_DIR / entry.name
    cached = cache_dir() / want[:16] / entry.name
    for stem in (shipped, cached):
        if valid_stem(stem, want, trajectory):
            return stem
    warnings.warn(f"{entry.name}: no files for its current settings in the package or the cache; "
                  f"training it now (minutes on one CPU core) into {cached.parent}", stacklevel=3)
    train_in_subprocess([entry.name], cached.parent)
    if not valid_stem(cached, want, trajectory):
        raise RuntimeError(f"training {entry.name} did not produce its files in {cached.parent}")
    if valid_stem(shipped, want, trajectory=False):
        # The weights ship but not their trajectory: the re-run must end at them.
        ship = json.loads(json_path(shipped).read_text()).get("weights_sha256")
        if json.loads(json_path(cached).read_text())["weights_sha256"] != ship:
            raise RuntimeError(f"{entry.name}: retraining did not reproduce the shipped weights "
                               "bit for bit, so its trajectory would not end at them")
    return cached


def train_in_subprocess(names: List[str], out: Path, force: bool = False) -> None:
    """Run the training command for ``names`` with the pinned CPU kernels, writing to ``out``."""
    env = dict(os.environ, **PINNED_KERNELS)
    cmd = [sys.executable, "-m", "captum_global.world", "--out", str(out), "--names", *names]
    cmd += ["--force"] if force else []
    subprocess.run(cmd, env=env, check=True)


def load_weights(stem: Path) -> Dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(weights_path(stem)))


def initialisation(arch: str, settings: Dict[str, Any]) -> Dict[str, Tensor]:
    """The weights training starts from: global RNG seeded with the seed, then the model built."""
    with seeded_global_rng(settings["seed"]):
        model = build_model(arch, WorldConfig(**settings["config"]).num_classes)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_trajectory(stem: Path, arch: str, settings: Dict[str, Any]) -> List[Dict[str, Tensor]]:
    """The trajectory stored at ``stem`` as float32 state dicts (see the module docstring)."""
    from safetensors import safe_open

    record = json.loads(json_path(stem).read_text())
    final = load_weights(stem)
    epochs = record["trajectory"]["epochs"]
    points: Dict[int, Dict[str, Tensor]] = {epochs[-1]: final}
    with safe_open(str(trajectory_path(stem)), framework="pt") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            epoch, name = key.split("/", 1)
            points.setdefault(int(epoch[len("epoch"):]), {})[name] = (
                f.get_tensor(key).to(final[name].dtype))
    if meta.get("settings_hash") != record["settings_hash"]:
        raise RuntimeError(f"{stem.name}: trajectory file does not match the weights' settings")
    if meta.get("first") == "initialisation":
        points[epochs[0]] = initialisation(arch, settings)
        if state_hash(points[epochs[0]]) != record["trajectory"]["first_sha256"]:
            raise RuntimeError(
                f"{stem.name}: the initialisation rebuilt from seed {settings['seed']} does not "
                "match the recorded one (a different torch initialisation scheme?)")
    missing = [e for e in epochs if e not in points]
    if missing:
        raise RuntimeError(f"{stem.name}: trajectory file lacks epochs {missing}")
    return [points[e] for e in epochs]


def _compact(t: Tensor) -> Tensor:
    if not t.is_floating_point():
        return t
    small = t.to(TRAJECTORY_DTYPE)
    return small if torch.isfinite(small).all() else t  # out of float16 range: keep as is


def save_model(model: nn.Module, record: Dict[str, Any], trajectory: List[Dict[str, Tensor]],
               stem: Path) -> None:
    """Write the three files of a model at ``stem`` (see the module docstring).

    ``trajectory`` must be the exact points of the run, as returned by
    :func:`~captum_global.world.training.train_reference_model` with
    ``return_trajectory=True``.
    """
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    final = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    epochs = record["trajectory"]["epochs"]
    if len(trajectory) != len(epochs) or state_hash(trajectory[-1]) != state_hash(final):
        raise ValueError("trajectory must hold one point per recorded epoch and end at the model")
    meta = {"settings_hash": record["settings_hash"]}
    save_file(final, str(weights_path(stem)), metadata=meta)
    first = "initialisation" if epochs[0] == 0 else "stored"
    stored = trajectory[1:-1] if first == "initialisation" else trajectory[:-1]
    stored_epochs = epochs[1:-1] if first == "initialisation" else epochs[:-1]
    middle = {f"epoch{e}/{k}": _compact(v).contiguous()
              for e, point in zip(stored_epochs, stored) for k, v in point.items()}
    save_file(middle, str(trajectory_path(stem)),
              metadata=dict(meta, epochs=json.dumps(epochs), first=first,
                            dtype=str(TRAJECTORY_DTYPE).replace("torch.", "")))
    for path in (weights_path(stem), trajectory_path(stem)):
        os.chmod(path, 0o644)  # safetensors writes 0600
    json_path(stem).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def train_entry(entry: Any, out: Path, twin_records: Dict[str, Dict[str, Any]],
                overwrite: bool = False) -> Dict[str, Any]:
    """Train one zoo entry with its trajectory and write its files to ``out``; returns its record."""
    model, record, points = train_reference_model(
        entry.arch, entry.kind, config=WorldConfig(**entry.settings["config"]),
        return_trajectory=True,
        **{k: entry.settings[k] for k in _SETTING_KEYS if k in entry.settings})
    if record["settings_hash"] != entry.settings_hash:
        raise RuntimeError(f"{entry.name}: training settings drifted from the zoo's")
    info = dict(name=entry.name, kind=entry.kind, twin=entry.twin,
                target_class=entry.target_class, description=entry.description)
    twin = twin_records.get(entry.twin) if entry.twin else None
    if twin is not None:
        info.update(twin_clean_test_accuracy=twin["clean_test_accuracy"],
                    clean_accuracy_drop_vs_twin=twin["clean_test_accuracy"]
                    - record["clean_test_accuracy"])
    record["zoo"] = info
    stem = out / entry.name
    if valid_stem(stem, entry.settings_hash, trajectory=False) and not overwrite:
        # Same settings already there (e.g. a shipped model without trajectory):
        # only write if this run reproduced those weights bit for bit.
        if state_hash(load_weights(stem)) != record["weights_sha256"]:
            raise RuntimeError(f"{entry.name}: retrained weights differ from those in {out}; "
                               "not overwritten (pass --force to replace them)")
    save_model(model, record, points, stem)
    return record
