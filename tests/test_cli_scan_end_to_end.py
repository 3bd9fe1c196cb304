"""``captum-global scan`` end to end, as a defender scanning their own model runs it.

The report must hold exactly what the library returns for the same model, clean
images, seed and options (the command only loads, calls and writes), for every
way a model and clean samples can be handed in; the report folder, --force,
--quiet, pickles that must never run, user mistakes (exit 2) and a model that
returns NaN (exit 1) behave as docs/use/cli.md says.
"""
import builtins
import json
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.cli import main
from captum_global.loading import ImageFiles, NormalizedModel

sys.path.insert(0, str(Path(__file__).parent))
from _cli_errors import usage_error  # noqa: E402

torch.set_num_threads(1)

_NETS = '''
import torch
from torch import nn


def net(num_classes=4, channels=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))


def five_channels(num_classes=4):
    return net(num_classes, channels=5)


class Pair(nn.Module):
    """Returns (scores, features), as many research models do."""
    def __init__(self, num_classes=4):
        super().__init__()
        self.body = net(num_classes)

    def forward(self, x):
        return self.body(x), x


class NaNWhileOptimised(nn.Module):
    """Fine when loaded and probed (no gradient), NaN once the scan optimises through it."""
    def __init__(self, num_classes=4):
        super().__init__()
        self.body = net(num_classes)

    def forward(self, x):
        out = self.body(x)
        return out * float("nan") if torch.is_grad_enabled() else out
'''
SHAPE = (3, 16, 16)
MEAN, STD = [120.0, 115.0, 100.0], [60.0, 55.0, 65.0]  # in the units of --value-range 0,255


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A defender's files: one small network as a safetensors / nested .pt state dict and as
    TorchScript, clean images as tensor files and as a folder of PNGs, and their own code."""
    root = tmp_path_factory.mktemp("defender")
    (root / "e2e_scan_nets.py").write_text(_NETS)
    sys.path.insert(0, str(root))
    import e2e_scan_nets

    torch.manual_seed(0)
    model = e2e_scan_nets.net().eval()
    with torch.no_grad():  # classes the clean images actually fall into, so the scan has work to do
        model[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
    save_file(model.state_dict(), str(root / "net.safetensors"))
    # a training checkpoint: weights nested under "state_dict", saved from DataParallel ("module." prefix)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, root / "net.pt")
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(root / "net.torchscript"))
    generator = torch.Generator().manual_seed(1)
    clean = torch.rand(8, *SHAPE, generator=generator)
    save_file({"images": clean}, str(root / "clean.safetensors"))
    torch.save(clean, root / "clean.pt")
    (root / "imgs").mkdir()
    for i in range(6):  # 20 x 20 pictures, resized to the model's 16 x 16 by the command
        array = (torch.rand(20, 20, 3, generator=generator).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(root / "imgs" / f"{i:02d}.png")
    torch.manual_seed(0)
    save_file(e2e_scan_nets.five_channels().state_dict(), str(root / "five.safetensors"))
    save_file(e2e_scan_nets.Pair().state_dict(), str(root / "pair.safetensors"))
    save_file(e2e_scan_nets.NaNWhileOptimised().state_dict(), str(root / "nan.safetensors"))
    torch.manual_seed(0)
    save_file(e2e_scan_nets.net(num_classes=2).state_dict(), str(root / "two.safetensors"))
    yield root, model, clean
    sys.path.remove(str(root))
    sys.modules.pop("e2e_scan_nets", None)


def _scan(argv, out, capsys):
    """Run the command (quietly), return (report, stdout); it leaves no figure open in pyplot."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    assert main(["scan", *argv, "--out", str(out), "--quiet"]) == 0
    assert plt.get_fignums() == before  # its pictures are drawn outside pyplot: nothing to close, nothing leaks
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress bar, nothing else either
    return json.loads((out / "scan.json").read_text()), captured.out


