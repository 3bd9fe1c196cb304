"""Deterministic training of the reference models, with their trajectories.

:func:`train_reference_model` trains one model of the reference zoo on CPU
with one thread, from its settings alone, and can hand back the weights
at a few points of training (its *trajectory*). Recording copies the
weights between epochs and draws no random numbers, so it never changes
what is trained. Shipped models, their files and the cache live in
:mod:`captum_global.world.zoo`.

Kinds of training (``variant``):

- ``"clean"``: plain training.
- ``"patch"``, ``"blended"``, ``"sig"``, ``"filter"``: backdoored by
  poisoning (stamp the trigger on a share of the non-target images and
  relabel them as the target class).
- ``"noisy_label"``: a fixed share of one class's labels flipped to another.
- ``"adversarial"``: PGD adversarial training (l_inf ball).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global._checks import check_finite_output, check_int, check_model_output
from captum_global._model_state import preserved_model_state
from captum_global._seeding import seeded_global_rng
from captum_global.world.data import ShapesDataset, WorldConfig, make_splits
from captum_global.errors import InvalidArgumentError
from captum_global.world.models import ARCHS, build_model
from captum_global.world.triggers import (
    TRIGGER_KINDS,
    Trigger,
    flip_labels,
    make_trigger,
    poison_dataset,
    triggered_copy,
)

VARIANTS = ("clean", "patch", "blended")  # the six original models: {vgg, resnet} x VARIANTS
KINDS = ("clean",) + TRIGGER_KINDS + ("noisy_label", "adversarial")
# Bump when data generation, models or the training loop change in a way
# that alters the weights: shipped files then stop matching and get retrained.
WORLD_VERSION = 1

_DEFAULTS: Dict[str, Any] = dict(
    epochs=None, seed=0, batch_size=64, lr=3e-3, weight_decay=5e-4,
    target_class=0, poison_rate=0.1, poison_seed=0,
)
_POISON_KEYS = ("target_class", "poison_rate", "poison_seed")
# The CPU code paths every zoo model was trained with: the AVX2 kernels of
# ATen, oneDNN and MKL. The libraries read these variables when they load,
# so they must be set before the process starts (the zoo's training command
# does it); with them, training is bit-identical on x86-64 machines with
# AVX2, with or without AVX-512. Without them results differ in the last
# bits, and training amplifies that into different weights.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                  "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# The ResNet needs more steps than the VGG to pass 95% clean accuracy.
_EPOCHS = {"vgg": 3, "resnet": 8}
# Default trigger of each backdoor kind (the shipped patch/blended ones).
_TRIGGERS: Dict[str, Dict[str, Any]] = {
    "patch": dict(kind="patch", size=6, location="bottom-right", seed=1),
    "blended": dict(kind="blended", size=24, location="top-left", alpha=0.25, seed=2),
    "sig": dict(kind="sig", amplitude=0.08, frequency=6.0),
    "filter": dict(kind="filter", strength=1.0),
}
_LABEL_NOISE = dict(source=2, dest=3, share=0.4, seed=0)
# Each batch is trained on its clean images and their PGD versions together
# (pure PGD training from scratch stalled at chance on the VGG), with the
# radius ramped up linearly over the first epoch.
_ADVERSARIAL = dict(epsilon=8 / 255, steps=3, step_size=2.5 * (8 / 255) / 3, seed=0,
                    with_clean=True, warmup_epochs=1)
# Robust accuracy of every model: PGD-10 at the adversarial radius, first 500 test images.
ROBUST_EVAL = dict(epsilon=8 / 255, steps=10, step_size=2 / 255, seed=0, n=500)


def reference_target_class() -> int:
    """Target class of the shipped ``patch``/``blended`` models (class 0, ``"disk"``)."""
    return int(_DEFAULTS["target_class"])


def reference_trigger(variant: str, image_size: int = 64) -> Trigger:
    """The default trigger of a backdoor kind (for ``"patch"``/``"blended"``: the shipped one).

    Examples::

        >>> reference_trigger("patch").region
        (57, 57, 6, 6)
    """
    if variant not in _TRIGGERS:
        raise InvalidArgumentError(f"variant must be one of {tuple(_TRIGGERS)}, got {variant!r}")
    return make_trigger(_TRIGGERS[variant], image_size)


def training_settings(arch: str, variant: str = "clean", config: Optional[WorldConfig] = None,
                      **overrides: Any) -> Dict[str, Any]:
    """The full settings dict of a training run (what :func:`settings_hash` hashes).

    ``overrides``: ``epochs``, ``seed``, ``batch_size``, ``lr``,
    ``weight_decay``, ``target_class``, ``poison_rate``, ``poison_seed``,
    ``trigger`` (a trigger settings dict, for the backdoor kinds),
    ``label_noise`` (``source``, ``dest``, ``share``, ``seed``) and
    ``adversarial`` (``epsilon``, ``steps``, ``step_size``, ``seed``).
    ``None`` values mean the default.
    """
    if arch not in ARCHS:
        raise InvalidArgumentError(f"arch must be one of {ARCHS}, got {arch!r}")
    if variant not in KINDS:
        raise InvalidArgumentError(f"variant must be one of {KINDS}, got {variant!r}")
    extra = {k: overrides.pop(k, None) for k in ("trigger", "label_noise", "adversarial")}
    s = dict(_DEFAULTS)
    unknown = set(overrides) - set(s)
    if unknown:
        raise InvalidArgumentError(f"unknown training settings {sorted(unknown)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    if s["epochs"] is None:
        s["epochs"] = _EPOCHS[arch]
    trigger = extra["trigger"] if variant in TRIGGER_KINDS else None
    if variant in TRIGGER_KINDS:
        trigger = dict(trigger or _TRIGGERS[variant])
        if trigger.get("kind") != variant:
            raise InvalidArgumentError(f"trigger kind {trigger.get('kind')!r} does not match variant {variant!r}")
    elif extra["trigger"] is not None:
        raise InvalidArgumentError(f"variant {variant!r} takes no trigger")
    # Key order and content of the original six settings are kept exactly:
    # their hashes identify the shipped files.
    s.update(arch=arch, variant=variant, world_version=WORLD_VERSION,
             config=asdict(config or WorldConfig()), trigger=trigger)
    if variant not in TRIGGER_KINDS:
        for k in _POISON_KEYS:
            s.pop(k)
    if variant == "noisy_label":
        s["label_noise"] = {**_LABEL_NOISE, **(extra["label_noise"] or {})}
    if variant == "adversarial":
        s["adversarial"] = {**_ADVERSARIAL, **(extra["adversarial"] or {})}
    return s


def settings_hash(settings: Dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a settings dict."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def state_hash(state: Dict[str, Tensor]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_record_epochs(epochs: int) -> List[int]:
    """Epochs whose end is recorded (0 = the initialisation): all up to 4 epochs, else four points."""
    if epochs <= 4:
        return list(range(epochs + 1))
    return sorted({0, round(epochs / 3), round(2 * epochs / 3), epochs})


def cpu_kernels() -> str:
    """``"avx2-pinned"`` when :data:`PINNED_KERNELS` are in effect, else ``"native-<capability>"``."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    pinned = all(os.environ.get(k) == v for k, v in PINNED_KERNELS.items())
    return "avx2-pinned" if pinned and capability == "avx2" else f"native-{capability}"


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
    """Argmax predictions of ``model`` (run in eval mode, flags restored) on ``images``."""
    with preserved_model_state(model):
        # argmax still names a class for NaN scores: an error, never a prediction (nor an accuracy)
        return torch.cat([_scores(model, images[i:i + batch_size], "predict", f"images {i}-"
                                  f"{min(i + batch_size, images.shape[0]) - 1}").argmax(1)
                          for i in range(0, images.shape[0], batch_size)])


