"""Battery cases for the attribution methods and the backdoor scans (see ``battery.py``).

Every row is one bad or edge value a Captum user might pass; the tables are
data, so a changed or new API gets cases by adding rows. Shared tables
(targets, inputs, models) come from ``battery_core``.
"""
import inspect
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.battery_core import (
    DEFAULT,
    INF,
    NAN,
    NONFINITE,
    Case,
    Fresh,
    NaNOut,
    ScaledNet,
    TupleOut,
    finite_result,
    fresh,
    images,
    inputs_rows,
    model_rows,
    option_cases,
    pop_arg,
    target_cases,
    tiny_net,
)

__all__ = ["method_cases"]


# ---------------------------------------------------------------- SISE

def _sise(env, kwargs: Optional[Dict[str, Any]] = None, target: Any = DEFAULT) -> Any:
    from captum_global.attr import SISE

    kw = fresh(dict(kwargs or {}))
    model = env.track(pop_arg(kw, "model", tiny_net))
    x = pop_arg(kw, "inputs", images)
    layers = pop_arg(kw, "layers", lambda: None)
    sise = env.watch(SISE(model) if layers is None else SISE(model, layers=layers))
    return sise.attribute(x, target=[0, 2] if target is DEFAULT else target, **kw)


_SISE_OPTIONS = {
    "baselines": [
        ("nan", {"baselines": NAN}, "error"), ("inf", {"baselines": INF}, "error"),
        ("nan-tensor", {"baselines": torch.full((2, 3, 16, 16), NAN)}, "error"),
        ("wrong-spatial-shape", {"baselines": torch.zeros(2, 3, 8, 8)}, "error"),
        ("wrong-batch", {"baselines": torch.zeros(3, 3, 16, 16)}, "error"),
        ("extra-baseline-in-tuple", {"baselines": (0.0, 0.0)}, "error"),
        ("string", {"baselines": "black"}, "error"),
        ("zero-tensor", {"baselines": torch.zeros(2, 3, 16, 16)}, "accept", {}),
        ("one-row-tensor", {"baselines": torch.zeros(1, 3, 16, 16)}, "accept", {}),
        ("numpy-float", {"baselines": np.float32(0.0)}, "accept", {}),
    ],
    "mu": [
        ("nan", {"mu": NAN}, "error"), ("string", {"mu": "high"}, "error"), ("bool", {"mu": True}, "error"),
        ("tensor", {"mu": torch.tensor([0.0, 1.0])}, "error"),
        ("minus-infinity", {"mu": float("-inf")}, "accept"),
        ("numpy-float", {"mu": np.float64(0.0)}, "accept", {}),
    ],
    "score": [
        ("unknown-name", {"score": "probability"}, "error"),
        ("callable-wrong-shape", {"score": lambda out: out[:, :1]}, "error", ("score",)),
        ("callable-returns-tuple", {"score": lambda out: (out,)}, "error", ("score",)),
        ("callable-returns-nan", {"score": lambda out: out * NAN}, "error", NONFINITE),
        ("softmax", {"score": "softmax"}, "accept"),
    ],
    "fusion": [
        ("unknown", {"fusion": "max"}, "error"), ("int", {"fusion": 3}, "error"),
        ("mean", {"fusion": "mean"}, "accept"),
    ],
    "max_maps_per_layer": [
        ("zero", {"max_maps_per_layer": 0}, "error"), ("negative", {"max_maps_per_layer": -1}, "error"),
        ("fraction-above-one", {"max_maps_per_layer": 1.5}, "error"), ("nan", {"max_maps_per_layer": NAN}, "error"),
        ("bool", {"max_maps_per_layer": True}, "error"), ("string", {"max_maps_per_layer": "all"}, "error"),
        ("numpy-int", {"max_maps_per_layer": np.int64(2)}, "accept", {"max_maps_per_layer": 2}),
        ("quarter", {"max_maps_per_layer": 0.25}, "accept"),
    ],
    "perturbations_per_eval": [
        ("zero", {"perturbations_per_eval": 0}, "error"), ("negative", {"perturbations_per_eval": -1}, "error"),
        ("float", {"perturbations_per_eval": 2.5}, "error"), ("bool", {"perturbations_per_eval": True}, "error"),
        ("string", {"perturbations_per_eval": "8"}, "error"), ("none", {"perturbations_per_eval": None}, "error"),
        ("numpy-int", {"perturbations_per_eval": np.int64(5)}, "accept", {}),
        ("one", {"perturbations_per_eval": 1}, "accept", {}),
    ],
    "show_progress": [("string", {"show_progress": "yes"}, "error")],
    "return_layer_maps": [("string", {"return_layer_maps": "yes"}, "error")],
    "layers": [
        ("unknown-name", {"layers": ["nope"]}, "error"), ("empty-list", {"layers": []}, "error"),
        ("not-spatial", {"layers": ["8"]}, "error"),
    ],
    "additional_forward_args": [
        ("per-example-scale", {"model": Fresh(lambda: ScaledNet(tiny_net())),
                               "additional_forward_args": (torch.tensor([1.0, 2.0]),)}, "accept"),
    ],
}


