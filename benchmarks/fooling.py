"""Can the explanations be fooled? Adversarial model manipulation on the reference models.

    python -m benchmarks.fooling --archs vgg,resnet --threads 1 --name fooling

For each reference architecture (the world's clean VGG and ResNet):

1. fine-tune copies with :func:`captum_global.robustness.manipulate_model`:
   every fooled explanation (Grad-CAM, plain gradient) x every fooling kind
   (location: the image border; top-k; centre of mass; active: swap the
   maps of two classes on images that show both), plus the adaptive attack
   on SISE (its soft-gated surrogate, location fooling). Each keeps the last
   checked weights within one accuracy point of the original on a held-out
   validation set;
2. explain a fixed set of test images with every method of the benchmark
   registry (the package's line-up settings) on the original and on each
   copy, and measure how far the maps moved: fooling success rate (the
   share of images past the kind's threshold, ``captum_global.robustness.SUCCESS``),
   Spearman rank correlation before/after and the drop in EBPG on the
   object masks;
3. write ``benchmarks/results/<name>.{md,json}`` and one figure per
   architecture and fooled explanation (``docs/figures/fooling_<arch>_<explanation>.png``).

Fine-tuned weights are cached (``--cache``) by their settings, so re-running
the command after a method's defaults change re-measures every map without
fine-tuning again. Every map is saved there too; ``--reuse-maps`` loads them
instead of recomputing (only valid while no method changed).
"""
import argparse
import copy
import hashlib
import itertools
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from benchmarks.methods import LayerInfo, get_factory, pick_cam_layer
from benchmarks.workloads import load_workload
from captum_global.attr import SISE
from captum_global.lineup import build_lineup_with_parts
from captum_global.metrics import energy_pointing_game
from captum_global.robustness import (
    SUCCESS,
    GradCAMExplanation,
    GradientExplanation,
    SoftSISESurrogate,
    border_region,
    fooling_statistic,
    fooling_success,
    manipulate_model,
    normalised_maps,
    rank_correlation,
)
from captum_global.world import WorldConfig, make_dataset

__all__ = ["run", "two_object_images", "main", "METHODS"]

METHODS = ("gradcam", "gradcam++", "scorecam", "rise", "occlusion", "integrated_gradients", "saliency", "sise",
           "sise_soft", "input_agnostic")
FOOLINGS = ("location", "top_k", "center_mass", "active")
ACTIVE_CLASSES = (0, 1)  # disk and square
_VAL_SEED, _TEST_SEED, _COMPOSITE_SEED = 2_000_003, 1_000_003, 3_000_017


def two_object_images(ds, c1: int, c2: int, n: int, seed: int, margin: int = 2):
    """``n`` images of class ``c1`` with the object of a ``c2`` image pasted where it does not touch.

    Returns ``(images [n, 3, H, W], masks_c1 [n, H, W], masks_c2 [n, H, W])``.
    """
    g = torch.Generator().manual_seed(seed)
    first, second = (ds.labels == c1).nonzero().flatten(), (ds.labels == c2).nonzero().flatten()
    images, masks1, masks2 = [], [], []
    for _ in range(200 * n):
        if len(images) == n:
            break
        i = int(first[torch.randint(len(first), (1,), generator=g)])
        j = int(second[torch.randint(len(second), (1,), generator=g)])
        m1, m2 = ds.object_masks[i], ds.object_masks[j]
        grown = F.max_pool2d(m1[None, None].float(), 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0
        if bool((grown & m2).any()):
            continue
        image = ds.images[i].clone()
        image[:, m2] = ds.images[j][:, m2]
        images.append(image), masks1.append(m1), masks2.append(m2)
    if len(images) < n:
        raise RuntimeError(f"found only {len(images)} non-overlapping pairs of classes {c1} and {c2}")
    return torch.stack(images), torch.stack(masks1), torch.stack(masks2)


def _loader(images, labels, batch_size, shuffle):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=batch_size,
                                       shuffle=shuffle)


