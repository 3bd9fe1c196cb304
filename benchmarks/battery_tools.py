"""Battery cases for the metrics, the line-up, RISE and the command line (see ``battery.py``)."""
import contextlib
import functools
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from benchmarks.battery_core import (
    DEFAULT,
    INF,
    NAN,
    NONFINITE,
    Case,
    CliCall,
    Env,
    Fresh,
    NaNOnPerturbed,
    fresh,
    images,
    inputs_rows,
    model_rows,
    option_cases,
    pop_arg,
    target_cases,
    tiny_net,
)

__all__ = ["tool_cases"]

CURVES = ("insertion_auc", "deletion_auc")
FAITHFULNESS = CURVES + ("drop_and_increase", "average_drop", "increase_in_confidence")
LOCALISATION = ("energy_pointing_game", "bbox_accuracy", "miou")
BOXES = torch.tensor([[2, 2, 10, 10], [4, 0, 16, 8]])


def _attributions(size: int = 16) -> torch.Tensor:
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(9))


def attribution_rows(argument: str = "attributions") -> List[tuple]:
    nan = _attributions()
    nan[0, 0, 1, 1] = NAN
    inf = _attributions()
    inf[1, 0, 2, 2] = -INF
    ints = (_attributions() * 100).long()
    return [
        ("nan", {argument: nan}, "error"), ("inf", {argument: inf}, "error"),
        ("5-d", {argument: _attributions()[None]}, "error"), ("2-d", {argument: _attributions()[0, 0]}, "error"),
        ("bool-dtype", {argument: _attributions() > 0.5}, "error"),
        ("one-example-for-two", {argument: _attributions()[:1]}, "error", (argument, "examples")),
        ("empty", {argument: _attributions()[:0]}, "error", (argument, "examples")),
        ("list", {argument: list(_attributions())}, "error"),
        ("two-tuple", {argument: (_attributions(), _attributions())}, "error"),
        ("integer-dtype", {argument: ints}, "accept", {argument: ints.float()}),
        ("inference-mode", {argument: Fresh(lambda: _inference(_attributions))}, "accept", {}),
        ("requires-grad", {argument: Fresh(lambda: _attributions().requires_grad_(True))}, "accept", {}),
        ("one-tuple", {argument: (_attributions(),)}, "accept", {}),
        ("input-shaped", {argument: _attributions().expand(2, 3, 16, 16) / 3}, "accept", {}),
    ]