def _scores(model: nn.Module, images: Tensor, what: str, where: str) -> Tensor:
    """``model(images)``, checked: one tensor of scores, finite (else :class:`NonFiniteOutputError`)."""
    return check_finite_output(check_model_output(model(images), "model"), what, where)


def pgd_attack(model: nn.Module, images: Tensor, labels: Tensor, epsilon: float,
               steps: int, step_size: float, seed: int = 0) -> Tensor:
    """Untargeted l_inf PGD (Madry et al. 2018) with a random start, in eval mode.

    Returns adversarial images in ``[0, 1]`` within ``epsilon`` of ``images``.
    The model's flags are restored; its parameters get no gradient.

    Examples::

        >>> model = build_model("vgg")
        >>> x, y = torch.rand(2, 3, 64, 64), torch.tensor([0, 1])
        >>> adv = pgd_attack(model, x, y, epsilon=0.03, steps=2, step_size=0.01)
        >>> bool((adv - x).abs().max() <= 0.03 + 1e-6)
        True
    """
    g = torch.Generator().manual_seed(int(seed))
    # drawn on the CPU (one stream whatever the device), then moved to the images
    delta = ((torch.rand(images.shape, generator=g) * 2 - 1) * epsilon).to(images.device, images.dtype)
    delta = (images + delta).clamp(0.0, 1.0) - images
    with preserved_model_state(model):
        for step in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(_scores(model, images + delta, "pgd_attack", f"step {step + 1}"), labels)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (images + delta).clamp(0.0, 1.0) - images
    return (images + delta).detach()


