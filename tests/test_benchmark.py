"""The benchmark harness on a tiny model: tables, every registered method, RISE by its formula."""
import json

import numpy as np
import pytest
import torch

from benchmarks import COLUMNS, LayerInfo, available, register, run_benchmark
from benchmarks.methods import grid_feature_mask, pick_cam_layer
from captum_global.attr import RISE
from benchmarks.run import merge_results
from benchmarks.workloads import Workload
from captum_global.errors import InvalidArgumentError, NonFiniteOutputError


def tiny_workload() -> Workload:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3),
    ).eval()
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, :8, :8] = True
    masks[1, 4:12, 6:14] = True
    return Workload("tiny", model, torch.rand(2, 3, 16, 16), torch.tensor([0, 2]), masks)


def test_run_writes_table_with_positive_costs(tmp_path):
    result = run_benchmark(methods=["saliency", "gradcam", "rise"], workloads=[tiny_workload()], batch_size=2,
                           rise_masks=20, n_steps=4, out=str(tmp_path), name="smoke", progress=False)
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["saliency", "gradcam", "rise"]
    for row in rows:
        assert "error" not in row, row
        assert set(COLUMNS) <= set(row)
        assert row["seconds_per_image"] > 0 and row["time_vs_forward"] > 0
        assert 0 <= row["ebpg"] <= 1 and 0 <= row["insertion_auc"] <= 1
    by = {r["method"]: r for r in rows}
    assert by["saliency"]["evals_per_image"] == 1   # one forward (and one backward)
    assert by["rise"]["evals_per_image"] == 20      # one per mask
    saved = json.loads((tmp_path / "smoke.json").read_text())
    assert saved["rows"][0]["method"] == "saliency" and saved["total_seconds"] > 0
    md = (tmp_path / "smoke.md").read_text()
    assert "| saliency |" in md and "Total run time" in md
    merged = merge_results([str(tmp_path / "smoke.json")] * 2, str(tmp_path), "merged")
    assert len(merged["rows"]) == 6 and len(merged["parts"]) == 2
    assert merged["total_seconds"] == pytest.approx(2 * result["total_seconds"])
    assert "Sum of the parts' run times" in (tmp_path / "merged.md").read_text()


def test_registry_refuses_duplicates_and_unknown_methods():
    assert {"saliency", "gradcam", "scorecam", "gradcam++", "rise", "occlusion"} <= set(available())
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register("saliency", lambda model, info: None)
    with pytest.raises(InvalidArgumentError, match="unknown methods"):
        run_benchmark(methods=["nope"], workloads=[tiny_workload()], out=None, progress=False)
    with pytest.raises(InvalidArgumentError, match="methods must be a list"):
        run_benchmark(methods="saliency", workloads=[tiny_workload()], out=None, progress=False)
    with pytest.raises(InvalidArgumentError, match="n_images"):
        run_benchmark(methods=["saliency"], workloads=[tiny_workload()], n_images=0, out=None, progress=False)


def _check_methods_return_input_sized_maps(methods):
    from benchmarks.methods import get_factory

    work = tiny_workload()
    name, layer = pick_cam_layer(work.model, work.images)
    info = LayerInfo(name, layer, (16, 16), batch_size=4, options={"rise_masks": 10}, example=work.images[:1])
    for method in methods:
        out = get_factory(method)(work.model, info)(work.images, work.targets)
        assert out.shape[0] == 2 and out.shape[-2:] == (16, 16), method
        assert torch.isfinite(out).all(), method
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in work.model.modules())


def test_every_registered_method_returns_input_sized_maps():
    """Every registered method except the grad-cam package peers (slow import, below)."""
    methods = [m for m in available() if m not in ("gradcam++", "scorecam")]
    assert {"saliency", "occlusion", "feature_ablation", "gradcam", "integrated_gradients", "rise", "sise",
            "sise_budget"} <= set(methods)
    _check_methods_return_input_sized_maps(methods)


