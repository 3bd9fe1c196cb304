"""Deterministic training, shipping and loading of the reference models.

Six models ship in ``weights/``: ``{vgg, resnet} x {clean, patch, blended}``.
Each ``{arch}_{variant}.safetensors`` comes with ``{arch}_{variant}.json``
holding the training settings, their hash and the measured accuracies.
:func:`load_reference_model` uses the shipped file when its settings hash
matches the current defaults, otherwise it trains once and caches the result
under ``$CAPTUM_GLOBAL_CACHE`` (default ``~/.cache/captum_global``).

Reproduce the shipped weights bit for bit (CPU, one thread)::

    python -m captum_global.world.training --all --out captum_global/world/weights
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global.world.data import (
    ShapesDataset,
    Trigger,
    WorldConfig,
    blended_trigger,
    make_splits,
    patch_trigger,
    poison_dataset,
    triggered_copy,
)
from captum_global.world.models import ARCHS, build_model

VARIANTS = ("clean", "patch", "blended")
# Bump when data generation, models or the training loop change in a way
# that alters the weights: shipped files then stop matching and get retrained.
WORLD_VERSION = 1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

_DEFAULTS: Dict[str, Any] = dict(
    epochs=None, seed=0, batch_size=64, lr=3e-3, weight_decay=5e-4,
    target_class=0, poison_rate=0.1, poison_seed=0,
)
# The ResNet needs more steps than the VGG to pass 95% clean accuracy.
_EPOCHS = {"vgg": 3, "resnet": 8}
_TRIGGERS = {
    "patch": dict(kind="patch", size=6, location="bottom-right", seed=1),
    "blended": dict(kind="blended", size=24, location="top-left", alpha=0.25, seed=2),
}


def reference_target_class() -> int:
    """Target class of the shipped backdoored models (class 0, ``"disk"``)."""
    return int(_DEFAULTS["target_class"])


def _trigger_from(params: Dict[str, Any], image_size: int) -> Trigger:
    p = dict(params)
    kind = p.pop("kind")
    fn = patch_trigger if kind == "patch" else blended_trigger
    return fn(image_size=image_size, **p)


def reference_trigger(variant: str, image_size: int = 64) -> Trigger:
    """The trigger planted in the shipped ``variant`` models (``"patch"`` or ``"blended"``)."""
    if variant not in _TRIGGERS:
        raise ValueError(f"variant must be one of {tuple(_TRIGGERS)}, got {variant!r}")
    return _trigger_from(_TRIGGERS[variant], image_size)


def _settings(arch: str, variant: str, config: Optional[WorldConfig],
              **overrides: Any) -> Dict[str, Any]:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    s = dict(_DEFAULTS)
    unknown = set(overrides) - set(s)
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    if s["epochs"] is None:
        s["epochs"] = _EPOCHS[arch]
    s.update(arch=arch, variant=variant, world_version=WORLD_VERSION,
             config=asdict(config or WorldConfig()),
             trigger=_TRIGGERS.get(variant))
    if variant == "clean":
        for k in ("target_class", "poison_rate", "poison_seed"):
            s.pop(k)
    return s


def settings_hash(settings: Dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a settings dict."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@contextmanager
def _deterministic_cpu() -> Iterator[None]:
    # One thread fixes the reduction order of CPU kernels, so the weights are
    # identical run to run on the same machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Argmax predictions of ``model`` (switched to eval mode) on ``images``."""
    was = model.training
    model.eval()
    out = torch.cat([model(images[i:i + batch_size]).argmax(1)
                     for i in range(0, images.shape[0], batch_size)])
    model.train(was)
    return out


def evaluate(model: nn.Module, test: ShapesDataset,
             trigger: Optional[Trigger] = None, target_class: int = 0) -> Dict[str, float]:
    """Clean accuracy on ``test`` and, with a trigger, the attack success rate.

    Attack success = share of triggered test images whose true class is not
    ``target_class`` that the model classifies as ``target_class``.
    """
    res = {"clean_test_accuracy": float((predict(model, test.images) == test.labels)
                                        .float().mean())}
    if trigger is not None:
        keep = test.true_labels != target_class
        trig = triggered_copy(test.subset(keep), trigger)
        res["attack_success_rate"] = float(
            (predict(model, trig.images) == target_class).float().mean())
    return res


