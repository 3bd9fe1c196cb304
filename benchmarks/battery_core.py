"""The battery's data model, tiny models and the tables of values every API meets (see ``battery.py``).

A :class:`Case` is data: the API it exercises, a label, what should happen
(``expect``), the call itself (a function of an :class:`Env`), the names one
of which an error message must contain, and an optional check of an accepted
result. Tables of values (targets, inputs, models) are shared by every API
that takes them; ``battery_methods.py`` and ``battery_tools.py`` turn them into
cases per API. Add a case by adding a row.
"""
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Case", "CliCall", "Env", "all_cases", "NAN", "INF", "TARGETS_OK", "TARGETS_BAD", "tiny_net",
           "Fresh", "fresh", "pop_arg", "inputs_rows", "model_rows", "target_cases", "option_cases", "NONFINITE",
           "images", "same_as", "is_tensor_like", "finite_result", "DEFAULT", "NaNOnPerturbed", "TupleOut", "DictOut", "NaNOut", "ScaledNet"]

NAN, INF = float("nan"), float("inf")
DEFAULT = object()  # "argument not given" where None is a value worth trying
EXPECTATIONS = ("error", "accept", "either")


@dataclass(frozen=True)
class CliCall:
    """A command line to run as ``python -m captum_global ARGV`` in ``cwd``."""

    argv: Tuple[str, ...]
    cwd: Optional[str] = None


@dataclass(frozen=True)
class Case:
    """One call and what it should do.

    Attributes:
        api: the public API exercised (``"SISE"``, ``"metrics.deletion_auc"``, ``"cli"``...).
        group: what is varied (``"target"``, ``"inputs"``, an option name...).
        label: the value tried, in words.
        expect: ``"error"`` (a clear error naming one of ``names``),
            ``"accept"`` (a result that passes ``check``) or ``"either"``.
        call: ``call(env) -> result`` for Python APIs.
        names: an error message must contain one of these (case-insensitive).
        check: ``check(result, env) -> None`` or a description of what is
            wrong; for command lines ``check(completed_process)``.
        cli: ``cli(env) -> CliCall`` for command-line cases (instead of ``call``).
        after: ``after(env) -> None or problem`` run after a command line
            (e.g. "the existing report was overwritten").
        available: ``available() -> bool``; False skips the case.
    """

    api: str
    group: str
    label: str
    expect: str
    call: Optional[Callable[["Env"], Any]] = None
    names: Tuple[str, ...] = ()
    check: Optional[Callable[..., Optional[str]]] = None
    cli: Optional[Callable[["Env"], CliCall]] = None
    after: Optional[Callable[["Env"], Optional[str]]] = None
    available: Optional[Callable[[], bool]] = None

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {EXPECTATIONS}, got {self.expect!r}")
        if (self.call is None) == (self.cli is None):
            raise ValueError(f"case {self.id}: give exactly one of call and cli")

    @property
    def id(self) -> str:
        return f"{self.api}/{self.group}/{self.label}"

    def matches(self, outcome: str) -> bool:
        """True when ``outcome`` is what this case expects."""
        wanted = {"error": ("clear_error",), "accept": ("accepted",), "either": ("clear_error", "accepted")}
        return outcome in wanted[self.expect]


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules()],
    }