def _without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def _assert_same(report, printed, expected):
    """The report and the printed tables hold exactly the library's results, method by method."""
    assert list(report["methods"]) == list(expected)
    for method, scan in expected.items():
        assert _without_time(report["methods"][method]) == _without_time(scan.as_dict()), method
        assert f"== {method} ==\n{scan.summary()}\n" in printed  # the per-class table
        # the numbers a defender reads, straight from the result object
        written = report["methods"][method]
        assert written["flagged"] == scan.flagged and written["suspect"] == scan.suspect
        assert written["anomaly_index"] == [round(float(v), 4) for v in scan.anomaly_index]


def test_safetensors_with_an_entry_point_both_methods_equal_the_library(user, tmp_path, capsys):
    root, model, clean = user
    argv = ["--model", str(root / "net.safetensors"), "--arch", "e2e_scan_nets:net", "--num-classes", "4",
            "--input-shape", "3,16,16", "--clean", str(root / "clean.safetensors"), "--method", "both",
            "--classes", "0,1,3", "--threshold", "1.5", "--seed", "7", "--steps", "3"]
    report, printed = _scan(argv, tmp_path / "r", capsys)
    common = dict(classes=[0, 1, 3], threshold=1.5, seed=7)
    expected = {"ours": scan_for_backdoor(model, torch.zeros(1, *SHAPE), clean_inputs=clean, n_steps=3, **common),
                "neural-cleanse": neural_cleanse(model, clean, n_epochs=3, **common)}
    _assert_same(report, printed, expected)
    assert report["model"] == {"file": "net.safetensors", "arch": "e2e_scan_nets:net", "num_classes": 4,
                               "input_shape": [3, 16, 16], "mean": None, "std": None, "value_range": None}
    assert report["settings"] == {"steps": 3, "threshold": 1.5, "seed": 7, "classes": [0, 1, 3], "clean_samples": 8}
    assert report["methods"]["ours"]["settings"]["n_steps"] == 3
    assert report["methods"]["neural-cleanse"]["settings"]["n_epochs"] == 3


def test_nested_checkpoint_and_an_image_folder_equal_the_library(user, tmp_path, capsys):
    root, model, _ = user
    argv = ["--model", str(root / "net.pt"), "--arch", "e2e_scan_nets:net", "--input-shape", "3,16,16",
            "--clean", str(root / "imgs"), "--max-clean", "5", "--steps", "2"]
    report, printed = _scan(argv, tmp_path / "r", capsys)
    files = ImageFiles(root / "imgs", size=(16, 16))
    clean = torch.stack([files[i] for i in range(5)])  # the first --max-clean images, in sorted order
    expected = scan_for_backdoor(model, torch.zeros(1, *SHAPE), clean_inputs=clean, n_steps=2)
    _assert_same(report, printed, {"ours": expected})
    assert report["settings"]["clean_samples"] == 5


def test_torchscript_with_value_range_and_normalisation_equals_the_library(user, tmp_path, capsys):
    root, model, clean = user
    # a model that expects (x * 255 - mean) / std: the command wraps it so that the scan passes [0, 1] images
    argv = ["--model", str(root / "net.torchscript"), "--input-shape", "3,16,16", "--value-range", "0,255",
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--clean", str(root / "clean.pt"),
            "--steps", "2", "--seed", "1"]
    report, printed = _scan(argv, tmp_path / "r", capsys)
    wrapped = NormalizedModel(model, MEAN, STD, (0.0, 255.0)).eval()
    expected = scan_for_backdoor(wrapped, torch.zeros(1, *SHAPE), clean_inputs=clean, n_steps=2, seed=1)
    _assert_same(report, printed, {"ours": expected})
    assert report["model"]["arch"] is None and report["model"]["value_range"] == [0.0, 255.0]
    assert report["model"]["mean"] == MEAN and report["model"]["std"] == STD