def _sise_cases() -> List[Case]:
    cases = target_cases("SISE", lambda env, t: _sise(env, target=t))
    cases += option_cases("SISE", "inputs", lambda env, kw: _sise(env, kw), inputs_rows())
    cases += option_cases("SISE", "forward_func", lambda env, kw: _sise(env, kw), model_rows("model"))
    for group, rows in _SISE_OPTIONS.items():
        cases += option_cases("SISE", group, lambda env, kw: _sise(env, kw), rows)
    cases.append(Case("SISE", "forward_func", "a-plain-function", "error",
                      lambda env: _sise(env, {"model": lambda x: x.mean((2, 3))}),
                      names=("forward_func", "model", "Module")))
    return cases


# ---------------------------------------------------------------- InputAgnosticSaliency

def _ias(env, kwargs: Optional[Dict[str, Any]] = None, target: Any = DEFAULT) -> Any:
    from captum_global.attr import InputAgnosticSaliency

    kw = dict(n_steps=2, samples_per_step=2, seed=0)
    kw.update(fresh(dict(kwargs or {})))
    model = env.track(pop_arg(kw, "model", tiny_net))
    x = pop_arg(kw, "inputs", images)
    method = env.watch(InputAgnosticSaliency(model))
    return method.attribute(x, target=[0, 2] if target is DEFAULT else target, **kw)


