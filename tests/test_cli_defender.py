"""``captum-global scan`` (and ``explain``) as a defender runs them on their own model, making the
mistakes a real user makes: model files that are damaged, of the wrong kind or a pickled module,
entry points that cannot build the model, models that break only in a batch or with gradients,
clean samples of the wrong dtype or with a damaged image, report folders that cannot be written,
Ctrl-C in the middle of a scan. Each mistake ends with exit status 2 and one line that names the
argument (never a traceback), before any folder is made; the printed table and scan.json agree.

What tests/test_cli.py, test_cli_scan_end_to_end.py, test_cli_loading_contract.py,
test_user_errors.py and test_loading.py already check is not repeated here.
"""
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_global.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from _cli_errors import usage_error  # noqa: E402

torch.set_num_threads(1)

_NETS = '''
from pathlib import Path

import torch
from torch import nn


def net(num_classes=4, channels=3):
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, num_classes))


def grey(num_classes=4):
    return net(num_classes, channels=1)


def fixed():
    """An entry point that fixes its class count (4): it takes no num_classes."""
    return net(4)


def not_a_module(num_classes=4):
    return {"conv": 1}


def nothing(num_classes=4):
    return None


NOT_CALLABLE = 3


class _Wrapped(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.body = net(num_classes)


class BatchOfOne(_Wrapped):
    """Written for one image at a time: folds its batch into one row."""
    def forward(self, x):
        return self.body(x).view(1, -1)


class InferenceOnly(_Wrapped):
    """Fine when loaded and probed (no gradient); refuses to run with gradients."""
    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("this model supports inference only")
        return self.body(x)


class NoGradInside(_Wrapped):
    """Runs its forward under torch.no_grad(): the scores carry no gradient."""
    def forward(self, x):
        with torch.no_grad():
            return self.body(x)


class Spy(_Wrapped):
    """Saved whole with torch.save(model): unpickling it would write the marker file."""
    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)

    def forward(self, x):
        return self.body(x)

    def __setstate__(self, state):
        Path(state["marker"]).write_text("unpickled")
        super().__setstate__(state)
'''
SHAPE = "3,16,16"


@pytest.fixture(scope="module")
def defender(tmp_path_factory):
    """A defender's own code and files: state dicts, TorchScript, damaged copies, clean samples."""
    root = tmp_path_factory.mktemp("defender files")
    (root / "defender_nets.py").write_text(_NETS)
    sys.path.insert(0, str(root))
    import defender_nets

    torch.manual_seed(0)
    model = defender_nets.net().eval()
    save_file(model.state_dict(), str(root / "net.safetensors"))
    torch.save(model.state_dict(), root / "net.pt")
    with pytest.warns(FutureWarning):
        torch.jit.script(model).save(str(root / "net.ts"))
    for name in ("net.safetensors", "net.pt", "net.ts"):  # a download or copy that stopped half-way
        data = (root / name).read_bytes()
        (root / f"cut_{name}").write_bytes(data[: len(data) // 2])
    torch.save(defender_nets.Spy(root / "unpickled"), root / "whole_model.pt")
    for arch in ("BatchOfOne", "InferenceOnly", "NoGradInside", "grey"):
        torch.manual_seed(0)
        save_file(getattr(defender_nets, arch)().state_dict(), str(root / f"{arch}.safetensors"))
    torch.save(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)), root / "clean.pt")
    rng = np.random.default_rng(0)
    (root / "photos").mkdir()  # colour photos of different sizes
    for i, (h, w) in enumerate([(16, 16), (20, 30), (40, 24)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "photos" / f"{i}.jpg")
    (root / "damaged").mkdir()  # one good image, one that is not a PNG at all
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "damaged" / "a.png")
    (root / "damaged" / "b.png").write_bytes(b"an HTML error page saved as b.png")
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("defender_nets", None)


def _at(root: Path, argv):
    return [str(root / a[1:]) if a.startswith("@") else a for a in argv]


def _refused(root, argv, capsys, command="scan"):
    """A usage error of ``command`` that makes no report folder; returns the error line."""
    out = Path(tempfile.mkdtemp(dir=root)) / "never"  # one per call: a run that was not refused harms no other
    err = usage_error([command, *_at(root, argv), "--out", str(out), "--quiet"], capsys)
    assert not out.exists()
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"captum-global {command}: error: "), err
    return lines[-1]