def _inference(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return make()


# ---------------------------------------------------------------- metrics

def _faithfulness(name: str) -> Callable[..., Any]:
    def run(env: Env, kwargs: Optional[Dict[str, Any]] = None, target: Any = DEFAULT) -> Any:
        from captum_global import metrics

        kw: Dict[str, Any] = {"n_steps": 4} if name in CURVES else {}
        kw.update(fresh(dict(kwargs or {})))
        model = env.track(pop_arg(kw, "model", tiny_net))
        x = pop_arg(kw, "inputs", images)
        attributions = pop_arg(kw, "attributions", _attributions)
        return getattr(metrics, name)(model, x, attributions, target=[0, 2] if target is DEFAULT else target, **kw)

    return run


def _faithfulness_rows(name: str) -> Dict[str, List[tuple]]:
    rows = {
        "baselines": [("nan", {"baselines": NAN}, "error"), ("inf", {"baselines": INF}, "error"),
                      ("bool", {"baselines": True}, "error"), ("unknown-string", {"baselines": "noise"}, "error"),
                      ("wrong-shape", {"baselines": torch.zeros(5, 16, 16)}, "error"),
                      ("nan-tensor", {"baselines": torch.full((2, 3, 16, 16), NAN)}, "error"),
                      ("numpy-float", {"baselines": np.float32(0.0)}, "accept", {"baselines": 0.0}),
                      ("one-row-tensor", {"baselines": torch.zeros(1, 3, 16, 16)}, "accept", {"baselines": 0.0})],
        "batch_size": [("zero", {"batch_size": 0}, "error"), ("float", {"batch_size": 2.5}, "error"),
                       ("bool", {"batch_size": True}, "error"), ("string", {"batch_size": "8"}, "error"),
                       ("numpy-int", {"batch_size": np.int32(3)}, "accept", {})],
        "score": [("unknown", {"score": "logit"}, "error"), ("none", {"score": None}, "error"),
                  ("raw", {"score": "raw"}, "accept")],
        "sign": [("unknown", {"sign": "pos"}, "error"), ("absolute", {"sign": "absolute"}, "accept")],
        "attributions": attribution_rows(),
        "inputs": inputs_rows(),
        "forward_func": model_rows("model", nan_on_perturbed=name != "insertion_auc")
        + [("a-string", {"model": "resnet18"}, "error", ("forward_func", "callable"))],
    }
    if name in CURVES:
        rows["n_steps"] = [("zero", {"n_steps": 0}, "error"), ("negative", {"n_steps": -1}, "error"),
                           ("float", {"n_steps": 2.5}, "error"), ("bool", {"n_steps": True}, "error"),
                           ("nan", {"n_steps": NAN}, "error"),
                           ("numpy-int", {"n_steps": np.int64(4)}, "accept", {})]
        rows["return_curve"] = [("string", {"return_curve": "yes"}, "error")]
    if name == "insertion_auc":
        rows["forward_func"].append(("nan-on-perturbed-inputs-baseline-0",
                                     {"model": Fresh(lambda: _nan_on_perturbed()), "baselines": 0}, "error",
                                     NONFINITE))
    return rows


def _nan_on_perturbed():
    return NaNOnPerturbed(tiny_net())


def _localisation(name: str) -> Callable[..., Any]:
    def run(env: Env, kwargs: Optional[Dict[str, Any]] = None) -> Any:
        from captum_global import metrics

        kw = fresh(dict(kwargs or {}))
        attributions = pop_arg(kw, "attributions", _attributions)
        masks = pop_arg(kw, "masks", lambda: BOXES)
        return getattr(metrics, name)(attributions, masks, **kw)

    return run


def _upsampled_reference(name: str) -> Callable[[Any, Env], Optional[str]]:
    """A layer map with image-pixel boxes and image_size equals the upsampled map on image-size masks."""

    def check(result: Any, env: Env) -> Optional[str]:
        from captum.attr import LayerAttribution

        from captum_global import metrics

        up = LayerAttribution.interpolate(_attributions(4), (16, 16), interpolate_mode="bilinear")
        expected = getattr(metrics, name)(up, metrics.boxes_to_masks(BOXES, 16, 16))
        return None if torch.allclose(result, expected) else "scored differently from the upsampled map"

    return check


def _localisation_rows(name: str) -> Dict[str, List[tuple]]:
    bool_masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    bool_masks[0, 2:10, 2:10] = True
    bool_masks[1, :8, 4:] = True
    empty = bool_masks.clone()
    empty[1] = False
    rows = {
        "masks": [
            ("box-outside-image", {"masks": torch.tensor([[2, 2, 10, 10], [20, 20, 24, 24]])}, "error"),
            ("box-sticking-out", {"masks": torch.tensor([[2, 2, 10, 10], [8, 8, 17, 12]])}, "error"),
            ("inverted-box", {"masks": torch.tensor([[2, 2, 10, 10], [10, 10, 2, 2]])}, "error"),
            ("zero-width-box", {"masks": torch.tensor([[2, 2, 10, 10], [3, 3, 3, 9]])}, "error"),
            ("negative-box", {"masks": torch.tensor([[-1, 0, 4, 4], [0, 0, 4, 4]])}, "error"),
            ("nan-box", {"masks": torch.tensor([[2.0, 2, 10, 10], [0, 0, NAN, 4]])}, "error"),
            ("empty-mask", {"masks": empty}, "error"),
            ("non-binary-mask", {"masks": bool_masks.float() * 0.5}, "error"),
            ("wrong-dims", {"masks": torch.ones(2, 16, dtype=torch.bool)}, "error"),
            ("list-of-boxes", {"masks": [[2, 2, 10, 10], [4, 0, 16, 8]]}, "error"),
            ("one-box-for-two", {"masks": BOXES[:1]}, "error", ("masks", "examples")),
            ("float-masks", {"masks": bool_masks.float()}, "accept", {"masks": bool_masks}),
            ("masks-with-channel", {"masks": bool_masks[:, None]}, "accept", {"masks": bool_masks}),
        ],
        "image_size": [
            ("layer-map-with-image-pixel-boxes", {"attributions": _attributions(4)}, "error", ("image_size",)),
            ("layer-map-scaled", {"attributions": _attributions(4), "image_size": (16, 16)}, "accept",
             _upsampled_reference(name)),
            ("numpy-ints", {"attributions": _attributions(4), "image_size": (np.int64(16), np.int32(16))}, "accept",
             _upsampled_reference(name)),
            ("mismatched-with-masks", {"masks": bool_masks, "image_size": (32, 32)}, "error"),
            ("zero", {"image_size": (0, 16)}, "error"), ("string", {"image_size": "16"}, "error"),
            ("floats", {"image_size": (16.0, 16.0)}, "error"),
        ],
        "attributions": attribution_rows(),
        "sign": [("unknown", {"sign": "bogus"}, "error")],
    }
    if name == "energy_pointing_game":
        rows["sign"].append(("all-is-not-an-energy", {"sign": "all"}, "error"))
        rows["normalize"] = [("string", {"normalize": "yes"}, "error"),
                             ("numpy-bool", {"normalize": np.bool_(False)}, "accept", {"normalize": False})]
    if name == "miou":
        rows["threshold"] = [("nan", {"threshold": NAN}, "error"), ("one", {"threshold": 1.0}, "error"),
                             ("negative", {"threshold": -0.1}, "error"), ("string", {"threshold": "half"}, "error"),
                             ("numpy-float", {"threshold": np.float64(0.3)}, "accept", {"threshold": 0.3})]
    return rows


def _backdoor_metric_cases() -> List[Case]:
    from captum_global import metrics

    trigger = torch.zeros(16, 16, dtype=torch.bool)
    trigger[-4:, -4:] = True
    share = lambda env, kw: metrics.trigger_energy_share(kw.get("attributions", _attributions()),  # noqa: E731
                                                          kw.get("trigger_mask", trigger))
    cases = option_cases("metrics.trigger_energy_share", "trigger_mask", share, [
        ("wrong-size", {"trigger_mask": trigger[:8, :8]}, "error"),
        ("empty", {"trigger_mask": torch.zeros(16, 16, dtype=torch.bool)}, "error"),
        ("1-d", {"trigger_mask": trigger.flatten()}, "error"),
    ])
    cases += option_cases("metrics.trigger_energy_share", "attributions", share, [
        ("nan", {"attributions": torch.full((2, 1, 16, 16), NAN)}, "error")])
    mad = lambda env, kw: metrics.mad_anomaly_index(kw["values"])  # noqa: E731
    cases += option_cases("metrics.mad_anomaly_index", "values", mad, [
        ("nan", {"values": torch.tensor([1.0, NAN, 2.0])}, "error"), ("one-value", {"values": torch.ones(1)}, "error"),
        ("list", {"values": [1.0, 2.0, 3.0]}, "error"),
        ("integer-tensor", {"values": torch.tensor([1, 2, 3, 40])}, "accept",
         {"values": torch.tensor([1.0, 2.0, 3.0, 40.0])}),
    ])
    flag = lambda env, kw: metrics.flag_anomalies(torch.tensor([1.0, 2.0, 3.0, 40.0]), **kw)  # noqa: E731
    cases += option_cases("metrics.flag_anomalies", "options", flag, [
        ("threshold-nan", {"threshold": NAN}, "error", ("threshold",)),
        ("direction-unknown", {"direction": "up"}, "error", ("direction",)),
    ])
    return cases


def _metric_cases() -> List[Case]:
    cases = []
    for name in FAITHFULNESS:
        run = _faithfulness(name)
        cases += target_cases(f"metrics.{name}", lambda env, t, run=run: run(env, target=t))
        for group, rows in _faithfulness_rows(name).items():
            cases += option_cases(f"metrics.{name}", group, lambda env, kw, run=run: run(env, kw), rows)
    for name in LOCALISATION:
        run = _localisation(name)
        for group, rows in _localisation_rows(name).items():
            cases += option_cases(f"metrics.{name}", group, lambda env, kw, run=run: run(env, kw), rows)
    cases += option_cases("metrics.boxes_to_masks", "boxes", lambda env, kw: _boxes_to_masks(**kw), [
        ("outside", {"boxes": [[0, 0, 9, 8]]}, "error"), ("inverted", {"boxes": [[4, 4, 2, 2]]}, "error"),
        ("wrong-shape", {"boxes": [0, 0, 2, 2]}, "error"), ("string", {"boxes": "box"}, "error"),
        ("height-float", {"boxes": [[0, 0, 2, 2]], "height": 8.0}, "error", ("height",)),
        ("numpy-ints", {"boxes": np.array([[0, 0, 2, 2]]), "height": np.int64(8)}, "accept",
         {"boxes": torch.tensor([[0, 0, 2, 2]])}),
    ])
    return cases + _backdoor_metric_cases()


def _boxes_to_masks(boxes: Any, height: Any = 8, width: Any = 8) -> Any:
    from captum_global.metrics import boxes_to_masks

    return boxes_to_masks(boxes, height, width)


# ---------------------------------------------------------------- line-up

LINEUP_METHODS = ("Grad-CAM", "Occlusion", "Integrated Gradients", "SISE", "SISE (budget 25%)")


def _explain(method: str) -> Callable[..., Any]:
    def run(env: Env, kwargs: Optional[Dict[str, Any]] = None, target: Any = DEFAULT) -> Any:
        from captum_global.lineup import build_lineup

        kw = fresh(dict(kwargs or {}))
        model = env.track(pop_arg(kw, "model", tiny_net))
        x = pop_arg(kw, "inputs", images)
        explain = build_lineup(model, images(1), [method])[method]
        result = explain(x, [0, 2] if target is DEFAULT else target)
        if not isinstance(result, torch.Tensor):
            raise AssertionError(f"explain returned a {type(result).__name__}, not a tensor")
        return result

    return run


def _build(env: Env, kwargs: Dict[str, Any]) -> Any:
    from captum_global.lineup import build_lineup

    kw = fresh(dict(kwargs))
    model = env.track(pop_arg(kw, "model", tiny_net))
    return build_lineup(model, pop_arg(kw, "example_input", lambda: images(1)), kw.pop("names", ["Grad-CAM"]))


def _lineup_cases() -> List[Case]:
    cases = []
    for method in LINEUP_METHODS:
        run = _explain(method)
        api = f"lineup.{method}"
        cases += target_cases(api, lambda env, t, run=run: run(env, target=t))
        cases += option_cases(api, "inputs", lambda env, kw, run=run: run(env, kw),
                              [r for r in inputs_rows() if r[0] in ("nan", "inf", "empty-batch", "3-d", "numpy-array",
                                                                    "inference-mode", "channels-last")])
        cases += option_cases(api, "model", lambda env, kw, run=run: run(env, kw),
                              [r for r in model_rows("model", nan_on_perturbed=False) if r[0] != "nan-always"])
    cases += option_cases("lineup.build_lineup", "names", _build, [
        ("a-string", {"names": "SISE"}, "error"), ("unknown", {"names": ["Nope"]}, "error"),
        ("tuple", {"names": ("Grad-CAM",)}, "accept", lambda result, env: None if list(result) == ["Grad-CAM"]
         else f"built {list(result)}"),
    ])
    cases += option_cases("lineup.build_lineup", "model", _build, [
        ("a-function", {"model": lambda x: x.mean((2, 3))}, "error", ("model",))])
    cases += option_cases("lineup.build_lineup", "example_input", _build, [
        ("3-d", {"example_input": images(1)[0]}, "error"),
        ("nan", {"example_input": torch.full((1, 3, 16, 16), NAN)}, "error")])
    cases.append(Case("lineup.build_lineup_with_parts", "result", "every-method-returns-a-pair", "accept",
                      _with_parts, check=_pairs_ok))
    return cases


def _with_parts(env: Env) -> Dict[str, Any]:
    from captum_global.lineup import build_lineup_with_parts

    model = env.track(tiny_net())
    return {name: explain(images(), [0, 2]) for name, explain in build_lineup_with_parts(model, images(1)).items()}


def _pairs_ok(result: Dict[str, Any], env: Env) -> Optional[str]:
    for name, pair in result.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], torch.Tensor)
                and isinstance(pair[1], dict)):
            return f"{name} did not return (attribution, parts)"
    if not result["SISE"][1]:
        return "SISE gave no per-block maps"
    return None