def _explainer(name: str, model, example):
    return {"grad_cam": GradCAMExplanation, "gradient": GradientExplanation,
            "soft_sise": lambda: SoftSISESurrogate(masks_per_layer=8)}[name]().bind(model, example)


def _maps(model, method: str, images, targets, args, blocks: Optional[Dict] = None) -> torch.Tensor:
    """``[N, H, W]`` normalised maps of ``method`` (the registry's settings).

    For ``sise`` with a ``blocks`` dict, SISE's per-block maps (before fusion) are stored in it too.
    """
    with_parts = method == "sise" and blocks is not None
    if method == "sise_soft":  # the line-up's SISE settings with the soft gate: what the adaptive attack optimises
        sise = SISE(model)
        explain = lambda x, t: sise.attribute(x, target=t, perturbations_per_eval=64, fusion="soft-otsu")  # noqa: E731
    elif with_parts:  # the same SISE run also gives its per-block maps
        explain = build_lineup_with_parts(model, images[:1], ["SISE"])["SISE"]
    else:
        name, layer = pick_cam_layer(model, images[:1])
        info = LayerInfo(name, layer, tuple(images.shape[-2:]), args.batch_size, {"rise_masks": args.rise_masks},
                         images[:1])
        explain = get_factory(method)(model, info)
    pieces, layer_pieces = [], []
    for i in range(0, len(images), args.batch_size):
        out = explain(images[i:i + args.batch_size], targets[i:i + args.batch_size])
        if with_parts:
            out, layer_maps = out
            layer_pieces.append(layer_maps)
        pieces.append(out.detach())
    if layer_pieces:
        blocks.update({k: normalised_maps(torch.cat([p[k] for p in layer_pieces])) for k in layer_pieces[0]})
    return normalised_maps(torch.cat(pieces))