class Env:
    """What one case builds: models whose state is checked afterwards, objects, a scratch folder."""

    def __init__(self) -> None:
        self._models: List[Tuple[nn.Module, Dict[str, Any]]] = []
        self._objects: List[Tuple[Any, Dict[str, int]]] = []
        self._tmp: Optional[Path] = None

    def track(self, model: nn.Module) -> nn.Module:
        """Remember ``model`` as it is now (if it is a module); the battery checks that the call left it so."""
        if isinstance(model, nn.Module):
            self._models.append((model, _snapshot(model)))
        return model

    def watch(self, obj: Any) -> Any:
        """Remember ``obj``'s public attributes; a call must not change them (no state between calls)."""
        self._objects.append((obj, {k: id(v) for k, v in vars(obj).items() if not k.startswith("_")}))
        return obj

    def tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="battery-"))
        return self._tmp

    def state_problems(self) -> List[str]:
        problems = []
        for model, before in self._models:
            after = _snapshot(model)
            if before["training"] != after["training"]:
                problems.append("the model's training flags changed")
            if before["requires_grad"] != after["requires_grad"]:
                problems.append("the model's requires_grad flags changed")
            if before["hooks"] != after["hooks"]:
                problems.append("hooks were left on the model")
            changed = [k for k, v in before["state"].items()
                       if k not in after["state"] or not torch.equal(v, after["state"][k])]
            if changed:
                problems.append(f"the model's weights or buffers changed ({', '.join(changed[:3])})")
        for obj, before in self._objects:
            now = {k: id(v) for k, v in vars(obj).items() if not k.startswith("_")}
            changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
            if changed:
                problems.append(f"public state kept on the {type(obj).__name__} object between calls "
                                f"({', '.join(changed)})")
        return problems

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ---------------------------------------------------------------- tiny models and inputs