# ---------------------------------------------------------------- RISE

def _rise(env: Env, kwargs: Optional[Dict[str, Any]] = None, target: Any = DEFAULT) -> Any:
    from captum_global.attr import RISE

    kw = dict(n_masks=30, perturbations_per_eval=16)
    kw.update(fresh(dict(kwargs or {})))
    model = env.track(pop_arg(kw, "model", tiny_net))
    x = pop_arg(kw, "inputs", images)
    return RISE(model).attribute(x, [0, 2] if target is DEFAULT else target, **kw)


def _rise_cases() -> List[Case]:
    cases = target_cases("RISE", lambda env, t: _rise(env, target=t))
    cases += option_cases("RISE", "inputs", _rise, inputs_rows())
    cases += option_cases("RISE", "forward_func", _rise, model_rows("model"))
    cases += option_cases("RISE", "options", _rise, [
        ("n_masks-zero", {"n_masks": 0}, "error", ("n_masks",)), ("p1-nan", {"p1": NAN}, "error", ("p1",)),
        ("p1-zero", {"p1": 0.0}, "error", ("p1",)),
        ("perturbations_per_eval-float", {"perturbations_per_eval": 2.5}, "error", ("perturbations_per_eval",)),
        ("s-zero", {"s": 0}, "error", ("s",)), ("seed-negative", {"seed": -1}, "error", ("seed",)),
        ("apply_softmax-string", {"apply_softmax": "yes"}, "error", ("apply_softmax",)),
        ("numpy-ints", {"n_masks": np.int64(30), "perturbations_per_eval": np.int32(7)}, "accept", {}),
    ])
    return cases