class _Evaluation:
    """The images each method explains, and every method's maps for one model."""

    def __init__(self, work, composites):
        self.images, self.targets, self.masks = work.images, work.targets, work.masks
        self.pair_images, self.pair_masks = composites[0], composites[1:]

    def maps(self, model, args, stem: Path, passive: bool = True, pairs: bool = True) -> Dict[str, Dict]:
        """Per method: ``passive`` maps of the images for their class, ``c1``/``c2`` maps of the pair images.

        Input-agnostic maps ignore the image: each row gets its class's map. Maps are saved next to the
        model's cache entry ``stem``; with ``--reuse-maps`` saved maps are loaded instead of recomputed.
        """
        from safetensors.torch import load_file, save_file

        out: Dict[str, Dict] = {}
        c1, c2 = ACTIVE_CLASSES
        n_pairs = len(self.pair_images)
        pair_targets = torch.cat([torch.full((n_pairs,), c1), torch.full((n_pairs,), c2)])
        setting = hashlib.sha256(json.dumps([args.n_images, args.rise_masks, args.batch_size]).encode()).hexdigest()[:8]
        for method in args.methods:
            path = Path(f"{stem}_maps_{method.replace('+', 'p')}_{'p' * passive}{'a' * pairs}_{setting}.safetensors")
            if args.reuse_maps and path.is_file():
                saved = load_file(str(path))
                out[method] = {k: v for k, v in saved.items() if "/" not in k}
                blocks = {k.split("/", 1)[1]: v for k, v in saved.items() if k.startswith("blocks/")}
                if blocks:
                    out[method]["blocks"] = blocks
                continue
            out[method] = {}
            if passive:
                blocks = {}
                out[method]["passive"] = _maps(model, method, self.images, self.targets, args, blocks)
                if blocks:
                    out[method]["blocks"] = blocks
            if pairs:
                pair_maps = _maps(model, method, torch.cat([self.pair_images] * 2), pair_targets, args)
                out[method].update(c1=pair_maps[:n_pairs], c2=pair_maps[n_pairs:])
            flat = {k: v.contiguous() for k, v in out[method].items() if k != "blocks"}
            flat.update({f"blocks/{k}": v.contiguous() for k, v in out[method].get("blocks", {}).items()})
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(flat, str(path))
        return out

    def compare(self, fooling: str, before, after, region) -> Dict[str, float]:
        extra: Dict[str, Dict] = {}
        if fooling == "active":
            stats, rhos = [], []
            for own, other in (("c1", "c2"), ("c2", "c1")):
                stats.append(fooling_statistic("active", after[own], before[own], other_reference=before[other]))
                rhos.append(rank_correlation(after[own], before[own]))
            statistic, rho = torch.cat(stats), torch.cat(rhos)
            masks = torch.cat(list(self.pair_masks))
            ebpg = [energy_pointing_game(torch.cat([m["c1"], m["c2"]])[:, None], masks).mean().item()
                    for m in (before, after)]
        else:
            statistic = fooling_statistic(fooling, after["passive"], before["passive"], region=region)
            rho = rank_correlation(after["passive"], before["passive"])
            ebpg = [energy_pointing_game(m["passive"][:, None], self.masks).mean().item() for m in (before, after)]
            if "blocks" in after:  # where SISE's fused map went: each block's map before fusion
                extra["blocks"] = {
                    name: self.compare(fooling, {"passive": before["blocks"][name]}, {"passive": after["blocks"][name]},
                                       region) for name in after["blocks"]}
        valid = ~torch.isnan(statistic)  # active: maps whose two class maps were distinct enough to swap
        return {**extra, "n_maps": int(statistic.numel()), "n_counted": int(valid.sum()),
                "success_rate": fooling_success(fooling, statistic).float().mean().item(),
                "statistic": statistic[valid].mean().item() if bool(valid.any()) else None, "spearman": rho.mean().item(),
                "ebpg_before": ebpg[0], "ebpg_after": ebpg[1], "ebpg_drop": ebpg[0] - ebpg[1]}


def _plain_step_seconds(model, loader, steps: int = 10) -> float:
    """Seconds of one ordinary fine-tuning step (cross-entropy only), the cost baseline."""
    twin = copy.deepcopy(model).eval().requires_grad_(True)
    opt = torch.optim.Adam(twin.parameters(), lr=1e-5)
    batches = itertools.cycle(list(itertools.islice(iter(loader), steps)))
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def _manipulate(arch, model, explanation, fooling, data, args):
    """One manipulated copy: the first penalty weight of ``--weights`` whose fine-tuning kept some step.

    An attacker tunes the penalty weight; a weight that costs more than the
    accuracy budget at every check returns the original (``kept_step`` 0),
    and the next, smaller weight is tried.
    """
    weights = {"none": [0.0], "soft_sise": args.sise_weights}.get(explanation, args.weights)
    for weight in weights:
        fooled, record, stem = _manipulate_once(arch, model, explanation, fooling, data, args, weight)
        if record["kept_step"] > 0:
            break
    record["weights_tried"] = weights[:weights.index(weight) + 1]
    record["explanation"] = explanation  # the benchmark's name ("none" for the control, which trains with Grad-CAM)
    return fooled, record, stem