def robust_accuracy(model: nn.Module, test: ShapesDataset, epsilon: float, steps: int,
                    step_size: float, seed: int = 0, n: Optional[int] = None,
                    batch_size: int = 250) -> float:
    """Accuracy on PGD-attacked copies of the first ``n`` test images."""
    if len(test) == 0:
        raise InvalidArgumentError("test holds no image: robust accuracy needs at least one")
    n = len(test) if n is None else min(check_int(n, "n", minimum=1), len(test))
    correct = 0
    for i in range(0, n, batch_size):
        x, y = test.images[i:min(n, i + batch_size)], test.labels[i:min(n, i + batch_size)]
        adv = pgd_attack(model, x, y, epsilon, steps, step_size, seed=seed + i)
        correct += int((predict(model, adv) == y).sum())
    return correct / n


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


@torch.no_grad()
def label_noise_effect(model: nn.Module, test: ShapesDataset, source: int,
                       dest: int) -> Dict[str, float]:
    """On the test images of class ``source``: accuracy, share predicted ``dest``, mean ``dest`` probability."""
    x = test.images[test.true_labels == source]
    with preserved_model_state(model):
        probs = torch.cat([_scores(model, x[i:i + 500], "label_noise_effect", f"images {i}-{min(i + 500, len(x)) - 1} "
                                   f"of class {source}").softmax(1) for i in range(0, len(x), 500)])
    pred = probs.argmax(1)
    return {"source_accuracy": float((pred == source).float().mean()),
            "source_predicted_as_dest": float((pred == dest).float().mean()),
            "source_dest_probability": float(probs[:, dest].mean())}


def _training_data(s: Dict[str, Any]) -> Tuple[ShapesDataset, ShapesDataset, Optional[Trigger]]:
    cfg = WorldConfig(**s["config"])
    train, test = make_splits(cfg)
    trigger = None
    if s["trigger"] is not None:
        trigger = make_trigger(s["trigger"], cfg.image_size)
        train = poison_dataset(train, trigger, s["target_class"], s["poison_rate"],
                               s["poison_seed"])
    if "label_noise" in s:
        n = s["label_noise"]
        train = flip_labels(train, n["source"], n["dest"], n["share"], n["seed"])
    return train, test, trigger


def _adversarial_batch(model: nn.Module, x: Tensor, y: Tensor, adv: Dict[str, Any], step: int,
                       steps_per_epoch: int) -> Tuple[Tensor, Tensor]:
    # Optional clean epochs first (the radius is 0), then the linear warm-up.
    step -= adv.get("clean_epochs", 0) * steps_per_epoch
    if step < 0:
        ramp = 0.0
    elif adv["warmup_epochs"]:
        ramp = min(1.0, (step + 1) / (adv["warmup_epochs"] * steps_per_epoch))
    else:
        ramp = 1.0
    if ramp == 0.0:
        x_adv = x
    else:
        x_adv = pgd_attack(model, x, y, adv["epsilon"] * ramp, adv["steps"], adv["step_size"] * ramp,
                           seed=adv["seed"] * 1_000_003 + step)
    if adv["with_clean"]:  # one batch, so BatchNorm sees both and counts one step
        return torch.cat([x, x_adv]), torch.cat([y, y])
    return x_adv, y


