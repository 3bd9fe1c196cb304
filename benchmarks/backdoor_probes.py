"""Two probes behind the backdoor scan's design, on a few zoo models.

1. Seed noise of the scan's statistic: ``scan_for_backdoor`` with seeds
   0, 1, 2 on clean models; the spread of each class's log mask l1 across
   seeds (what the scan's ``noise_floor`` stands for).
2. A universal additive perturbation per class at a fixed l-infinity budget
   (the "targeted success at a fixed small budget" statistic): Adam on one
   perturbation per class over 80 clean images, projected on the budget,
   then the share of 20 other clean images it sends to the class. If a
   whole-image trigger (SIG: an added sinusoid of amplitude 0.08) made its
   target the easy one, the target would stand out at small budgets.

    python -m benchmarks.backdoor_probes
    python -m benchmarks.backdoor_probes --noise-models vgg_clean --linf-models vgg_sig_s2

Writes benchmarks/results/backdoor_probes.{md,json}.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from captum_global.backdoor import scan_for_backdoor
from captum_global.world import make_dataset, reference_zoo

RESULTS = Path(__file__).parent / "results"
CLEAN_SEED = 20_261_125     # the clean set of benchmarks/backdoor_scan.py


def seed_noise(model, clean, seeds=(0, 1, 2)):
    logs = torch.stack([scan_for_backdoor(model, clean[:1], clean_inputs=clean, seed=s).statistics["mask_l1"].log()
                        for s in seeds])
    return {"log_mask_l1": logs.tolist(), "sd_per_class": logs.std(0).tolist(),
            "pooled_sd": float(logs.var(0).mean().sqrt())}


def linf_success(model, clean, budgets=(0.03, 0.06), steps=40, batch=20):
    for p in model.parameters():
        p.requires_grad_(False)
    train, test = clean[:80], clean[80:]
    k = int(model(clean[:1]).shape[1])
    labels = torch.arange(k)
    out = {}
    for eps in budgets:
        generator = torch.Generator().manual_seed(0)
        delta = torch.zeros(k, *clean.shape[1:], requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=eps / 10)
        for _ in range(steps):
            x = train[torch.randperm(train.shape[0], generator=generator)[:batch]]
            stamped = (x[None] + delta[:, None]).clamp(0, 1).flatten(0, 1)
            loss = F.cross_entropy(model(stamped), labels.repeat_interleave(batch))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                delta.clamp_(-eps, eps)
        with torch.no_grad():
            stamped = (test[None] + delta[:, None]).clamp(0, 1).flatten(0, 1)
            hits = model(stamped).argmax(1) == labels.repeat_interleave(test.shape[0])
        out[str(eps)] = hits.view(k, -1).float().mean(1).tolist()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise-models", default="vgg_clean,resnet_clean")
    parser.add_argument("--linf-models", default="vgg_sig_s2,resnet_sig_s1,resnet_clean")
    parser.add_argument("--out", default=str(RESULTS / "backdoor_probes"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    zoo = {e.name: e for e in reference_zoo()}
    clean = make_dataset(100, seed=CLEAN_SEED).images
    command = "python -m benchmarks.backdoor_probes " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command.strip(), "noise": {}, "linf": {}}
    for name in filter(None, args.noise_models.split(",")):
        result["noise"][name] = seed_noise(zoo[name].load(), clean)
        print(name, result["noise"][name], flush=True)
    for name in filter(None, args.linf_models.split(",")):
        result["linf"][name] = {"kind": zoo[name].kind, "target": zoo[name].target_class,
                                "success": linf_success(zoo[name].load(), clean)}
        print(name, result["linf"][name], flush=True)
    lines = ["# Backdoor scan probes: seed noise of the statistic, fixed-budget universal perturbations", "",
             f"Command: `{result['command']}`; torch {torch.__version__}, one thread; clean images: "
             f"reference-world split seed {CLEAN_SEED}.", "",
             "Seed noise (seeds 0, 1, 2): standard deviation of each class's log mask l1 across seeds.", "",
             "| model | sd per class | pooled sd |", "| --- | --- | --- |"]
    for name, r in result["noise"].items():
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in r['sd_per_class'])} | {r['pooled_sd']:.2f} |")
    lines += ["", "Universal additive perturbation per class, l-infinity budget: share of 20 held-out clean "
              "images sent to the class.", "", "| model | kind | target | budget | success per class |",
              "| --- | --- | --- | --- | --- |"]
    for name, r in result["linf"].items():
        for eps, rates in r["success"].items():
            lines.append(f"| {name} | {r['kind']} | {'-' if r['target'] is None else r['target']} | {eps} "
                         f"| {', '.join(f'{v:.2f}' for v in rates)} |")
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