def test_lineup_entries_match_the_package_lineup():
    """The benchmark's gradcam/occlusion/IG/SISE are the demo's line-up, same settings, same maps."""
    from benchmarks.methods import get_factory
    from captum_global.lineup import build_lineup

    work = tiny_workload()
    name, layer = pick_cam_layer(work.model, work.images)
    assert name == "4"  # the last ReLU: the last spatial block of the tiny model
    info = LayerInfo(name, layer, (16, 16), batch_size=4, example=work.images[:1])
    pairs = {"gradcam": "Grad-CAM", "occlusion": "Occlusion", "integrated_gradients": "Integrated Gradients",
             "sise": "SISE", "sise_budget": "SISE (budget 25%)"}
    demo = build_lineup(work.model, work.images[:1], list(pairs.values()))
    for bench_name, demo_name in pairs.items():
        ours = get_factory(bench_name)(work.model, info)(work.images, work.targets)
        theirs = demo[demo_name](work.images, work.targets)
        assert torch.allclose(ours, theirs, atol=1e-6), bench_name
    with pytest.raises(ValueError, match="example"):
        get_factory("gradcam")(work.model, LayerInfo(name, layer, (16, 16)))


@pytest.mark.slow  # importing pytorch_grad_cam alone takes 5-20 s on a busy machine
def test_grad_cam_package_peers_return_input_sized_maps():
    _check_methods_return_input_sized_maps(["gradcam++", "scorecam"])


def test_rise_is_its_formula_and_batch_size_invariant():
    """saliency = sum_i P_c(x * M_i) M_i / (n_masks * p1), with the masks RISE.masks yields."""
    work = tiny_workload()
    settings = dict(n_masks=130, p1=0.4, seed=3)
    masks = torch.cat(list(RISE.masks(16, 16, **settings)))
    assert masks.shape == (130, 1, 16, 16) and 0 <= masks.min() and masks.max() <= 1 + 1e-6
    with torch.no_grad():
        expected = torch.stack([
            (work.model(work.images[i] * masks).softmax(1)[:, c].view(-1, 1, 1, 1) * masks).sum(0) / (130 * 0.4)
            for i, c in enumerate(work.targets.tolist())
        ])
    rise = RISE(work.model)
    got = rise.attribute(work.images, work.targets, perturbations_per_eval=7, **settings)
    assert got.shape == work.images.shape
    assert torch.allclose(got, expected.expand_as(got), atol=1e-6)
    big = rise.attribute(work.images, work.targets, perturbations_per_eval=np.int64(500), **settings)
    assert torch.allclose(big, got, atol=1e-6)
    # raw scores: the same sum with the model's outputs
    raw = rise.attribute(work.images, 1, apply_softmax=False, **settings)
    with torch.no_grad():
        expected_raw = (work.model(work.images[0] * masks)[:, 1].view(-1, 1, 1, 1) * masks).sum(0) / (130 * 0.4)
    assert torch.allclose(raw[0, :1], expected_raw, atol=1e-5)
    # another seed draws other masks
    assert not torch.allclose(rise.attribute(work.images, 1, n_masks=130, p1=0.4, seed=4), got)
    assert grid_feature_mask(16, 16).unique().numel() == 64


