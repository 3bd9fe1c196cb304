"""Fast smoke test of the benchmark harness on a tiny model (2 images, 3 methods)."""
import json

import pytest
import torch

from benchmarks import COLUMNS, LayerInfo, available, register, run_benchmark
from benchmarks.methods import grid_feature_mask, pick_cam_layer
from benchmarks.rise import RISE
from benchmarks.run import merge_results
from benchmarks.workloads import Workload


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
    with pytest.raises(ValueError, match="already registered"):
        register("saliency", lambda model, info: None)
    with pytest.raises(ValueError, match="unknown methods"):
        run_benchmark(methods=["nope"], workloads=[tiny_workload()], out=None, progress=False)


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


def test_captum_baselines_return_input_sized_maps():
    _check_methods_return_input_sized_maps(["occlusion", "feature_ablation", "gradcam", "integrated_gradients"])


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


def test_rise_is_batch_size_invariant_and_grid_mask_counts_cells():
    work = tiny_workload()
    a = RISE(work.model, n_masks=30, batch_size=7).attribute(work.images, work.targets)
    b = RISE(work.model, n_masks=30, batch_size=60).attribute(work.images, work.targets)
    assert torch.allclose(a, b, atol=1e-6)
    assert grid_feature_mask(16, 16).unique().numel() == 64