_IAS_OPTIONS = {
    "eps": [("nan", {"eps": NAN}, "error"), ("negative", {"eps": -1.0}, "error"), ("zero-size", {"eps": 0.0}, "error")],
    "step_size": [("inf", {"step_size": INF}, "error"), ("nan", {"step_size": NAN}, "error"),
                  ("zero", {"step_size": 0.0}, "error"), ("negative", {"step_size": -0.1}, "error"),
                  ("string", {"step_size": "0.1"}, "error")],
    "radius": [("nan", {"radius": NAN}, "error"), ("zero", {"radius": 0}, "error"), ("inf", {"radius": INF}, "error"),
               ("numpy-float", {"radius": np.float32(8.0)}, "accept", {})],
    "n_steps": [("zero", {"n_steps": 0}, "error"), ("float", {"n_steps": 1.5}, "error"),
                ("bool", {"n_steps": True}, "error"), ("numpy-int", {"n_steps": np.int64(2)}, "accept", {})],
    "samples_per_step": [("zero", {"samples_per_step": 0}, "error"), ("float", {"samples_per_step": 2.0}, "error"),
                         ("numpy-int", {"samples_per_step": np.int32(2)}, "accept", {})],
    "norm": [("unknown", {"norm": "l1"}, "error"), ("linf", {"norm": "linf"}, "accept")],
    "betas": [("above-one", {"betas": (1.5, 0.9)}, "error"), ("nan", {"betas": (NAN, 0.9)}, "error"),
              ("one-value", {"betas": (0.9,)}, "error"), ("number", {"betas": 0.9}, "error")],
    "value_range": [("inverted", {"value_range": (1.0, 0.0)}, "error"), ("nan", {"value_range": (0.0, NAN)}, "error"),
                    ("string", {"value_range": "unit"}, "error"), ("none", {"value_range": None}, "accept")],
    "refine": [("unknown", {"refine": "sharpen"}, "error"),
               ("callable-returns-nan", {"refine": lambda r: r * NAN}, "error", NONFINITE + ("refine",))],
    "smooth_sigma": [("negative", {"smooth_sigma": -1.0}, "error"), ("nan", {"smooth_sigma": NAN}, "error")],
    "suppress": [("one", {"suppress": 1.0}, "error"), ("nan", {"suppress": NAN}, "error")],
    "scale": [("unknown", {"scale": "log"}, "error")],
    "seed": [("negative", {"seed": -1}, "error"), ("float", {"seed": 1.5}, "error"), ("string", {"seed": "0"}, "error"),
             ("none", {"seed": None}, "accept"), ("numpy-int", {"seed": np.int64(0)}, "accept", {})],
    "distribution": [("unknown", {"distribution": "poisson"}, "error"),
                     ("nan-samples", {"distribution": torch.full((4, 3, 16, 16), NAN)}, "error"),
                     ("wrong-shape-samples", {"distribution": torch.rand(4, 3, 8, 8)}, "error"),
                     ("empty-samples", {"distribution": torch.rand(0, 3, 16, 16)}, "error"),
                     ("gaussian", {"distribution": "gaussian"}, "accept")],
    "show_progress": [("string", {"show_progress": "no"}, "error")],
    "return_perturbation": [("string", {"return_perturbation": "yes"}, "error")],
}


def _ias_cases() -> List[Case]:
    cases = target_cases("InputAgnosticSaliency", lambda env, t: _ias(env, target=t))
    cases += option_cases("InputAgnosticSaliency", "inputs", lambda env, kw: _ias(env, kw),
                          [r for r in inputs_rows() if r[0] in ("empty-batch", "3-d", "integer-dtype", "numpy-array",
                                                                "list-of-images", "inference-mode", "requires-grad")])
    cases += option_cases("InputAgnosticSaliency", "forward_func", lambda env, kw: _ias(env, kw), model_rows("model"))
    for group, rows in _IAS_OPTIONS.items():
        cases += option_cases("InputAgnosticSaliency", group, lambda env, kw: _ias(env, kw), rows)
    return cases


# ---------------------------------------------------------------- ClassWiseSynthesis

def _dataset(nan: bool = False, labels: Any = None, n: int = 9) -> TensorDataset:
    x = 0.1 + 0.8 * torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    if nan:
        x[4, 0, 1, 1] = NAN  # one pixel of one example
    y = torch.arange(n) % 3 if labels is None else labels
    return TensorDataset(x, y)


def _classwise(env, kwargs: Optional[Dict[str, Any]] = None) -> Any:
    from captum_global.attr import ClassWiseSynthesis

    kw = dict(iterations=1, images_per_class=1, batch_size=8, seed=0)
    kw.update(fresh(dict(kwargs or {})))
    model = env.track(pop_arg(kw, "model", tiny_net))
    data = pop_arg(kw, "data", _dataset)
    grad_mode = kw.pop("grad_mode", None)
    method = env.watch(ClassWiseSynthesis(model))
    if grad_mode == "no_grad":
        with torch.no_grad():
            return method.attribute(data, **kw)
    return method.attribute(data, **kw)


def _moved(result: Any, env: Any = None) -> Optional[str]:
    """The synthesis did something: not its starting point returned unchanged."""
    problem = finite_result(result)
    if problem:
        return problem
    if torch.equal(result.images, result.initial_images):
        return "returned the starting images unchanged"
    return None


