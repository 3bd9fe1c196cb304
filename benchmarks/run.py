"""Run attribution methods side by side and write Markdown and JSON tables.

    python -m benchmarks.run --models vgg,resnet --methods sise,gradcam,scorecam,rise --n-images 16 --name mine

For every (model, method): the ground-truth metrics (EBPG, bbox accuracy,
mIoU; when the data has object masks), the model-truth metrics (Average
Drop %, Increase in Confidence %, insertion and deletion AUC), the mean wall
time per image, its ratio to one plain forward pass of the same model at
the same batch size (measured in the same run), the model evaluations per
image and the peak memory. See docs/measurements/benchmark.md.
"""
import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from tqdm.auto import tqdm

from benchmarks.measure import EvaluationCounter, forward_time, peak_memory
from benchmarks.methods import BASELINES, LayerInfo, available, get_factory, pick_cam_layer
from benchmarks.workloads import MODEL_CHOICES, Workload, load_workload
from captum_global.contract import check_bool, check_int
from captum_global.errors import InvalidArgumentError
from captum_global.metrics import (
    bbox_accuracy,
    deletion_auc,
    drop_and_increase,
    energy_pointing_game,
    insertion_auc,
    miou,
)

__all__ = ["run_benchmark", "merge_results", "to_markdown", "main", "COLUMNS"]

COLUMNS = ("model", "method", "ebpg", "bbox_accuracy", "miou", "average_drop", "increase", "insertion_auc",
           "deletion_auc", "seconds_per_image", "time_vs_forward", "evals_per_image", "peak_memory_mb")
_HIGHER = {"ebpg": "↑", "bbox_accuracy": "↑", "miou": "↑", "average_drop": "↓", "increase": "↑",
           "insertion_auc": "↑", "deletion_auc": "↓"}


def _batches(t: torch.Tensor, size: int) -> List[torch.Tensor]:
    return [t[i:i + size] for i in range(0, len(t), size)]


def _evaluate_method(work: Workload, method: str, info: LayerInfo, counter: EvaluationCounter,
                     device: torch.device, fwd_seconds: float, n_steps: int) -> Dict[str, object]:
    explain = get_factory(method)(work.model, info)
    images, targets = work.images, work.targets
    pieces = []
    with peak_memory(device) as mem, counter.counting():
        t0 = time.perf_counter()
        for x, t in zip(_batches(images, info.batch_size), _batches(targets, info.batch_size)):
            pieces.append(explain(x, t).detach())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
    attr = torch.cat(pieces)
    n = len(images)
    row: Dict[str, object] = {"model": work.name, "method": method, "n_images": n,
                              "seconds_per_image": elapsed / n, "time_vs_forward": elapsed / n / fwd_seconds,
                              "evals_per_image": counter.n_examples / n, "peak_memory_mb": mem.peak_mb,
                              "attribution_shape": list(attr.shape[1:])}
    counter.n_examples = 0
    if work.masks is not None:
        masks = work.masks.to(device)
        row["ebpg"] = energy_pointing_game(attr, masks).mean().item()
        row["bbox_accuracy"] = bbox_accuracy(attr, masks).mean().item()
        row["miou"] = miou(attr, masks).mean().item()
    model, bs = work.model, max(info.batch_size, 64)
    drop, inc = drop_and_increase(model, images, attr, targets, batch_size=bs)
    row["average_drop"] = drop.mean().item()
    row["increase"] = inc.mean().item()
    row["insertion_auc"] = insertion_auc(model, images, attr, targets, n_steps=n_steps, batch_size=bs).mean().item()
    row["deletion_auc"] = deletion_auc(model, images, attr, targets, n_steps=n_steps, batch_size=bs).mean().item()
    return row