def _manipulate_once(arch, model, explanation, fooling, data, args, weight):
    """Fine-tune (or load from the cache) one manipulated copy."""
    from safetensors.torch import load_file, save_file

    train_loader, val_loader, fooling_loader = data
    soft = explanation == "soft_sise"
    settings = dict(arch=arch, explanation=explanation, fooling=fooling, steps=args.sise_steps if soft else args.steps,
                    lr=args.lr, weight=weight, batch=args.train_batch, n_train=args.n_train, n_val=args.n_val,
                    max_drop=args.max_accuracy_drop, version=1)
    if soft:
        settings.update(fooling_batch=args.sise_batch, version=2)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    stem = Path(args.cache) / f"{arch}_{explanation}_{fooling}_{key}"
    if stem.with_suffix(".json").is_file() and not args.retrain:
        fooled = copy.deepcopy(model)
        fooled.load_state_dict(load_file(str(stem.with_suffix(".safetensors"))))
        return fooled.eval(), json.loads(stem.with_suffix(".json").read_text()), stem
    # the surrogate scores 4 x 8 masked copies of every image it explains: its penalty sees smaller
    # batches than the cross-entropy, which keeps the classification batch of the other runs
    penalised = fooling_loader if fooling == "active" else None
    if soft:
        penalised = _loader(*(penalised or train_loader).dataset.tensors, args.sise_batch, True)
    result = manipulate_model(
        model, train_loader, _explainer("grad_cam" if explanation == "none" else explanation, model,
                                  train_loader.dataset.tensors[0][:1]), fooling,
        steps=settings["steps"], lr=args.lr, fooling_weight=weight, classes=ACTIVE_CLASSES if fooling == "active" else None,
        fooling_data=penalised, eval_data=val_loader, eval_every=args.eval_every,
        max_accuracy_drop=args.max_accuracy_drop, seed=0, show_progress=args.progress)
    record = result.as_dict()
    record["plain_step_seconds"] = _plain_step_seconds(model, train_loader)
    record["seconds_per_step"] = result.step_seconds / result.steps
    record["cost_vs_plain_step"] = record["seconds_per_step"] / record["plain_step_seconds"]
    stem.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return result.model, record, stem


def _accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return (torch.cat([model(images[i:i + 250]).argmax(1) for i in range(0, len(images), 250)]) == labels
                ).float().mean().item()