def _snapshot(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_reference_model(
    arch: str,
    variant: str = "clean",
    config: Optional[WorldConfig] = None,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    show_progress: bool = False,
    record_epochs: Optional[Sequence[int]] = None,
    return_trajectory: bool = False,
    **overrides: Any,
):
    """Train one reference model deterministically (CPU, one thread).

    Args:
        arch: ``"vgg"`` or ``"resnet"``.
        variant: the kind of training, one of :data:`KINDS` (see the module
            docstring).
        config: data settings; default :class:`WorldConfig`.
        epochs, seed: training length and seed (defaults as shipped).
        show_progress: tqdm bar over epochs.
        record_epochs: epochs after which the weights are recorded (0 = the
            initialisation); default :func:`default_record_epochs`. Must end
            with the last epoch.
        return_trajectory: also return the recorded state dicts.
        **overrides: other settings, see :func:`training_settings`.

    Returns:
        ``(model, record)``, or ``(model, record, trajectory)`` with
        ``return_trajectory=True``: the model in eval mode; ``record`` with
        ``settings``, ``settings_hash``, ``clean_test_accuracy``,
        ``attack_success_rate`` (backdoors), ``label_noise_effect`` (noisy
        labels), ``robust_test_accuracy``, ``train_seconds``, ``trajectory``
        (recorded epochs, hashes of the first and last point); ``trajectory``
        a list of exact state dicts in training order, the last equal to the
        model's weights.
    """
    s = training_settings(arch, variant, config, epochs=epochs, seed=seed, **overrides)
    record_epochs = (default_record_epochs(s["epochs"]) if record_epochs is None
                     else sorted(set(int(e) for e in record_epochs)))
    if record_epochs[-1] != s["epochs"] or record_epochs[0] < 0:
        raise InvalidArgumentError(f"record_epochs must lie in [0, {s['epochs']}] and end with {s['epochs']}")
    train, test, trigger = _training_data(s)
    adv = s.get("adversarial")
    trajectory: List[Dict[str, Tensor]] = []
    start = time.perf_counter()
    with _deterministic_cpu(), seeded_global_rng(s["seed"]):
        model = build_model(arch, WorldConfig(**s["config"]).num_classes)
        if 0 in record_epochs:
            trajectory.append(_snapshot(model))
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
        step = 0
        for epoch in epochs_iter:
            order = torch.randperm(len(train), generator=g)
            for i in range(0, len(train), s["batch_size"]):
                idx = order[i:i + s["batch_size"]]
                x, y = train.images[idx], train.labels[idx]
                if adv is not None:
                    x, y = _adversarial_batch(model, x, y, adv, step, steps_per_epoch)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
            if epoch + 1 in record_epochs:
                trajectory.append(_snapshot(model))
        model.eval()
        seconds = time.perf_counter() - start
        metrics = evaluate(model, test, trigger, s.get("target_class", 0))
        if "label_noise" in s:
            n = s["label_noise"]
            metrics["label_noise_effect"] = label_noise_effect(model, test, n["source"], n["dest"])
        r = ROBUST_EVAL
        metrics["robust_test_accuracy"] = robust_accuracy(
            model, test, r["epsilon"], r["steps"], r["step_size"], r["seed"], r["n"])
    record = dict(settings=s, settings_hash=settings_hash(s), **metrics,
                  robust_eval=dict(ROBUST_EVAL),
                  train_seconds=round(seconds, 1), torch_version=torch.__version__,
                  cpu_kernels=cpu_kernels(),
                  num_parameters=sum(p.numel() for p in model.parameters()),
                  weights_sha256=state_hash(model.state_dict()),
                  trajectory=dict(epochs=record_epochs,
                                  first_sha256=state_hash(trajectory[0])))
    if return_trajectory:
        return model, record, trajectory
    return model, record


_MOVED_TO_ZOO = ("load_reference_model", "reference_record", "WEIGHTS_DIR")


def __getattr__(name: str) -> Any:
    # Loading moved to captum_global.world.zoo; keep the old imports working.
    if name in _MOVED_TO_ZOO:
        from captum_global.world import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