MODEL = ["--model", "@net.safetensors", "--arch", "defender_nets:net", "--input-shape", SHAPE]

# (id, argv, what the error line says)
MODEL_FILES = [
    ("cut safetensors", ["--model", "@cut_net.safetensors", "--arch", "defender_nets:net", "--input-shape", SHAPE],
     "--model: '{root}/cut_net.safetensors' is not a readable safetensors file"),
    ("cut torch.save", ["--model", "@cut_net.pt", "--arch", "defender_nets:net", "--input-shape", SHAPE],
     "--model: '{root}/cut_net.pt' is a damaged or truncated zip archive"),
    ("cut TorchScript", ["--model", "@cut_net.ts", "--input-shape", SHAPE],
     "--model: '{root}/cut_net.ts' is a damaged or truncated zip archive"),
    ("a folder", ["--model", "@photos", "--arch", "defender_nets:net", "--input-shape", SHAPE],
     "argument --model: '{root}/photos' is a folder; give the file in it"),
    ("TorchScript as clean samples", MODEL + ["--clean", "@net.ts"],
     "--clean: '{root}/net.ts' is a TorchScript model, not a file of tensors"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in MODEL_FILES], ids=[c[0] for c in MODEL_FILES])
def test_damaged_or_misplaced_files_are_named_for_what_they_are(defender, capsys, argv, message):
    line = _refused(defender, argv, capsys)
    assert message.format(root=defender) in line
    assert "unpickles" not in line  # damage is not a refused pickle: no advice on how to save a model


def test_a_whole_pickled_model_is_refused_with_the_way_out_and_never_unpickled(defender, capsys):
    line = _refused(defender, ["--model", "@whole_model.pt", "--arch", "defender_nets:net", "--input-shape", SHAPE],
                    capsys)
    assert line.startswith(f"captum-global scan: error: --model: {str(defender / 'whole_model.pt')!r} cannot be "
                           "read with torch.load(weights_only=True) (Unsupported global:")
    assert "torch.save(model.state_dict(), path)" in line and "torch.jit.save" in line
    assert not (defender / "unpickled").exists()


ENTRY_POINTS = [
    ("no such attribute", "defender_nets:Nett", [],
     "--arch 'defender_nets:Nett': module 'defender_nets' has no attribute 'Nett'"),
    ("returns a dict", "defender_nets:not_a_module", [],
     "--arch 'defender_nets:not_a_module' returned a dict, not an nn.Module"),
    ("returns None", "defender_nets:nothing", [], "--arch 'defender_nets:nothing' returned a NoneType, not an nn.Module"),
    ("not callable", "defender_nets:NOT_CALLABLE", [], "--arch 'defender_nets:NOT_CALLABLE' names a int, not a callable"),
    ("fixed class count", "defender_nets:fixed", ["--num-classes", "5"],
     "--num-classes 5 but the model from '{root}/net.safetensors' returns 4 scores"),
    ("torchvision typo", "resnet_18", [], "argument --arch: 'resnet_18' is not 'vgg', 'resnet', a torchvision "
                                          "classification model (did you mean ['resnet18'"),
    ("reversed value range", "defender_nets:net", ["--value-range", "255,0"],
     "--value-range must have low < high, got (255.0, 0.0)"),
]


@pytest.mark.parametrize("arch, extra, message", [c[1:] for c in ENTRY_POINTS], ids=[c[0] for c in ENTRY_POINTS])
def test_an_architecture_that_cannot_build_the_model(defender, capsys, arch, extra, message):
    argv = ["--model", "@net.safetensors", "--arch", arch, "--input-shape", SHAPE, *extra]
    assert message.format(root=defender) in _refused(defender, argv, capsys)


@pytest.mark.parametrize("command", ["scan", "explain"])
def test_a_torchscript_model_that_fails_gives_its_reason_not_the_interpreter_header(defender, capsys, command):
    extra = ["--method", "Saliency", "--images", "@clean.pt"] if command == "explain" else []
    line = _refused(defender, ["--model", "@net.ts", "--input-shape", "1,16,16", *extra], capsys, command)
    assert f"--input-shape: the model from {str(defender / 'net.ts')!r} does not run on inputs of shape " \
           "(1, 1, 16, 16): RuntimeError: Given groups=1, weight of size [4, 3, 3, 3], expected input[1, 1, 16, 16] " \
           "to have 3 channels" in line
    assert "TorchScript interpreter" not in line


