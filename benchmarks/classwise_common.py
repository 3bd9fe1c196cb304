"""Shared parts of the class-wise benchmarks (``benchmarks/classwise_*.py``).

- the data a zoo model is explained on: fresh samples of the reference
  world, altered as the model's training data was (poisoned with its
  trigger, or with its labels flipped), so the real side of the synthesis
  sees what training saw;
- the synthesis recipe every benchmark uses (one place, so the numbers of
  different scripts come from the same method);
- fresh-model training for the condensation check, accuracy, and the
  writing of results (Markdown + JSON with the command).

Every script uses one CPU thread: double backward through small
convolutions is dominated by thread hand-offs on a shared 2-core machine.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_global.attr import ClassWiseResult, ClassWiseSynthesis
from captum_global.world import build_model, flip_labels, make_dataset, poison_dataset, reference_zoo, zoo_entry

RESULTS = Path(__file__).resolve().parent / "results"
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"

# The synthesis recipe of the benchmarks (see docs/measurements/classwise.md).
RECIPE: Dict[str, Any] = dict(init="noise", parametrization="spectrum", lr=0.05, batch_size=250)
SHIFT = 4  # pixels of random circular shift applied to the synthetic batch during synthesis


def shift_and_flip(x: Tensor) -> Tensor:
    """Synthesis-time augmentation: one random circular shift of up to
    ``SHIFT`` pixels for the batch and a random horizontal flip per input.
    Draws from the global RNG, which ClassWiseSynthesis seeds."""
    dy, dx = torch.randint(-SHIFT, SHIFT + 1, (2,)).tolist()
    x = torch.roll(x, (dy, dx), (-2, -1))
    flip = (torch.rand(x.shape[0]) < 0.5).view(-1, *[1] * (x.dim() - 1)).to(x.device)
    return torch.where(flip, x.flip(-1), x)


def explained_data(name: str, n: int, seed: int, source: str = "fresh"):
    """``n`` fresh examples of the reference world, altered like the training
    data of zoo model ``name`` (poisoned at its rate with its trigger, or
    with its share of labels flipped); clean models get clean data.
    ``source="training"``: the model's own training set instead (all of it;
    ``n`` and ``seed`` are ignored)."""
    entry = zoo_entry(name)
    if source == "training":
        return entry.training_data()
    data = make_dataset(n, seed=seed)
    s = entry.settings
    if entry.trigger is not None:
        data = poison_dataset(data, entry.trigger, entry.target_class, s["poison_rate"], seed)
    if s.get("label_noise"):
        noise = s["label_noise"]
        data = flip_labels(data, noise["source"], noise["dest"], noise["share"], seed)
    return data


def region_trigger_models(names: Optional[Sequence[str]] = None) -> List[str]:
    """``names``, or every zoo model whose trigger sits in a region (patch and blended triggers)."""
    return list(names) if names else [e.name for e in reference_zoo() if e.kind in ("patch", "blended")]


def clean_reference(arch: str, n_data: int, seed: int):
    """The zoo's clean ``arch`` model: ``(entry, model, trajectory, data)``,
    with ``n_data`` fresh examples to explain it on."""
    entry = zoo_entry(f"{arch}_clean")
    return entry, entry.load(), entry.trajectory(), explained_data(entry.name, n_data, seed)


def synthesise(model, data, trajectory: Optional[List[Dict[str, Tensor]]], images_per_class: int, mode: str,
               iterations: int, seed: int, augment: bool = True, **options) -> ClassWiseResult:
    """The benchmarks' synthesis: ``RECIPE`` plus the given options."""
    kwargs = dict(RECIPE, images_per_class=images_per_class, mode=mode, checkpoints=trajectory,
                  iterations=iterations, seed=seed, augment=shift_and_flip if augment else None)
    kwargs.update(options)
    return ClassWiseSynthesis(model).attribute(data, **kwargs)