# ---------------------------------------------------------------- the command line

def _cli(*argv: str, out: bool = False, existing: str = "") -> Callable[[Env], CliCall]:
    def make(env: Env) -> CliCall:
        folder = env.tmpdir()
        args = list(argv)
        if out or existing:
            target = folder / "report"
            target.mkdir(exist_ok=True)
            if existing:
                (target / existing).write_text("an earlier report\n")
            args += ["--out", str(target)]
        return CliCall(tuple(args), cwd=str(folder))

    return make


def _unchanged(name: str) -> Callable[[Env], Optional[str]]:
    def after(env: Env) -> Optional[str]:
        path = Path(env.tmpdir()) / "report" / name
        if not path.exists() or path.read_text() != "an earlier report\n":
            return f"the existing {name} was overwritten or removed"
        return None

    return after


def _stdout_has(text: str) -> Callable[[Any], Optional[str]]:
    return lambda done: None if text in done.stdout else f"output lacks {text!r}"


_DEMO_TAIL = ("--archs", "vgg", "--methods", "Grad-CAM", "--quick", "--no-photos")

_CLI_ROWS = [
    ("demo", "images-negative", ("demo", "--images", "-1", *_DEMO_TAIL), True, "", "error", ("--images",)),
    ("demo", "images-zero", ("demo", "--images", "0", *_DEMO_TAIL), True, "", "error", ("--images",)),
    ("demo", "images-not-a-number", ("demo", "--images", "two", *_DEMO_TAIL), True, "", "error", ("--images",)),
    ("demo", "unknown-arch", ("demo", "--archs", "alexnet", "--methods", "Grad-CAM", "--quick", "--no-photos"),
     True, "", "error", ("--archs",)),
    ("demo", "unknown-method", ("demo", "--archs", "vgg", "--methods", "NoSuchMethod", "--quick", "--no-photos"),
     True, "", "error", ("--methods",)),
    ("demo", "existing-report-without-force", ("demo", "--images", "1", *_DEMO_TAIL), False, "metrics.json",
     "error", ("--force", "exist", "overwrite")),
    ("scan", "steps-zero", ("scan", "--steps", "0"), True, "", "error", ("--steps",)),
    ("scan", "steps-negative", ("scan", "--steps", "-5"), True, "", "error", ("--steps",)),
    ("scan", "unknown-arch", ("scan", "--arch", "alexnet"), True, "", "error", ("--arch",)),
    ("scan", "unknown-variant", ("scan", "--variant", "poison"), True, "", "error", ("--variant",)),
    ("scan", "existing-report-without-force", ("scan", "--steps", "1"), False, "scan.json", "error",
     ("--force", "exist", "overwrite")),
    ("layers", "size-zero", ("layers", "vgg", "--size", "0"), False, "", "error", ("--size",)),
    ("layers", "size-negative", ("layers", "vgg", "--size", "-8"), False, "", "error", ("--size",)),
    ("layers", "size-huge", ("layers", "resnet18", "--size", "100000"), False, "", "error", ("--size",)),
    ("layers", "unknown-architecture", ("layers", "alexnet_v9"), False, "", "error", ("model", "alexnet_v9")),
    ("command", "unknown-subcommand", ("explode",), False, "", "error", ("invalid choice", "explode")),
    ("command", "no-subcommand", (), False, "", "error", ("required", "command")),
]