class _NoParameters(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


_CLASSWISE_OPTIONS = {
    "data": [
        ("one-nan-pixel", {"data": _dataset(nan=True)}, "error", ("data",) + NONFINITE),
        ("empty", {"data": TensorDataset(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))}, "error"),
        ("a-tensor", {"data": torch.rand(9, 3, 8, 8)}, "error"),
        ("label-out-of-range", {"data": _dataset(labels=torch.arange(9) % 3 + 4)}, "error", ("label", "data")),
        ("float-labels", {"data": _dataset(labels=(torch.arange(9) % 3).float())}, "error", ("label", "data")),
        ("data-loader", {"data": DataLoader(_dataset(), batch_size=4)}, "accept", {}),
    ],
    "classes": [
        ("duplicates", {"classes": [0, 0]}, "error"), ("out-of-range", {"classes": [5]}, "error"),
        ("float", {"classes": [1.5]}, "error"), ("empty", {"classes": []}, "error"),
        ("string", {"classes": "0"}, "error"),
        ("numpy-array", {"classes": np.array([0, 1])}, "accept", {"classes": [0, 1]}),
        ("numpy-ints", {"classes": [np.int64(0)]}, "accept", {"classes": [0]}),
    ],
    "images_per_class": [("zero", {"images_per_class": 0}, "error"), ("float", {"images_per_class": 1.5}, "error"),
                         ("bool", {"images_per_class": True}, "error"),
                         ("numpy-int", {"images_per_class": np.int64(1)}, "accept", {})],
    "iterations": [("negative", {"iterations": -1}, "error"), ("float", {"iterations": 1.5}, "error"),
                   ("numpy-int", {"iterations": np.int64(1)}, "accept", {})],
    "init": [("unknown", {"init": "zeros"}, "error")],
    "distance": [("unknown", {"distance": "l1"}, "error"), ("mse", {"distance": "mse"}, "accept", _moved)],
    "optimizer": [("unknown", {"optimizer": "rmsprop"}, "error"),
                  ("sgd", {"optimizer": "sgd", "lr": 1.0}, "accept", _moved)],
    "lr": [("nan", {"lr": NAN}, "error"), ("negative", {"lr": -1.0}, "error"), ("zero", {"lr": 0.0}, "error"),
           ("inf", {"lr": INF}, "error")],
    "momentum": [("nan", {"momentum": NAN}, "error"), ("negative", {"momentum": -0.5}, "error")],
    "batch_size": [("zero", {"batch_size": 0}, "error"), ("numpy-int", {"batch_size": np.int64(8)}, "accept", {})],
    "priors": [("nan-weight", {"priors": {"tv": NAN}}, "error"), ("unknown-prior", {"priors": {"bogus": 1.0}}, "error"),
               ("negative-weight", {"priors": {"tv": -1.0}}, "error"),
               ("tv", {"priors": {"tv": 0.1, "l2": 0.1}}, "accept", _moved)],
    "value_range": [("inverted", {"value_range": (1.0, 0.0)}, "error"), ("nan", {"value_range": (0.0, NAN)}, "error"),
                    ("string", {"value_range": "unit"}, "error")],
    "augment": [("returns-nan", {"augment": lambda x: x * NAN}, "error", ("augment",) + NONFINITE),
                ("not-callable", {"augment": 3}, "error"),
                ("draws-from-global-rng", {"augment": lambda x: x + 0.01 * torch.randn_like(x)}, "accept",
                 {"augment": lambda x: x + 0.01 * torch.randn_like(x)})],
    "checkpoints": [("a-state-dict-not-a-list", {"checkpoints": Fresh(lambda: tiny_net(seed=1).state_dict())},
                     "either", ("checkpoints",)),
                    ("nan-weights", {"checkpoints": Fresh(lambda: [{k: v * NAN for k, v in
                                                                    tiny_net(seed=1).state_dict().items()}])},
                     "error", ("checkpoints",) + NONFINITE)],
    "seed": [("negative", {"seed": -1}, "error"), ("float", {"seed": 1.5}, "error"),
             ("none", {"seed": None}, "accept", _moved), ("numpy-int", {"seed": np.int64(0)}, "accept", {}),
             ("same-seed-twice", {"seed": 0}, "accept", {"seed": 0})],
    "parameters": [("unknown-name", {"parameters": ["nope"]}, "error")],
    "model": [("no-parameters", {"model": Fresh(_NoParameters)}, "error", ("model", "parameter")),
              ("returns-tuple", {"model": Fresh(lambda: TupleOut(tiny_net()))}, "error",
               ("model", "forward_func", "tuple")),
              ("float16", {"model": Fresh(lambda: tiny_net().half())}, "either", ("model", "dtype", "float16")),
              ("train-mode-batch-norm", {"model": Fresh(lambda: tiny_net(batch_norm=True).train())}, "accept",
               {"model": Fresh(lambda: tiny_net(batch_norm=True))})],
    "grad_mode": [("under-no-grad", {"grad_mode": "no_grad"}, "accept", {})],
    "show_progress": [("string", {"show_progress": "yes"}, "error")],
}