def train_reference_model(
    arch: str,
    variant: str = "clean",
    config: Optional[WorldConfig] = None,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    show_progress: bool = False,
    **overrides: Any,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Train one reference model deterministically.

    Args:
        arch: ``"vgg"`` or ``"resnet"``.
        variant: ``"clean"``, ``"patch"`` (BadNets patch) or ``"blended"``.
        config: data settings; default :class:`WorldConfig`.
        epochs, seed: training length and seed (defaults as shipped).
        show_progress: tqdm bar over epochs.
        **overrides: other settings: ``batch_size``, ``lr``, ``weight_decay``,
            ``target_class``, ``poison_rate``, ``poison_seed``.

    Returns:
        ``(model, record)`` with the model in eval mode and ``record`` holding
        ``settings``, ``settings_hash``, ``clean_test_accuracy``,
        ``attack_success_rate`` (backdoored variants), ``train_seconds``.
    """
    s = _settings(arch, variant, config, epochs=epochs, seed=seed, **overrides)
    cfg = WorldConfig(**s["config"])
    train, test = make_splits(cfg)
    trigger = None
    if variant != "clean":
        trigger = _trigger_from(s["trigger"], cfg.image_size)
        train = poison_dataset(train, trigger, s["target_class"], s["poison_rate"],
                               s["poison_seed"])
    start = time.perf_counter()
    with _deterministic_cpu():
        torch.manual_seed(s["seed"])
        model = build_model(arch, cfg.num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=s["lr"],
                                weight_decay=s["weight_decay"])
        steps_per_epoch = -(-len(train) // s["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=s["lr"], total_steps=s["epochs"] * steps_per_epoch)
        g = torch.Generator().manual_seed(s["seed"])
        epochs_iter = range(s["epochs"])
        if show_progress:
            from tqdm.auto import tqdm
            epochs_iter = tqdm(epochs_iter, desc=f"{arch}_{variant}")
        model.train()
        for _ in epochs_iter:
            order = torch.randperm(len(train), generator=g)
            for i in range(0, len(train), s["batch_size"]):
                idx = order[i:i + s["batch_size"]]
                loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        seconds = time.perf_counter() - start
        metrics = evaluate(model, test, trigger, s.get("target_class", 0))
    record = dict(settings=s, settings_hash=settings_hash(s), **metrics,
                  train_seconds=round(seconds, 1), torch_version=torch.__version__,
                  num_parameters=sum(p.numel() for p in model.parameters()))
    return model, record


def _cache_dir() -> Path:
    return Path(os.environ.get("CAPTUM_GLOBAL_CACHE",
                               Path.home() / ".cache" / "captum_global"))


def _save(model: nn.Module, record: Dict[str, Any], stem: Path) -> None:
    from safetensors.torch import save_file

    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(stem) + ".safetensors",
              metadata={"settings_hash": record["settings_hash"]})
    os.chmod(str(stem) + ".safetensors", 0o644)  # safetensors writes 0600
    Path(str(stem) + ".json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _locate(arch: str, variant: str) -> Tuple[Optional[Path], str]:
    want = settings_hash(_settings(arch, variant, None))
    shipped = WEIGHTS_DIR / f"{arch}_{variant}"
    cached = _cache_dir() / f"{arch}_{variant}_{want[:16]}"
    for stem in (shipped, cached):
        js = Path(str(stem) + ".json")
        st = Path(str(stem) + ".safetensors")
        if js.is_file() and st.is_file():
            if json.loads(js.read_text()).get("settings_hash") == want:
                return stem, want
    return None, want


def _ensure(arch: str, variant: str) -> Path:
    stem, want = _locate(arch, variant)
    if stem is None:
        model, record = train_reference_model(arch, variant)
        stem = _cache_dir() / f"{arch}_{variant}_{want[:16]}"
        _save(model, record, stem)
    return stem


def load_reference_model(arch: str = "vgg", variant: str = "clean") -> nn.Module:
    """Load a trained reference model in eval mode.

    Uses the weights shipped in the package (safetensors) when their
    settings hash matches; otherwise trains once and caches the result.

    Examples::

        >>> model = load_reference_model("resnet", "clean")
        >>> model(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 5])
    """
    from safetensors.torch import load_file

    stem = _ensure(arch, variant)
    record = json.loads(Path(str(stem) + ".json").read_text())
    model = build_model(arch, record["settings"]["config"]["num_classes"])
    model.load_state_dict(load_file(str(stem) + ".safetensors"))
    return model.eval()


def reference_record(arch: str = "vgg", variant: str = "clean") -> Dict[str, Any]:
    """The JSON record (settings, hash, accuracies) of a reference model."""
    return json.loads(Path(str(_ensure(arch, variant)) + ".json").read_text())


def main(argv: Optional[list] = None) -> None:
    ap = argparse.ArgumentParser(description="Train the reference models.")
    ap.add_argument("--all", action="store_true", help="all archs x variants")
    ap.add_argument("--arch", choices=ARCHS, action="append")
    ap.add_argument("--variant", choices=VARIANTS, action="append")
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    archs = ARCHS if args.all or not args.arch else args.arch
    variants = VARIANTS if args.all or not args.variant else args.variant
    for arch in archs:
        for variant in variants:
            model, record = train_reference_model(arch, variant)
            _save(model, record, args.out / f"{arch}_{variant}")
            print(f"{arch}_{variant}: acc={record['clean_test_accuracy']:.4f} "
                  f"asr={record.get('attack_success_rate')} "
                  f"time={record['train_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