def test_rise_takes_tuples_and_forward_arguments_like_captum():
    work = tiny_workload()
    x = work.images
    one = RISE(work.model).attribute(x, 1, n_masks=40)
    # a tuple in, a tuple out: the masks multiply every input of the tuple
    two = RISE(lambda a, b: work.model(a + b)).attribute((x, torch.zeros_like(x)), 1, n_masks=40)
    assert isinstance(two, tuple) and len(two) == 2
    assert torch.allclose(two[0], one, atol=1e-6) and torch.allclose(two[1], one, atol=1e-6)
    # per-example forward arguments follow their example through the masked copies
    scale = torch.tensor([1.0, 0.0] + [1.0] * (x.shape[0] - 2))
    scaled = RISE(lambda a, s: work.model(a) * s.view(-1, 1)).attribute(x, 1, additional_forward_args=(scale,),
                                                                        n_masks=40, apply_softmax=False)
    plain = RISE(work.model).attribute(x, 1, n_masks=40, apply_softmax=False)
    assert torch.allclose(scaled[0], plain[0], atol=1e-6) and torch.equal(scaled[1], torch.zeros_like(plain[1]))
    with pytest.raises(InvalidArgumentError, match=r"inputs\[1\]"):
        RISE(lambda a, b: work.model(a)).attribute((x, x[:1]), 1, n_masks=5)


def test_rise_follows_the_contract():
    work = tiny_workload()
    rise = RISE(work.model)
    ref = rise.attribute(work.images, [2, 2], n_masks=20)
    for same in (2, -1, np.int64(2), (2,), torch.tensor(2), torch.tensor([2, 2])):
        assert torch.equal(rise.attribute(work.images, same, n_masks=20), ref)
    for bad in (3, 1.5, True, [2], torch.tensor([2.0, 2.0]), None):
        with pytest.raises(InvalidArgumentError, match="target"):
            rise.attribute(work.images, bad, n_masks=20)
    for kwargs, name in (({"n_masks": 0}, "n_masks"), ({"p1": float("nan")}, "p1"), ({"p1": 0}, "p1"),
                         ({"perturbations_per_eval": 2.0}, "perturbations_per_eval"), ({"s": 0}, "s"),
                         ({"seed": -1}, "seed"), ({"apply_softmax": "no"}, "apply_softmax")):
        with pytest.raises(InvalidArgumentError, match=name):
            rise.attribute(work.images, 0, **kwargs)
    with pytest.raises(InvalidArgumentError, match="forward_func"):
        RISE("not a model")
    bad_x = work.images.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidArgumentError, match="inputs must be finite"):
        rise.attribute(bad_x, 0)
    with pytest.raises(NonFiniteOutputError, match="RISE"):
        RISE(lambda t: work.model(t) * float("nan")).attribute(work.images, 0, n_masks=5)
    # eval mode, model left as found (a train-mode model with batch norm)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                              torch.nn.LazyLinear(3))
    net(work.images)
    net.eval()
    ref = RISE(net).attribute(work.images, 0, n_masks=10)
    net.train()
    stats = net[1].running_mean.clone()
    assert torch.equal(RISE(net).attribute(work.images, 0, n_masks=10), ref)
    assert net.training and torch.equal(net[1].running_mean, stats)


def test_command_line_refuses_bad_values_with_usage(capsys):
    from benchmarks.run import main

    for argv in (["--n-images", "0"], ["--batch-size", "x"], ["--models", "vgg,alexnet"], ["--methods", "nope"],
                 ["--rise-masks", "-3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        assert "usage: python -m benchmarks.run" in capsys.readouterr().err


def test_lineup_parts_come_from_the_same_run_and_explain_is_one_tensor():
    from captum_global.lineup import LINEUP, build_lineup, build_lineup_with_parts

    work = tiny_workload()
    plain = build_lineup(work.model, work.images[:1])
    with_parts = build_lineup_with_parts(work.model, work.images[:1])
    assert list(plain) == list(with_parts) == [spec.name for spec in LINEUP]
    for name in plain:
        attr = plain[name](work.images, work.targets)
        assert isinstance(attr, torch.Tensor), name
        again, parts = with_parts[name](work.images, work.targets)
        assert torch.allclose(again, attr, atol=1e-6), name
        spec = next(s for s in LINEUP if s.name == name)
        assert bool(parts) == (spec.build_with_parts is not None), name
    _, parts = with_parts["SISE"](work.images, work.targets)
    assert sorted(parts) == ["1", "4"] and all(p.shape == (2, 1, 16, 16) for p in parts.values())