@functools.lru_cache(maxsize=None)
def _subcommand_help(subcommand: str) -> str:
    """The ``--help`` text of a subcommand ("" when there is no such subcommand)."""
    from captum_global.cli import build_parser

    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args([subcommand, "--help"])
    except SystemExit as done:
        return text.getvalue() if done.code == 0 else ""
    return ""


def _has_option(subcommand: str, option: str) -> Callable[[], bool]:
    return lambda: option in _subcommand_help(subcommand)


def _tensor_file(env: Env) -> str:
    path = env.tmpdir() / "images.pt"
    if not path.exists():
        torch.save(images(2, size=64), path)
    return str(path)


def _explain_cli(*extra: str) -> Callable[[Env], CliCall]:
    """``explain`` with a valid tensor file of images and a fresh output folder, plus ``extra``."""

    def make(env: Env) -> CliCall:
        base = ["explain", "--method", "Saliency", "--images", _tensor_file(env), "--out",
                str(env.tmpdir() / "explained")]
        args = list(extra)
        for option in ("--method", "--images"):  # an override replaces the base value
            if option in args:
                i = base.index(option)
                del base[i:i + 2]
        return CliCall(tuple(base + args), cwd=str(env.tmpdir()))

    return make


_EXPLAIN_ROWS = [  # (label, extra arguments, option the usage error names)
    ("method-unknown", ("--method", "NoSuchMethod"), "--method"),
    ("images-missing", ("--images", "no-such-folder"), "--images"),
    ("batch-size-zero", ("--batch-size", "0"), "--batch-size"),
    ("target-not-a-class", ("--target", "cat"), "--target"),
    ("method-args-not-json", ("--method-args", "{n_steps: 3"), "--method-args"),
    ("seed-negative", ("--seed", "-1"), "--seed"),
]