def test_torchvision_state_dict_without_clean_samples_equals_the_library(tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=4).eval()
    torch.save(model.state_dict(), tmp_path / "squeeze.pt")  # read back with weights_only=True
    argv = ["--model", str(tmp_path / "squeeze.pt"), "--arch", "squeezenet1_1", "--num-classes", "4",
            "--input-shape", "3,32,32", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--steps", "1"]
    report, printed = _scan(argv, tmp_path / "r", capsys)
    wrapped = NormalizedModel(model, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    expected = scan_for_backdoor(wrapped, torch.zeros(1, 3, 32, 32), n_steps=1)  # smooth noise, no clean inputs
    _assert_same(report, printed, {"ours": expected})
    assert report["methods"]["ours"]["settings"]["inputs"] == "smooth noise"
    assert report["settings"]["clean_samples"] == 0


def test_a_model_with_five_channels_scans_and_draws_its_report(user, tmp_path, capsys):
    root, _, _ = user
    import e2e_scan_nets

    torch.manual_seed(0)
    model = e2e_scan_nets.five_channels().eval()
    clean = torch.rand(4, 5, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.save(clean, tmp_path / "clean5.pt")
    out = tmp_path / "r"
    argv = ["--model", str(root / "five.safetensors"), "--arch", "e2e_scan_nets:five_channels",
            "--input-shape", "5,16,16", "--clean", str(tmp_path / "clean5.pt"), "--steps", "1"]
    report, printed = _scan(argv, out, capsys)  # the 5-channel trigger is drawn (as its channel mean)
    expected = scan_for_backdoor(model, torch.zeros(1, 5, 16, 16), clean_inputs=clean, n_steps=1)
    _assert_same(report, printed, {"ours": expected})
    assert sorted(p.name for p in out.iterdir()) == ["maps_ours.png", "scan.json", "trigger_ours.png"]


def test_report_folder_force_replaces_only_the_reports_own_files(user, tmp_path, capsys):
    root, _, _ = user
    base = ["scan", "--model", str(root / "net.safetensors"), "--arch", "e2e_scan_nets:net",
            "--input-shape", "3,16,16", "--clean", str(root / "clean.pt"), "--steps", "1", "--quiet"]
    out = tmp_path / "report"
    assert main(base + ["--method", "both", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    own = ["maps_neural-cleanse.png", "maps_ours.png", "scan.json", "trigger_neural-cleanse.png",
           "trigger_ours.png"]
    assert sorted(p.name for p in out.iterdir()) == own
    assert f"report written to {out}: {', '.join(own)}" in printed
    assert all((out / name).stat().st_size > 1_000 for name in own if name.endswith(".png"))
    report = (out / "scan.json").read_bytes()

    err = usage_error(base + ["--out", str(out)], capsys)
    assert f"--out {str(out)!r} exists and is not empty; pass --force" in err
    assert (out / "scan.json").read_bytes() == report and sorted(p.name for p in out.iterdir()) == own

    # the defender's own files, some with names close to the report's, stay; a stale report file goes
    mine = {"notes.txt": "mine", "maps_holiday.png": "photo", "trigger_warning.png": "x", "scan.json.bak": "old"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(base + ["--method", "ours", "--out", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(["maps_ours.png", "scan.json", "trigger_ours.png", *mine])
    assert all((out / name).read_text() == text for name, text in mine.items())
    assert list(json.loads((out / "scan.json").read_text())["methods"]) == ["ours"]
    # the closing line names what the command wrote, not the defender's files
    assert f"report written to {out}: maps_ours.png, scan.json, trigger_ours.png\n" in printed

    err = usage_error(base + ["--out", str(out / "notes.txt"), "--force"], capsys)
    assert "is a file, not a folder" in err


class _WritesAFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_pickles_given_as_clean_samples_or_model_never_run(user, tmp_path, capsys):
    root, _, _ = user
    marker = tmp_path / "pwned"
    evil = _WritesAFileWhenUnpickled(marker)
    torch.save({"images": evil}, tmp_path / "clean_dict.pt")  # torch.save's zip format
    (tmp_path / "clean_raw.pt").write_bytes(pickle.dumps(evil, protocol=2))  # a bare pickle
    (tmp_path / "clean.safetensors").write_bytes(pickle.dumps(evil))  # disguised by its name
    torch.save({"state_dict": {"0.weight": evil}}, tmp_path / "checkpoint.pt")  # a nested checkpoint
    model = ["--model", str(root / "net.safetensors"), "--arch", "e2e_scan_nets:net", "--input-shape", "3,16,16"]
    runs = [model + ["--clean", str(tmp_path / name)] for name in ("clean_dict.pt", "clean_raw.pt",
                                                                    "clean.safetensors")]
    runs.append(["--model", str(tmp_path / "checkpoint.pt"), "--arch", "e2e_scan_nets:net", "--input-shape",
                 "3,16,16", "--clean", str(root / "clean.pt")])
    for argv in runs:
        err = usage_error(["scan", *argv, "--out", str(tmp_path / "out")], capsys)
        assert "never unpickles arbitrary Python objects" in err, argv
        assert ("--clean: " in err) == (argv[1] == str(root / "net.safetensors"))  # names the option
    assert not marker.exists() and not (tmp_path / "out").exists()


MISTAKES = [
    ("classes out of range", ["--classes", "0,1,7"],
     "--classes needs at least 3 distinct classes in 0..3, got [0, 1, 7]"),
    ("threshold inf", ["--threshold", "inf"], "argument --threshold: must be finite, got inf"),
    ("threshold 0", ["--threshold", "0"], "argument --threshold: must be > 0, got 0.0"),
    ("clean of another shape", ["--clean", "SMALL"],
     "--clean holds images of shape (3, 8, 8), the model takes (3, 16, 16)"),
    ("num classes", ["--num-classes", "5"], "pass --num-classes 4?"),
    ("too few clean", ["--clean", "CLEAN", "--max-clean", "1"], "--clean must give at least 2 clean images, got 1"),
]


@pytest.mark.parametrize("extra, message", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_user_mistakes_are_usage_errors_before_any_folder(user, tmp_path, capsys, extra, message):
    root, _, _ = user
    torch.save(torch.rand(3, 3, 8, 8), tmp_path / "small.pt")
    extra = [{"SMALL": str(tmp_path / "small.pt"), "CLEAN": str(root / "clean.pt")}.get(a, a) for a in extra]
    argv = ["scan", "--model", str(root / "net.safetensors"), "--arch", "e2e_scan_nets:net",
            "--input-shape", "3,16,16", *extra, "--out", str(tmp_path / "out")]
    assert message in usage_error(argv, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("weights, arch, extra, message", [
    ("two.safetensors", "net", ["--num-classes", "2"], "the model has 2 classes; the anomaly index needs at least 3"),
    ("pair.safetensors", "Pair", [], "must return class scores [N, num_classes], got tuple"),
])
def test_models_the_scan_cannot_test_are_usage_errors(user, tmp_path, capsys, weights, arch, extra, message):
    root, _, _ = user
    argv = ["scan", "--model", str(root / weights), "--arch", f"e2e_scan_nets:{arch}", "--input-shape", "3,16,16",
            *extra, "--out", str(tmp_path / "out")]
    assert message in usage_error(argv, capsys)
    assert not (tmp_path / "out").exists()


def test_a_model_returning_nan_during_the_scan_exits_1_with_one_line(user, tmp_path, capsys):
    root, _, _ = user
    out = tmp_path / "out"
    status = main(["scan", "--model", str(root / "nan.safetensors"), "--arch", "e2e_scan_nets:NaNWhileOptimised",
                   "--input-shape", "3,16,16", "--clean", str(root / "clean.pt"), "--steps", "1", "--out", str(out),
                   "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert err.startswith("captum-global scan: error: scan_for_backdoor: the model returned NaN or infinity")
    assert len(err.strip().splitlines()) == 1 and not (out / "scan.json").exists()


def test_progress_goes_to_stderr_and_quiet_silences_only_it(user, tmp_path, capsys):
    root, _, _ = user
    base = ["scan", "--model", str(root / "net.safetensors"), "--arch", "e2e_scan_nets:net",
            "--input-shape", "3,16,16", "--clean", str(root / "clean.pt"), "--method", "both", "--steps", "1"]
    assert main(base + ["--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "scan_for_backdoor (schedule rounds)" in loud.err and "Neural Cleanse" in loud.err
    assert main(base + ["--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert re.sub(r"report written to \S+:", "", loud.out) == re.sub(r"report written to \S+:", "", quiet.out)
    shutil.rmtree(tmp_path / "loud")