def _machine(device: torch.device) -> Dict[str, object]:
    facts = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
             "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
             "device": str(device)}
    try:
        import captum

        facts["captum"] = captum.__version__
    except (ImportError, AttributeError):
        pass
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def run_benchmark(models: Sequence[str] = ("vgg", "resnet"), methods: Sequence[str] = BASELINES,
                  n_images: int = 32, batch_size: int = 16, quick: bool = False, n_steps: Optional[int] = None,
                  rise_masks: Optional[int] = None, device: str = "cpu", out: Optional[str] = "benchmarks/results",
                  name: str = "benchmark", workloads: Optional[List[Workload]] = None, progress: bool = True,
                  command: Optional[str] = None, threads: Optional[int] = None) -> Dict[str, object]:
    """Run ``methods`` on ``models`` and (if ``out``) write ``<out>/<name>.md`` and ``.json``.

    Args:
        models: workload names (``vgg``, ``resnet``, ``efficientnet``); ignored
            when ``workloads`` is given.
        methods: registered method names (``benchmarks.methods.available()``).
        n_images: images per model (``quick``: at most 4).
        batch_size: images per method call; also the forward-time reference.
        quick: few images, 500 RISE masks, 16 insertion/deletion steps.
        n_steps: insertion/deletion steps (default 32, quick 16).
        rise_masks: RISE mask count (default 4000, quick 500).
        device: ``"cpu"``, ``"cuda"``.
        out: folder for the result files, or None to write nothing.
        name: stem of the result files.
        workloads: ready :class:`Workload` objects (tests use tiny ones).
        progress: show a progress bar.
        command: the command line to record.
        threads: ``torch.set_num_threads`` for the run (None: leave as is).
            On a shared CPU one thread is far less sensitive to contention
            than two; the count is recorded in ``machine``.

    Returns:
        dict with ``rows`` (one dict per (model, method), keys ``COLUMNS``),
        ``machine``, ``settings``, ``workloads``, ``command``, ``total_seconds``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    dev = torch.device(device)
    if isinstance(methods, str):
        raise InvalidArgumentError(f"methods must be a list of method names, got the string {methods!r}")
    unknown = [m for m in methods if m not in available()]
    if unknown or not methods:
        raise InvalidArgumentError(f"unknown methods {unknown or methods!r}; registered: {available()}")
    n_images = check_int(n_images, "n_images", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    quick = check_bool(quick, "quick")
    n_steps = None if n_steps is None else check_int(n_steps, "n_steps", minimum=1)
    rise_masks = None if rise_masks is None else check_int(rise_masks, "rise_masks", minimum=1)
    if quick:
        n_images = min(n_images, 4)
    n_steps = n_steps or (16 if quick else 32)
    rise_masks = rise_masks or (500 if quick else 4000)
    if workloads is None:
        workloads = [load_workload(m, n_images) for m in models]
    rows, facts = [], {}
    settings = {"n_images": n_images, "batch_size": batch_size, "quick": quick, "n_steps": n_steps,
                "rise_masks": rise_masks, "methods": list(methods)}

    def save(complete: bool) -> Dict[str, object]:
        result = {"command": command or "run_benchmark(...)", "machine": _machine(dev), "settings": settings,
                  "workloads": facts, "rows": rows, "total_seconds": time.perf_counter() - start,
                  "complete": complete}
        if out:  # written after every row so an interrupted run keeps what it measured
            _write(result, out, name)
        return result

    bar = tqdm(total=len(workloads) * len(methods), disable=not progress, desc="benchmark")
    for work in workloads:
        work.images, work.targets = work.images[:n_images].to(dev), work.targets[:n_images].to(dev)
        work.masks = None if work.masks is None else work.masks[:n_images]
        work.model.to(dev).eval()
        layer_name, layer = pick_cam_layer(work.model, work.images)
        info = LayerInfo(layer_name, layer, tuple(work.images.shape[-2:]), batch_size,
                         {"rise_masks": rise_masks}, example=work.images[:1])
        fwd = forward_time(work.model, _batches(work.images, batch_size), dev)
        facts[work.name] = dict(work.facts, cam_layer=layer_name, n_images=len(work.images),
                                forward_seconds_per_image=fwd)
        counter = EvaluationCounter(work.model)
        try:
            for method in methods:
                bar.set_postfix_str(f"{work.name}/{method}")
                try:
                    rows.append(_evaluate_method(work, method, info, counter, dev, fwd, n_steps))
                except Exception as e:  # one broken method must not lose the others' numbers
                    rows.append({"model": work.name, "method": method, "error": f"{type(e).__name__}: {e}"})
                    tqdm.write(f"[benchmark] {work.name}/{method} failed: {type(e).__name__}: {e}")
                bar.update(1)
                save(complete=False)
        finally:
            counter.close()
    bar.close()
    return save(complete=True)


def _write(result: Dict[str, object], out: str, name: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"{name}.json").write_text(json.dumps(result, indent=2))
    Path(out, f"{name}.md").write_text(to_markdown(result))


def merge_results(paths: Sequence[str], out: str, name: str) -> Dict[str, object]:
    """Merge result JSON files (e.g. one run per model) into ``<out>/<name>.md/.json``.

    Rows and workloads are concatenated; the commands and run times of the
    parts are kept, and ``total_seconds`` is their sum.
    """
    parts = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(parts[0])
    merged["command"] = " ; ".join(p["command"] for p in parts)
    merged["parts"] = [{"file": str(p), "command": r["command"], "total_seconds": r["total_seconds"],
                        "settings": r["settings"], "complete": r.get("complete", True)}
                       for p, r in zip(paths, parts)]
    merged["rows"] = [row for r in parts for row in r["rows"]]
    merged["workloads"] = {k: v for r in parts for k, v in r["workloads"].items()}
    merged["total_seconds"] = sum(r["total_seconds"] for r in parts)
    merged["complete"] = all(r.get("complete", True) for r in parts)
    _write(merged, out, name)
    return merged


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _settings_text(s: Dict[str, object]) -> str:
    return (f"{s['n_images']} images per model, batch size {s['batch_size']}, insertion/deletion {s['n_steps']} "
            f"steps (insertion from blur, deletion to 0), RISE {s['rise_masks']} masks")


def to_markdown(result: Dict[str, object]) -> str:
    """The result dict as a Markdown report (one table per model)."""
    m = result["machine"]
    lines = ["# Attribution benchmark", ""]
    if "parts" in result:
        lines += ["Merged from runs made one after another or side by side:", ""]
        lines += [f"- `{p['command']}`: {p['total_seconds']:.0f} s; {_settings_text(p['settings'])}"
                  + ("" if p.get("complete", True) else " (incomplete)") for p in result["parts"]]
        lines += ["", f"Sum of the parts' run times: {result['total_seconds']:.1f} s."]
    else:
        lines += [f"Command: `{result['command']}`", "", f"Total run time: {result['total_seconds']:.1f} s.",
                  "", f"Settings: {_settings_text(result['settings'])}."]
    if not result.get("complete", True):
        lines += ["", "**Incomplete run: the table holds the rows measured before it stopped.**"]
    lines += ["", f"Machine: torch {m['torch']}, {m['torch_threads']} threads, device {m['device']}, "
              f"{m['platform']}.", "",
              "Columns: EBPG, bbox accuracy, mIoU (threshold 0.5) against object masks; Drop % and Increase % "
              "(Grad-CAM++); insertion/deletion AUC of the softmax probability; seconds per image; time vs one "
              "no-grad forward pass at the same batch size; model evaluations (examples forwarded) per image; "
              "peak memory (MB) above the start.", ""]
    header = [c + (" " + _HIGHER[c] if c in _HIGHER else "") for c in COLUMNS[1:]]
    for model, facts in result["workloads"].items():
        lines += [f"## {model}", "", ", ".join(f"{k}: {_fmt(v)}" for k, v in facts.items()), "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in (r for r in result["rows"] if r["model"] == model):
            if "error" in row:
                lines.append(f"| {row['method']} | error: {row['error'][:120]} |" + " |" * (len(header) - 2))
            else:
                lines.append("| " + " | ".join(_fmt(row.get(c)) for c in COLUMNS[1:]) + " |")
        lines.append("")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _names(choices: Sequence[str]):
    def parse(text: str) -> List[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [v for v in names if v not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected a comma list among {','.join(choices)}, got {text!r}")
        return names

    return parse


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_names(MODEL_CHOICES), default=["vgg", "resnet"],
                        help=f"comma list among {','.join(MODEL_CHOICES)}")
    parser.add_argument("--methods", type=_names(available()), default=list(BASELINES),
                        help=f"comma list among {','.join(available())} (default: the baselines)")
    parser.add_argument("--n-images", type=_positive_int, default=32, help="images per model (default 32)")
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="images per method call (default 16)")
    parser.add_argument("--quick", action="store_true", help="at most 4 images, RISE 500 masks, 16 steps")
    parser.add_argument("--n-steps", type=_positive_int, default=None, help="insertion/deletion steps (default 32)")
    parser.add_argument("--rise-masks", type=_positive_int, default=None,
                        help="RISE masks (default 4000, the paper's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--name", default="benchmark", help="stem of the result files")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch threads (default 1: on a shared CPU, far steadier than 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only merge these result files into <out>/<name>.md/.json")
    args = parser.parse_args(argv)
    if args.merge:
        result = merge_results(args.merge, args.out, args.name)
        print(to_markdown(result))
        return result
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    result = run_benchmark(models=args.models, methods=args.methods, n_images=args.n_images,
                           batch_size=args.batch_size, quick=args.quick, n_steps=args.n_steps,
                           rise_masks=args.rise_masks, device=args.device, out=args.out, name=args.name,
                           progress=not args.no_progress, command=command, threads=args.threads)
    print(to_markdown(result))
    print(f"Total run time: {result['total_seconds']:.1f} s; results in {args.out}/{args.name}.md and .json")
    return result


if __name__ == "__main__":
    main()