BROKEN_MODELS = [
    ("batch of one", "scan", "BatchOfOne",
     "--model: the model from '{root}/BatchOfOne.safetensors' returns (1, 8) for a batch of 2 inputs; it must "
     "return one row of scores per input, (2, 4) (does its forward fix the batch size, such as x.view(1, -1)?)"),
    # explain used to finish with exit status 0, each example explained with the scores of the whole batch
    ("batch of one, explain", "explain", "BatchOfOne", "returns (1, 8) for a batch of 2 inputs"),
    ("inference only", "scan", "InferenceOnly",
     "--model: the model fails when the scan runs it with gradients on inputs of shape (2, 3, 16, 16): "
     "RuntimeError: this model supports inference only"),
    # the scan used to report (and flag) triggers it could never optimise, with exit status 0
    ("no gradient", "scan", "NoGradInside",
     "--model: the model's scores do not depend on its input through autograd (does its forward run under "
     "torch.no_grad() or detach a tensor?)"),
]


@pytest.mark.parametrize("command, arch, message", [c[1:] for c in BROKEN_MODELS], ids=[c[0] for c in BROKEN_MODELS])
def test_a_model_that_breaks_in_a_batch_or_with_gradients_is_refused_before_any_work(defender, capsys, command,
                                                                                       arch, message):
    model = ["--model", f"@{arch}.safetensors", "--arch", f"defender_nets:{arch}", "--input-shape", SHAPE]
    extra = ["--method", "Saliency", "--images", "@clean.pt"] if command == "explain" else \
        ["--clean", "@clean.pt", "--method", "both", "--steps", "1"]
    assert message.format(root=defender) in _refused(defender, model + extra, capsys, command)


@pytest.mark.parametrize("dtype, message", [
    (torch.uint8, "holds uint8 values; it must hold floating-point images in [0, 1]; divide 8-bit images by 255"),
    (torch.int64, "holds int64 values; it must hold floating-point images in [0, 1]"),
    (torch.bool, "holds bool values; it must hold floating-point images in [0, 1]"),  # used to pass as 0.0 / 1.0
    (torch.complex64, "holds complex64 values; it must hold floating-point images in [0, 1]"),  # used to pass
])
@pytest.mark.parametrize("command", ["scan", "explain"])
def test_clean_samples_that_are_not_floating_point_are_refused(defender, tmp_path, capsys, dtype, message, command):
    pixels = torch.randint(0, 2 if dtype in (torch.bool, torch.int64) else 256, (3, 3, 16, 16))
    torch.save(pixels.to(dtype), tmp_path / "clean.pt")
    option = "--clean" if command == "scan" else "--images"
    extra = ["--steps", "1"] if command == "scan" else ["--method", "Saliency"]
    line = _refused(defender, MODEL + extra + [option, str(tmp_path / "clean.pt")], capsys, command)
    assert line.endswith(f"error: {option} {message}")


CLEAN_MISTAKES = [
    ("a damaged image", "@damaged", "--clean: cannot read '{root}/damaged/b.png': cannot identify image file"),
    ("NaN", "NAN", "--clean holds NaN or infinite values; it must hold finite images in [0, 1]"),
]


@pytest.mark.parametrize("clean, message", [c[1:] for c in CLEAN_MISTAKES], ids=[c[0] for c in CLEAN_MISTAKES])
def test_clean_samples_a_scan_cannot_use(defender, tmp_path, capsys, clean, message):
    nan = torch.rand(3, 3, 16, 16)
    nan[2, 1, 5, 5] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    clean = str(tmp_path / "nan.pt") if clean == "NAN" else clean
    assert message.format(root=defender) in _refused(defender, MODEL + ["--clean", clean], capsys)