def views(x: Tensor, gen: torch.Generator) -> Tensor:
    """Label-preserving random views of shape images for fresh-model training:
    flips, quarter turns, channel permutation, colour inversion and circular
    shifts up to 12 px (the class is the shape; colour, position and
    orientation are random in this world)."""
    n = x.shape[0]
    for dim in (-1, -2):
        x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), x.flip(dim), x)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), (-2, -1))
    perm = torch.stack([torch.randperm(3, generator=gen) for _ in range(n)])
    x = torch.gather(x, 1, perm.view(n, 3, 1, 1).expand_as(x))
    x = torch.where((torch.rand(n, generator=gen) < 0.5).view(-1, 1, 1, 1), 1 - x, x)
    shifts = torch.randint(-12, 13, (n, 2), generator=gen).tolist()
    return torch.stack([torch.roll(xi, (a, b), (-2, -1)) for xi, (a, b) in zip(x, shifts)])


def instance_norm(model: nn.Module) -> nn.Module:
    """``model`` with every BatchNorm2d replaced by a per-image normalisation with the same
    learnable scale and shift (``GroupNorm`` with one group per channel, i.e. instance norm): the
    normalisation dataset condensation's evaluation network uses. It keeps no dataset statistics."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, nn.GroupNorm(child.num_features, child.num_features, affine=True))
    return model


def train_fresh(arch: str, images: Tensor, labels: Tensor, steps: int, seed: int,
                init: Optional[Dict[str, Tensor]] = None, augment: bool = True, batch: int = 50,
                lr: float = 3e-3, norm: str = "batch"):
    """A fresh model trained on ``images`` only, with the reference models'
    optimiser (AdamW, weight decay 5e-4, one-cycle schedule peaking at ``lr``).

    ``init``: start from these weights (e.g. the trajectory's initialisation)
    instead of a random initialisation drawn from ``seed``. A set smaller
    than the batch is tiled (each copy a different view when ``augment``),
    so BatchNorm always sees ``batch`` inputs. ``norm="instance"``: the
    architecture with instance norm in place of BatchNorm (:func:`instance_norm`).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(arch) if norm == "batch" else instance_norm(build_model(arch))
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(steps):
        if len(images) > batch:
            idx = torch.randint(len(images), (batch,), generator=gen)
        else:
            idx = torch.arange(batch) % len(images)
        x = views(images[idx], gen) if augment else images[idx]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels[idx]).backward()
        opt.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, data) -> float:
    preds = torch.cat([model(data.images[i:i + 250]).argmax(1) for i in range(0, len(data), 250)])
    return float((preds == data.labels).float().mean())


def random_real_sets(data, classes: Sequence[int], n: int, draws: int, seed: int) -> List[Tensor]:
    """``draws`` tensors ``[C, n, ...]`` of random real examples per class."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        rows = []
        for c in classes:
            idx = (data.labels == c).nonzero().flatten()
            rows.append(data.images[idx[torch.randperm(len(idx), generator=gen)[:n]]])
        out.append(torch.stack(rows))
    return out


def command_line(script: str, args) -> str:
    """The command that reproduces a run with these ``args``."""
    words = []
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            words.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, (list, tuple)):
            words.append(f"{flag} {' '.join(map(str, v))}")
        elif v is not None:
            words.append(f"{flag} {v}")
    return f"python -m benchmarks.{script} " + " ".join(words)


def write(stem: str, title: str, command: str, seconds: float, lines: List[str], payload: Dict[str, Any]) -> None:
    """``benchmarks/results/{stem}.md`` and ``.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(command=command, seconds=round(seconds, 1), torch=torch.__version__, **payload)
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    head = [f"# {title}", "", f"Command: `{command}` ({seconds:.0f} s wall, 1 CPU thread, shared machine).", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(head + lines) + "\n")
    print(f"wrote {RESULTS / stem}.{{md,json}}", file=sys.stderr)