_SCAN_ROWS = [  # options the newer scan command takes: (label, arguments, option)
    ("threshold-nan", ("--threshold", "nan"), "--threshold"),
    ("max-clean-zero", ("--max-clean", "0"), "--max-clean"),
    ("method-unknown", ("--method", "bogus"), "--method"),
    ("seed-negative", ("--seed", "-1"), "--seed"),
    ("clean-missing", ("--clean", "no-such-folder"), "--clean"),
]


def _cli_cases() -> List[Case]:
    cases = [Case("cli", group, label, expect, cli=_cli(*argv, out=out, existing=existing), names=names,
                  after=_unchanged(existing) if existing else None)
             for group, label, argv, out, existing, expect, names in _CLI_ROWS]
    cases += [Case("cli", "explain", label, "error", cli=_explain_cli(*extra), names=(option,),
                   available=_has_option("explain", option))
              for label, extra, option in _EXPLAIN_ROWS]
    cases += [Case("cli", "scan", label, "error", cli=_cli("scan", *extra, out=True), names=(option,),
                   available=_has_option("scan", option))
              for label, extra, option in _SCAN_ROWS]
    cases += [
        Case("cli", "command", "help", "accept", cli=_cli("--help"), check=_stdout_has("demo")),
        Case("cli", "layers", "torchvision-name", "accept", cli=_cli("layers", "resnet18", "--size", "64"),
             check=_stdout_has("layer4")),
        Case("cli", "layers", "reference-vgg", "accept", cli=_cli("layers", "vgg"), check=_stdout_has("features")),
    ]
    return cases


def tool_cases() -> List[Case]:
    """The cases of the metrics, the line-up, RISE and the command line."""
    return _metric_cases() + _lineup_cases() + _rise_cases() + _cli_cases()