def tiny_net(seed: int = 0, classes: int = 3, batch_norm: bool = False, channels: int = 3) -> nn.Module:
    """A two-block CNN for 8-32 px inputs, in eval mode (built without touching the global RNG)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # layer constructors draw from the global RNG
        net = nn.Sequential(
            nn.Conv2d(channels, 6, 3, padding=1), nn.BatchNorm2d(6) if batch_norm else nn.Identity(), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes),
        )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if batch_norm:
            net[1].running_mean.copy_(torch.rand(6, generator=g) * 0.1)
            net[1].running_var.copy_(1 + torch.rand(6, generator=g))
    return net.eval()


def images(n: int = 2, size: int = 16, seed: int = 1, channels: int = 3) -> Tensor:
    """Images in [0.1, 0.9]: no pixel is exactly 0 (see :class:`NaNOnPerturbed`)."""
    return 0.1 + 0.8 * torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


class TupleOut(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean()


class DictOut(TupleOut):
    def forward(self, x):
        return {"logits": self.net(x)}


class NaNOut(TupleOut):
    """NaN for every input."""

    def forward(self, x):
        return self.net(x) * NAN


class NaNOnPerturbed(TupleOut):
    """NaN for inputs with a pixel exactly 0 (masked or baseline inputs), finite on the images themselves."""

    def forward(self, x):
        out = self.net(x)
        dark = (x.flatten(1) == 0).any(1, keepdim=True)
        return torch.where(dark, torch.full_like(out, NAN), out)


class ScaledNet(TupleOut):
    """Takes a per-example scale as an additional forward argument."""

    def forward(self, x, scale):
        return self.net(x) * scale.view(-1, 1)


# ---------------------------------------------------------------- checks

def finite_result(result: Any, env: Any = None) -> Optional[str]:
    """None when every tensor in ``result`` (tuple, dict, dataclass) is finite, else what is wrong."""
    tensors: List[Tensor] = []

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 4:
            return
        if isinstance(value, Tensor):
            tensors.append(value)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v, depth + 1)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, depth + 1)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name), depth + 1)

    walk(result)
    if not tensors:
        return f"returned {type(result).__name__} without tensors"
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
        return "returned NaN or infinite values"
    return None


def is_tensor_like(result: Any, shape: Optional[Sequence[int]] = None) -> Optional[str]:
    """None if ``result`` is a finite tensor (of ``shape``), else what is wrong."""
    if not isinstance(result, Tensor):
        return f"returned a {type(result).__name__}, not a tensor"
    if shape is not None and tuple(result.shape) != tuple(shape):
        return f"returned shape {tuple(result.shape)}, expected {tuple(shape)}"
    if result.is_floating_point() and not bool(torch.isfinite(result).all()):
        return "returned NaN or infinite values"
    return None


def _close(a: Any, b: Any, atol: float) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y, atol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], atol) for k in a)
    if hasattr(a, "__dataclass_fields__") and type(a) is type(b):
        return all(_close(getattr(a, f), getattr(b, f), atol) for f in a.__dataclass_fields__
                   if isinstance(getattr(a, f), (Tensor, tuple, list, dict)))
    return a == b


def same_as(reference: Callable[["Env"], Any], atol: float = 1e-5) -> Callable[[Any, "Env"], Optional[str]]:
    """A check: the result equals ``reference(env)`` (the same call with a canonical value)."""

    def check(result: Any, env: "Env") -> Optional[str]:
        expected = reference(env)
        if not _close(result, expected, atol):
            return "the result differs from the same call with the canonical value"
        return None

    return check


# ---------------------------------------------------------------- targets (N = 2 examples, 3 classes)

# (label, value, the canonical target it means)
TARGETS_OK: List[Tuple[str, Any, Any]] = [
    ("int", 1, 1),
    ("numpy-int64", np.int64(1), 1),
    ("numpy-int32", np.int32(1), 1),
    ("negative-int", -2, 1),
    ("tuple", (1,), 1),
    ("list", [0, 2], [0, 2]),
    ("list-of-numpy-ints", [np.int64(0), np.int64(2)], [0, 2]),
    ("list-of-tuples", [(0,), (2,)], [0, 2]),
    ("tensor-0d", torch.tensor(1), 1),
    ("tensor-one-element", torch.tensor([1]), 1),
    ("tensor-per-example", torch.tensor([0, 2]), [0, 2]),
    ("tensor-int32", torch.tensor([0, 2], dtype=torch.int32), [0, 2]),
    ("numpy-array", np.array([0, 2]), [0, 2]),
]

# (label, value): refused by Captum's rules, or out of range for a 3-class model
TARGETS_BAD: List[Tuple[str, Any]] = [
    ("bool", True),
    ("float", 1.0),
    ("numpy-float", np.float64(1.0)),
    ("string", "1"),
    ("float-tensor", torch.tensor([0.0, 2.0])),
    ("bool-tensor", torch.tensor([True, False])),
    ("list-too-short", [1]),
    ("list-too-long", [0, 1, 2]),
    ("out-of-range", 3),
    ("negative-out-of-range", -4),
    ("list-out-of-range", [0, 3]),
    ("tensor-2d", torch.tensor([[0, 2]])),
    ("tensor-wrong-length", torch.tensor([0, 1, 2])),
    ("empty-tuple", ()),
    ("tuple-too-long", (1, 0)),
    ("none-for-3-outputs", None),
    ("list-of-floats", [0.0, 2.0]),
    ("list-of-lists", [[0], [2]]),
    ("dict", {0: 1}),
    ("float-numpy-array", np.array([0.0, 2.0])),
]


def target_cases(api: str, run: Callable[["Env", Any], Any], atol: float = 1e-5,
                 available: Optional[Callable[[], bool]] = None) -> List[Case]:
    """Every target of the two tables against ``run(env, target)`` (2 examples, 3 classes)."""
    cases = [Case(api, "target", label, "accept", lambda env, v=value: run(env, v),
                  check=same_as(lambda env, c=canonical: run(env, c), atol), available=available)
             for label, value, canonical in TARGETS_OK]
    cases += [Case(api, "target", label, "error", lambda env, v=value: run(env, v), names=("target",),
                   available=available)
              for label, value in TARGETS_BAD]
    return cases


def option_cases(api: str, group: str, run: Callable[["Env", Dict[str, Any]], Any],
                 rows: Sequence[Tuple], available: Optional[Callable[[], bool]] = None,
                 atol: float = 1e-5) -> List[Case]:
    """Rows ``(label, kwargs, expect[, names or canonical kwargs])`` against ``run(env, kwargs)``.

    For ``expect="error"`` the fourth entry names the argument(s) (default:
    ``group``); for ``"accept"`` it may give canonical kwargs whose result
    the accepted one must equal (else the result need only be a finite
    tensor-like value).
    """
    cases = []
    for row in rows:
        label, kwargs, expect = row[:3]
        extra = row[3] if len(row) > 3 else None
        call = (lambda env, k=kwargs: run(env, k))
        names: Tuple[str, ...] = (group,)
        check = None
        if isinstance(extra, (tuple, list)):
            names = tuple(extra)
        elif isinstance(extra, str):
            names = (extra,)
        elif isinstance(extra, dict):
            check = same_as(lambda env, k=extra: run(env, k), atol)
        elif callable(extra):
            check = extra
        if expect != "error" and check is None:
            check = finite_result
        cases.append(Case(api, group, label, expect, call, names=names if expect != "accept" else (),
                          check=check if expect != "error" else None, available=available))
    return cases


NONFINITE = ("NaN", "infinit", "non-finite", "finite")


# ---------------------------------------------------------------- values built at call time, shared rows

class Fresh:
    """A value built at call time (models, tensors made under inference mode)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def fresh(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (v.make() if isinstance(v, Fresh) else v) for k, v in kwargs.items()}