def _classwise_cases() -> List[Case]:
    cases = []
    for group, rows in _CLASSWISE_OPTIONS.items():
        cases += option_cases("ClassWiseSynthesis", group, lambda env, kw: _classwise(env, kw), rows)
    return cases


# ---------------------------------------------------------------- backdoor scans

# Small run lengths under each scan's own option names.
_FAST = {"scan_for_backdoor": {"n_steps": 2, "batch_size": 2, "check_every": 1},
         "neural_cleanse": {"n_epochs": 1, "batch_size": 2}}


def _fast_options(func: Callable) -> Dict[str, Any]:
    """Small step counts under whatever names ``func`` takes (all of them through ``**options``)."""
    candidates = dict(_FAST.get(func.__name__, {"n_steps": 2, "samples_per_step": 2}))
    params = inspect.signature(func).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return candidates
    return {k: v for k, v in candidates.items() if k in params}


def _scan(env, kwargs: Optional[Dict[str, Any]] = None) -> Any:
    from captum_global.backdoor import scan_for_backdoor

    kw = _fast_options(scan_for_backdoor)
    kw.update(fresh(dict(kwargs or {})))
    model = env.track(pop_arg(kw, "model", tiny_net))
    example = pop_arg(kw, "example_input", lambda: torch.zeros(1, 3, 16, 16))
    return scan_for_backdoor(model, example, **kw)


def _has_parameter(module: str, name: str, parameter: str) -> Callable[[], bool]:
    def available() -> bool:
        import importlib

        func = getattr(importlib.import_module(module), name, None)
        return func is not None and (not parameter or parameter in inspect.signature(func).parameters)

    return available


def _trigger(h: int = 16, w: int = 16, value: float = 1.0) -> torch.Tensor:
    mask = torch.zeros(h, w)
    mask[-4:, -4:] = value
    return mask.bool() if value == 1.0 else mask


