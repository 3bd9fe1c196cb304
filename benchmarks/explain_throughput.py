"""Throughput of ``explain_dataset``: images per second on 1 and 2 processes, vs the bare method.

Run (from a checkout)::

    python -m benchmarks.explain_throughput --archs vgg,resnet --methods SISE,LayerGradCam \\
        --images SISE=32,LayerGradCam=256 --batch-size 8 --repeats 2 --out benchmarks/results/explain_throughput

For each shipped reference model (clean) and method, in one run:

- **bare**: the method's ``attribute`` called in a loop over in-memory
  batches of ``--batch-size`` with the top-1 targets computed beforehand
  (no reading, no writing): the cost of the maps alone;
- **bare + top-1**: the same, computing the top-1 targets of each batch
  first (one forward pass), as ``explain_dataset`` does by default;
- **explain, 1 process**: ``explain_dataset`` on a folder of PNG files
  (decoding, top-1 targets, safetensors shards and index included);
- **explain, 2 processes**: the same on two gloo processes (one thread
  each), timed on rank 0 from a barrier before the call to a barrier
  after it (process start-up and imports excluded, reported apart), and
  the CPU time of each rank: on a machine whose cores are busy with other
  work the wall-clock speed-up says little, the CPU times say how evenly
  the work was split.

Every process runs ``torch.set_num_threads(1)``. Reported: images per
CPU-second of each (on a machine shared with other jobs a process may get
a fraction of a core, which wall time counts and CPU time does not), the
ratios explain(1 process) / bare (1.0 = no overhead) and the speed-up of
2 processes over 1 (from the busier rank's CPU time: the wall-clock
speed-up when each process has a core of its own), plus the same ratios
in wall time. The best of ``--repeats`` runs is kept for each (noise on a
shared machine only ever slows a run down).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from PIL import Image

_SEED = 20_261_123  # the reference world's held-out split


def _method(model, name: str, example):
    """The bare method, built the way ``explain_dataset`` builds it by name."""
    from captum.attr import LayerAttribution, LayerGradCam

    from captum_global.attr import SISE
    from captum_global.lineup import last_spatial_layer

    if name == "SISE":
        sise = SISE(model)
        return lambda x, t: sise.attribute(x, target=t)
    if name == "LayerGradCam":
        cam = LayerGradCam(model, last_spatial_layer(model, example))
        return lambda x, t: LayerAttribution.interpolate(cam.attribute(x, target=t), tuple(x.shape[-2:]),
                                                         interpolate_mode="bilinear")
    raise SystemExit(f"unknown method {name}")


def _write_folder(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:04d}.png")


def _worker(rank: int, world: int, init: str, arch: str, method: str, folder: str, out: str, batch: int,
            report: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        from captum_global.explain import explain_dataset
        from captum_global.world import load_reference_model

        model = load_reference_model(arch, "clean")
        torch.distributed.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        explain_dataset(model, method, folder, out, batch_size=batch, image_size=(64, 64))
        cpu = time.process_time() - cpu
        torch.distributed.barrier()
        seconds = time.perf_counter() - start
        with open(f"{report}.rank{rank}", "w") as handle:
            handle.write(json.dumps({"seconds": seconds, "cpu_seconds": cpu}))
    finally:
        torch.distributed.destroy_process_group()


def _two_processes(arch: str, method: str, folder: Path, out: Path, batch: int, scratch: Path) -> Dict[str, float]:
    init, report = scratch / f"init-{out.name}", scratch / f"report-{out.name}.json"
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.explain_throughput", "--worker", str(r), "2",
                               str(init), arch, method, str(folder), str(out), str(batch), str(report)],
                              env=dict(os.environ, OMP_NUM_THREADS="1")) for r in range(2)]
    codes = [p.wait() for p in procs]
    if codes != [0, 0]:
        raise SystemExit(f"2-process run failed: exit codes {codes}")
    ranks = [json.loads(Path(f"{report}.rank{r}").read_text()) for r in range(2)]
    return {"seconds": ranks[0]["seconds"], "cpu_seconds": [r["cpu_seconds"] for r in ranks],
            "wall_with_startup": time.perf_counter() - started}


def measure(arch: str, method: str, n: int, batch: int, repeats: int, scratch: Path) -> Dict:
    from captum_global.explain import explain_dataset, read_explanations
    from captum_global.world import load_reference_model, make_dataset

    model = load_reference_model(arch, "clean")
    images = make_dataset(n, seed=_SEED).images
    folder = scratch / "images"
    if not folder.exists():
        _write_folder(folder, images)
    # the bare method sees the same pixels as explain (8-bit PNG round trip)
    from captum_global.loading import ImageFiles

    files = ImageFiles(folder)
    pixels = torch.stack([files[i] for i in range(len(files))])
    with torch.no_grad():
        targets = model(pixels).argmax(1)
    explain = _method(model, method, pixels[:1])

    def bare():
        return torch.cat([explain(pixels[i:i + batch], targets[i:i + batch]).detach() for i in range(0, n, batch)])

    def bare_top1():
        for i in range(0, n, batch):  # the bare method when the targets are the model's top-1 classes
            with torch.no_grad():
                top1 = model(pixels[i:i + batch]).argmax(1)
            explain(pixels[i:i + batch], top1)

    times: Dict[str, List] = {"bare": [], "bare_top1": [], "explain_1p": [], "explain_2p": []}
    for r in range(repeats):
        maps, wall, cpu = _timed(bare)
        times["bare"].append((wall, cpu))
        times["bare_top1"].append(_timed(bare_top1)[1:])
        out = scratch / f"{arch}-{method}-one-{r}"
        times["explain_1p"].append(_timed(lambda: explain_dataset(model, method, folder, out, batch_size=batch))[1:])
        two = _two_processes(arch, method, folder, scratch / f"{arch}-{method}-two-{r}", batch, scratch)
        times["explain_2p"].append((two["seconds"], max(two["cpu_seconds"]), two["wall_with_startup"]))
    stored = read_explanations(scratch / f"{arch}-{method}-one-0")
    assert torch.allclose(stored.maps(), maps, atol=1e-5), "explain_dataset and the bare method disagree"
    for r in range(repeats):  # 2 processes wrote the same files as 1
        for k in range(stored.num_shards):
            name = stored.index["shards"][k]["file"]
            a = (scratch / f"{arch}-{method}-one-{r}" / name).read_bytes()
            assert a == (scratch / f"{arch}-{method}-two-{r}" / name).read_bytes(), name
    wall = {k: min(t[0] for t in v) for k, v in times.items()}
    cpu = {k: min(t[1] for t in v) for k, v in times.items()}  # for 2p: the busier rank's CPU time
    return {
        "arch": arch, "method": method, "images": n, "batch_size": batch,
        "cpu_images_per_s": {k: n / v for k, v in cpu.items()},
        "wall_images_per_s": {k: n / v for k, v in wall.items()},
        "explain_1p_over_bare_cpu": cpu["bare"] / cpu["explain_1p"],
        "explain_1p_over_bare_top1_cpu": cpu["bare_top1"] / cpu["explain_1p"],
        "speedup_2p_over_1p_cpu": cpu["explain_1p"] / cpu["explain_2p"],
        "explain_1p_over_bare_top1_wall": wall["bare_top1"] / wall["explain_1p"],
        "speedup_2p_over_1p_wall": wall["explain_1p"] / wall["explain_2p"],
        "explain_2p_wall_with_startup_s": min(t[2] for t in times["explain_2p"]),
        "seconds_wall_cpu": times,
    }


def _timed(function):
    """``(result, wall seconds, CPU seconds of this process)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _markdown(rows: List[Dict], command: str, load: str) -> str:
    lines = [
        "# explain_dataset throughput (reference models, CPU)", "",
        f"Command: `{command}`; torch {torch.__version__}, one thread per process; load average at the start "
        f"{load}. Best of the repeats. Throughput from CPU time (images per CPU-second of the process; for 2 "
        "processes, of the busier rank), which a machine shared with other jobs distorts far less than wall "
        "time; wall-clock ratios in the last columns. `bare`: the method on in-memory batches with the "
        "targets given; `bare+top1`: also computing the top-1 targets (one forward pass per batch), as "
        "explain_dataset does; `1p`/`2p`: explain_dataset on the PNG folder (decoding, targets, shards and "
        "index included) on 1 or 2 gloo processes. The 2-process files were checked byte-identical to the "
        "1-process ones.", "",
        "| arch | method | images | bare | bare+top1 | explain 1p | explain 2p | 1p / bare | 1p / bare+top1 "
        "| 2p / 1p | 1p / bare+top1 (wall) | 2p / 1p (wall) | 2p wall incl. start-up (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c = r["cpu_images_per_s"]
        lines.append(f"| {r['arch']} | {r['method']} | {r['images']} | {c['bare']:.2f} | {c['bare_top1']:.2f} | "
                     f"{c['explain_1p']:.2f} | {c['explain_2p']:.2f} | {r['explain_1p_over_bare_cpu']:.2f} | "
                     f"{r['explain_1p_over_bare_top1_cpu']:.2f} | {r['speedup_2p_over_1p_cpu']:.2f} | "
                     f"{r['explain_1p_over_bare_top1_wall']:.2f} | {r['speedup_2p_over_1p_wall']:.2f} | "
                     f"{r['explain_2p_wall_with_startup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        a = sys.argv[2:]
        _worker(int(a[0]), int(a[1]), a[2], a[3], a[4], a[5], a[6], int(a[7]), a[8])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="vgg,resnet")
    parser.add_argument("--methods", default="SISE,LayerGradCam")
    parser.add_argument("--images", default="SISE=32,LayerGradCam=256",
                        help="images per method: one number, or METHOD=N pairs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain_throughput"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        counts = dict(p.split("=") for p in args.images.split(",")) if "=" in args.images else {}
        for arch in args.archs.split(","):
            for method in args.methods.split(","):
                n = int(counts.get(method, args.images if not counts else 32))
                row = measure(arch, method, n, args.batch_size, args.repeats, Path(scratch) / f"{arch}-{n}")
                print(json.dumps({k: v for k, v in row.items() if k != "seconds_wall_cpu"}), flush=True)
                rows.append(row)
    command = "python -m benchmarks.explain_throughput " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "load_average": load, "rows": rows},
                                                        indent=2))
    args.out.with_suffix(".md").write_text(_markdown(rows, command, load))
    print(_markdown(rows, command, load))


if __name__ == "__main__":
    main()