def _inference_images():
    with torch.inference_mode():
        return images()


def _non_contiguous_images():
    wide = torch.zeros(2, 3, 16, 32)
    view = wide[..., ::2]
    view.copy_(images())
    return view


def inputs_rows(argument: str = "inputs") -> List[tuple]:
    """Image-batch values for an ``[N, C, H, W]`` argument (canonical: ``images()``)."""
    nan = images()
    nan[0, 1, 2, 3] = NAN
    inf = images()
    inf[1, 0, 0, 0] = INF
    return [
        ("nan", {argument: nan}, "error", (argument,)),
        ("inf", {argument: inf}, "error", (argument,)),
        ("empty-batch", {argument: images()[:0]}, "error", (argument,)),
        ("3-d", {argument: images()[0]}, "error", (argument,)),
        ("5-d", {argument: images()[None]}, "error", (argument,)),
        ("integer-dtype", {argument: (images() * 255).long()}, "error", (argument,)),
        ("numpy-array", {argument: images().numpy()}, "error", (argument,)),
        ("list-of-images", {argument: list(images())}, "error", (argument,)),
        ("inference-mode", {argument: Fresh(_inference_images)}, "accept", {}),
        ("requires-grad", {argument: Fresh(lambda: images().requires_grad_(True))}, "accept", {}),
        ("channels-last", {argument: images().contiguous(memory_format=torch.channels_last)}, "accept", {}),
        ("non-contiguous", {argument: Fresh(_non_contiguous_images)}, "accept", {}),
    ]


def model_rows(argument: str = "model", nan_on_perturbed: bool = True) -> List[tuple]:
    """Models that return the wrong thing, NaN, or sit in train mode with batch norm."""
    names = (argument, "forward_func", "tuple", "dict", "one tensor")
    rows = [
        ("returns-tuple", {argument: Fresh(lambda: TupleOut(tiny_net()))}, "error", names),
        ("returns-dict", {argument: Fresh(lambda: DictOut(tiny_net()))}, "error", names),
        ("nan-always", {argument: Fresh(lambda: NaNOut(tiny_net()))}, "error", NONFINITE),
        ("train-mode-batch-norm", {argument: Fresh(lambda: tiny_net(batch_norm=True).train())}, "accept",
         {argument: Fresh(lambda: tiny_net(batch_norm=True))}),
    ]
    if nan_on_perturbed:
        rows.append(("nan-on-perturbed-inputs", {argument: Fresh(lambda: NaNOnPerturbed(tiny_net()))}, "error",
                     NONFINITE))
    return rows


def pop_arg(kw: Dict[str, Any], name: str, default: Callable[[], Any]) -> Any:
    value = kw.pop(name, DEFAULT)
    return default() if value is DEFAULT else value




def all_cases() -> List[Case]:
    """Every case of the battery, in a stable order."""
    from benchmarks.battery_methods import method_cases
    from benchmarks.battery_tools import tool_cases

    cases = method_cases() + tool_cases()
    ids = [c.id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate battery case ids: {duplicates}")
    return cases