def test_colour_photos_of_any_size_for_a_grey_model(defender, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["scan", *_at(defender, ["--model", "@grey.safetensors", "--arch", "defender_nets:grey",
                                         "--input-shape", "1,16,16", "--clean", "@photos"]),
                 "--steps", "1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    report = json.loads((out / "scan.json").read_text())
    assert report["settings"]["clean_samples"] == 3 and report["model"]["input_shape"] == [1, 16, 16]


def _unwritable(kind: str, tmp_path: Path) -> Path:
    if kind == "special file system":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc")
        return Path("/proc/no such folder/report")
    if getattr(os, "geteuid", lambda: 1)() == 0:
        pytest.skip("root writes into folders without write permission")
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    return parent / "report"


@pytest.mark.parametrize("kind", ["special file system", "parent without write permission"])
@pytest.mark.parametrize("command", ["scan", "explain", "demo"])
def test_a_report_folder_that_cannot_be_made_is_a_usage_error(defender, tmp_path, capsys, kind, command):
    out = _unwritable(kind, tmp_path)
    argv = {"scan": ["scan", *MODEL, "--steps", "1", "--quiet"], "demo": ["demo", "--quick", "--no-photos"],
            "explain": ["explain", "--method", "Saliency", *MODEL, "--images", "@clean.pt", "--quiet"]}[command]
    try:
        err = usage_error(_at(defender, argv) + ["--out", str(out)], capsys)
    finally:
        if out.parent.name == "read-only":
            out.parent.chmod(0o755)
    option = "--out:" if command == "explain" else "--out"
    assert f"error: {option} {str(out)!r} cannot be made or written: " in err
    assert not out.exists()


def test_an_existing_folder_that_cannot_be_written_is_refused_before_the_scan(defender, capsys, monkeypatch):
    import captum_global.backdoor

    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    ran = []
    monkeypatch.setattr(captum_global.backdoor, "scan_for_backdoor", lambda *a, **k: ran.append(1))
    # exists and is not empty: refused without --force; with it, refused before minutes of work
    assert "exists and is not empty; pass --force" in usage_error(
        ["scan", *_at(defender, MODEL), "--out", "/proc/self", "--quiet"], capsys)
    err = usage_error(["scan", *_at(defender, MODEL), "--out", "/proc/self", "--force", "--quiet"], capsys)
    assert "error: --out '/proc/self' cannot be made or written: " in err and not ran


def test_ctrl_c_during_the_scan_exits_130_with_one_line(defender, tmp_path, capsys, monkeypatch):
    import captum_global.backdoor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(captum_global.backdoor, "scan_for_backdoor", interrupted)
    out = tmp_path / "report"
    assert main(["scan", *_at(defender, MODEL), "--steps", "1", "--out", str(out), "--quiet"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "captum-global scan: interrupted\n" and not (out / "scan.json").exists()


def _tables(printed: str):
    """``{method: (header line, column names, rows)}`` of the per-class tables the scan printed."""
    tables = {}
    for method, body in re.findall(r"^== (\S+) ==\n(.*?)(?=^== |^report written)", printed, re.M | re.S):
        lines = body.strip().splitlines()
        tables[method] = (lines[0], lines[1].split(), [line.split() for line in lines[2:]])
    return tables


def test_the_printed_table_and_scan_json_agree_for_a_reference_model(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["scan", "--reference", "resnet_patch", "--method", "both", "--steps", "1", "--max-clean", "6",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "scan.json").read_text())
    tables = _tables(printed)
    assert list(tables) == list(report["methods"]) == ["ours", "neural-cleanse"]
    for method, (first, columns, rows) in tables.items():
        scan = report["methods"][method]
        flagged = f"flagged {scan['flagged']}" if scan["flagged"] else "no class flagged"
        assert first == f"{scan['method']}: {flagged} (threshold {scan['threshold']:g}; suspect {scan['suspect']})"
        assert [int(row[0]) for row in rows] == scan["classes"] == [0, 1, 2, 3, 4]
        assert [c for c, row in zip(scan["classes"], rows) if row[-1] == "FLAGGED"] == scan["flagged"]
        values = {**scan["statistics"], "anomaly": scan["anomaly_index"], "success": scan["attack_success"],
                  **scan["localisation"]}
        assert columns == ["class", *values, "flag"]
        for k, row in enumerate(rows):
            for name, cell in zip(values, row[1:]):
                # statistics printed with 4 significant digits, the rest with 2 decimals
                tolerance = 5e-4 * abs(values[name][k]) if name in scan["statistics"] else 5.1e-3
                assert abs(float(cell) - values[name][k]) <= tolerance, (method, name, k)
        for kind in ("maps", "trigger"):  # a picture per class, and the suspected trigger
            with Image.open(out / f"{kind}_{method}.png") as image:
                assert image.format == "PNG" and min(image.size) > 100