def run(args) -> Dict:
    """Run the benchmark for ``args`` (see :func:`main`); returns the JSON-ready result."""
    out_json = Path(args.out) / f"{args.name}.json"
    result = json.loads(out_json.read_text()) if out_json.is_file() and args.resume else {}
    result.update(command="python -m benchmarks.fooling " + " ".join(shlex.quote(a) for a in args.argv),
                  machine=dict(torch=torch.__version__, threads=torch.get_num_threads(), python=platform.python_version()),
                  success=dict(SUCCESS), settings={k: v for k, v in vars(args).items() if k != "argv"})
    result.setdefault("archs", {})
    start = time.perf_counter()
    cfg = WorldConfig()
    test = make_dataset(cfg.n_test, cfg.seed + _TEST_SEED, config=cfg)
    for arch in args.archs:
        work = load_workload(arch, args.n_images)
        model = work.model
        train = make_dataset(args.n_train, cfg.seed, config=cfg)
        val = make_dataset(args.n_val, cfg.seed + _VAL_SEED, config=cfg)
        composites_train = two_object_images(train, *ACTIVE_CLASSES, args.n_train // 4, seed=1)
        composites_test = two_object_images(test, *ACTIVE_CLASSES, max(1, args.n_images // 2), seed=_COMPOSITE_SEED)
        data = (_loader(train.images, train.labels, args.train_batch, True), _loader(val.images, val.labels, 250, False),
                _loader(composites_train[0], torch.full((len(composites_train[0]),), ACTIVE_CLASSES[0]),
                        args.train_batch, True))
        evaluation = _Evaluation(work, composites_test)
        region = border_region(*work.images.shape[-2:])
        t0 = time.perf_counter()
        before = evaluation.maps(model, args, Path(args.cache) / f"{arch}_original")
        entry = {"accuracy_test": _accuracy(model, test.images, test.labels), "original_maps_seconds": time.perf_counter() - t0,
                 "manipulations": [], "rows": [], "facts": work.facts}
        figures = {"original": before}
        runs = [(e, f) for e in args.explanations for f in args.foolings] + [("soft_sise", f) for f in args.adaptive]
        if args.control:  # ordinary fine-tuning, same steps, no penalty: how far maps move anyway
            runs.insert(0, ("none", "location"))
        for explanation, fooling in runs:
            fooled, record, stem = _manipulate(arch, model, explanation, fooling, data, args)
            record["accuracy_test_after"] = _accuracy(fooled, test.images, test.labels)
            control = explanation == "none"
            after = evaluation.maps(fooled, args, stem, passive=control or fooling != "active",
                                    pairs=control or fooling == "active")
            figures[(explanation, fooling)] = after
            entry["manipulations"].append(record)
            for kind in (args.foolings if control else [fooling]):
                for method in args.methods:
                    row = evaluation.compare(kind, before[method], after[method], region)
                    entry["rows"].append(dict(explanation=explanation, fooling=kind, method=method, **row))
            result["archs"][arch] = entry
            _write(result, args)
            print(f"{arch} {explanation} {fooling}: {record['accuracy_before']:.3f} -> {record['accuracy_after']:.3f}, "
                  f"kept step {record['kept_step']}", flush=True)
        result["archs"][arch] = entry
        _figures(arch, work.images[args.figure_image], composites_test[0][args.figure_image], figures, args)
    result["total_seconds"] = result.get("total_seconds", 0.0) * bool(args.resume) + time.perf_counter() - start
    _write(result, args)
    return result


def _write(result: Dict, args) -> None:
    from benchmarks.fooling_report import to_markdown

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (Path(args.out) / f"{args.name}.md").write_text(to_markdown(result))


def _figures(arch, image, pair_image, figures, args) -> None:
    from benchmarks.fooling_report import maps_figure

    i = args.figure_image
    for explanation in list(args.explanations) + (["soft_sise"] if args.adaptive else []):
        kinds = args.foolings if explanation != "soft_sise" else args.adaptive
        columns = [("original", figures["original"])] + [(k, figures[(explanation, k)]) for k in kinds]
        if ("none", "location") in figures:
            columns.insert(1, ("control", figures[("none", "location")]))
        path = Path(args.figures) / f"fooling_{arch}_{explanation}.png"
        maps_figure(image, pair_image, columns, args.methods, i, path,
                    title=f"{arch}: maps before and after fooling {explanation} (accuracy kept within 1 point)")


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    ap.add_argument("--archs", type=split, default=["vgg", "resnet"])
    ap.add_argument("--explanations", type=split, default=["grad_cam", "gradient"])
    ap.add_argument("--foolings", type=split, default=list(FOOLINGS))
    ap.add_argument("--adaptive", type=split, default=["location"], help="fooling kinds of the SISE attack")
    ap.add_argument("--methods", type=split, default=list(METHODS))
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip the control: ordinary fine-tuning (no penalty) measured with every statistic")
    ap.add_argument("--n-images", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--sise-steps", type=int, default=150)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--sise-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--weights", type=lambda v: [float(w) for w in v.split(",")], default=[10.0, 1.0],
                    help="penalty weights tried in order until one keeps accuracy within the budget")
    ap.add_argument("--sise-weights", type=lambda v: [float(w) for w in v.split(",")], default=[1.0],
                    help="the same for the adaptive attack on SISE (10 kept no step within the budget on ResNet)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--max-accuracy-drop", type=float, default=0.01)
    ap.add_argument("--rise-masks", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--figure-image", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "captum_global" / "fooling"))
    ap.add_argument("--retrain", action="store_true", help="fine-tune again even when cached")
    ap.add_argument("--resume", action="store_true", help="keep the other archs of an existing result file")
    ap.add_argument("--reuse-maps", action="store_true",
                    help="load maps saved by an earlier run instead of recomputing them (only when no method changed)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--name", default="fooling")
    args = ap.parse_args(argv)
    args.argv = argv
    torch.set_num_threads(args.threads)
    return run(args)


if __name__ == "__main__":
    main()