_SCAN_OPTIONS = {
    "classes": [("duplicates", {"classes": [0, 0, 1]}, "error"), ("floats", {"classes": [0.5, 1, 2]}, "error"),
                ("out-of-range", {"classes": [0, 1, 7]}, "error"), ("too-few", {"classes": [0, 1]}, "error"),
                ("string", {"classes": "all"}, "error"),
                ("numpy-array", {"classes": np.array([0, 1, 2])}, "accept", {"classes": [0, 1, 2]})],
    "threshold": [("nan", {"threshold": NAN}, "error"), ("negative", {"threshold": -1.0}, "error"),
                  ("string", {"threshold": "2"}, "error"),
                  ("numpy-float", {"threshold": np.float64(2.0)}, "accept", {})],
    "trigger_mask": [("wrong-size", {"trigger_mask": _trigger(8, 8)}, "error"),
                     ("empty", {"trigger_mask": torch.zeros(16, 16, dtype=torch.bool)}, "error"),
                     ("non-binary", {"trigger_mask": _trigger(value=0.5)}, "error"),
                     ("nan", {"trigger_mask": torch.full((16, 16), NAN)}, "error"),
                     ("bool-mask", {"trigger_mask": _trigger()}, "accept", finite_result)],
    "example_input": [("empty-batch", {"example_input": torch.zeros(0, 3, 16, 16)}, "error"),
                      ("3-d", {"example_input": torch.zeros(3, 16, 16)}, "error"),
                      ("list", {"example_input": [torch.zeros(3, 16, 16)]}, "error")],
    "seed": [("negative", {"seed": -1}, "error"), ("float", {"seed": 1.5}, "error"),
             ("numpy-int", {"seed": np.int64(0)}, "accept", {})],
    "model": [("returns-tuple", {"model": Fresh(lambda: TupleOut(tiny_net()))}, "error",
               ("model", "forward_func", "tuple")),
              ("nan-always", {"model": Fresh(lambda: NaNOut(tiny_net()))}, "error", NONFINITE),
              ("train-mode-batch-norm", {"model": Fresh(lambda: tiny_net(batch_norm=True).train())}, "accept",
               {"model": Fresh(lambda: tiny_net(batch_norm=True))})],
}


def _nan_images():
    x = images(6)
    x[2, 1, 3, 3] = NAN
    return x


def _neural_cleanse(env, kwargs: Optional[Dict[str, Any]] = None) -> Any:
    from captum_global import backdoor

    kw = _fast_options(backdoor.neural_cleanse)
    kw.update(fresh(dict(kwargs or {})))
    model = env.track(pop_arg(kw, "model", tiny_net))
    clean = pop_arg(kw, "clean_inputs", lambda: images(6))
    return backdoor.neural_cleanse(model, clean, **kw)


_NEURAL_CLEANSE_OPTIONS = {
    "clean_inputs": [("nan", {"clean_inputs": Fresh(_nan_images)}, "error"),
                     ("empty", {"clean_inputs": images(6)[:0]}, "error"),
                     ("3-d", {"clean_inputs": images(6)[0]}, "error")],
    "classes": [("duplicates", {"classes": [0, 0, 1]}, "error"), ("out-of-range", {"classes": [0, 1, 7]}, "error")],
    "threshold": [("nan", {"threshold": NAN}, "error")],
    "trigger_mask": [("wrong-size", {"trigger_mask": _trigger(8, 8)}, "error")],
    "seed": [("negative", {"seed": -1}, "error")],
    "model": [("returns-tuple", {"model": Fresh(lambda: TupleOut(tiny_net()))}, "error",
               ("model", "forward_func", "tuple")),
              ("train-mode-batch-norm", {"model": Fresh(lambda: tiny_net(batch_norm=True).train())}, "accept",
               {"model": Fresh(lambda: tiny_net(batch_norm=True))})],
}


def _backdoor_cases() -> List[Case]:
    cases = []
    for group, rows in _SCAN_OPTIONS.items():
        cases += option_cases("scan_for_backdoor", group, lambda env, kw: _scan(env, kw), rows)
    clean_rows = [("nan", {"clean_inputs": Fresh(_nan_images)}, "error"),
                  ("wrong-shape", {"clean_inputs": images(4, size=8)}, "error")]
    cases += option_cases("scan_for_backdoor", "clean_inputs", lambda env, kw: _scan(env, kw), clean_rows,
                          available=_has_parameter("captum_global.backdoor", "scan_for_backdoor", "clean_inputs"))
    for group, rows in _NEURAL_CLEANSE_OPTIONS.items():
        cases += option_cases("neural_cleanse", group, lambda env, kw: _neural_cleanse(env, kw), rows,
                              available=_has_parameter("captum_global.backdoor", "neural_cleanse", ""))
    return cases


def method_cases() -> List[Case]:
    """The cases of SISE, InputAgnosticSaliency, ClassWiseSynthesis, scan_for_backdoor, neural_cleanse."""
    return _sise_cases() + _ias_cases() + _classwise_cases() + _backdoor_cases()
