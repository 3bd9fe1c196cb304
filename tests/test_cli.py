"""The command line: help, exit status 2 with a usage message for every user mistake, --force,
the scan of reference and user models, the explain command (also resumed and under torchrun)."""
import builtins
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from captum_global.cli import build_parser, main
from captum_global.explain import read_explanations
from captum_global.loading import load_tensor

sys.path.insert(0, os.path.dirname(__file__))
from _processes import outputs_of  # noqa: E402
from _cli_errors import usage_error  # noqa: E402


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The shipped backdoored VGG as a user would hand it in, clean images, an image folder, a bad pickle."""
    from captum_global.world import load_reference_model, make_dataset

    root = tmp_path_factory.mktemp("user")
    model = load_reference_model("vgg", "patch")
    save_file(model.state_dict(), str(root / "vgg_patch.safetensors"))
    torch.save(model.state_dict(), root / "vgg_patch.pt")
    data = make_dataset(6, seed=99)
    save_file({"images": data.images}, str(root / "clean.safetensors"))
    (root / "imgs").mkdir()
    for i, image in enumerate(data.images):
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(root / "imgs" / f"{i:02d}.png")
    (root / "labels.csv").write_text("".join(f"{i:02d}.png,{int(y)}\n" for i, y in enumerate(data.labels)))

    class RunsCodeOnLoad:
        def __reduce__(self):
            return (builtins.exec, (f"open({str(root / 'pwned')!r}, 'w').write('x')",))

    torch.save({"features.block1.conv1.weight": RunsCodeOnLoad()}, root / "evil.pt")
    return root


@pytest.mark.parametrize("command", [[], ["demo"], ["scan"], ["layers"], ["explain"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: captum-global" in capsys.readouterr().out


def test_layers_lists_one_layer_per_block(capsys):
    assert main(["layers", "resnet18", "--size", "64"]) == 0
    assert capsys.readouterr().out.split() == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert main(["layers", "vgg"]) == 0
    assert capsys.readouterr().out.split() == [f"features.block{i}.relu2" for i in range(1, 5)]


BAD_ARGUMENTS = [
    (["demo", "--images", "-1"], "argument --images: must be between 1 and 5, got -1"),
    (["demo", "--images", "0"], "argument --images: must be between 1 and 5, got 0"),
    (["demo", "--images", "two"], "argument --images: expected a whole number"),
    (["demo", "--archs", "vgg,alexnet"], "argument --archs: expected comma-separated names"),
    (["demo", "--methods", "NoSuchMethod"], "argument --methods: expected comma-separated names"),
    (["layers", "resnet18", "--size", "0"], "argument --size: must be between 8 and 4096"),
    (["layers", "resnet18", "--size", "100000"], "the layer choice does not depend on the size"),
    (["layers", "resnet81"], "did you mean ['resnet18'"),
    (["layers", "foo:bar:baz"], "nor 'package.module:callable'"),
    (["scan", "--steps", "0"], "argument --steps: must be between 1 and 100000, got 0"),
    (["scan", "--threshold", "nan"], "argument --threshold: must be finite"),
    (["scan", "--threshold", "-1"], "argument --threshold: must be > 0"),
    (["scan", "--classes", "1,1,2"], "argument --classes: expected distinct"),
    (["scan", "--arch", "vgg16"], "--arch vgg16 without --model"),
    (["scan", "--input-shape", "3,64"], "argument --input-shape: expected C,H,W"),
    (["scan", "--input-shape", "3,64,64"], "--input-shape describe your own model"),
    (["scan", "--model", "no/such/file.pt"], "argument --model: no such file"),
    (["scan", "--reference", "vgg_nosuch"], "--reference 'vgg_nosuch' is not a shipped reference model; known: ["),
    (["scan", "--reference", "vgg_patch", "--variant", "clean"], "leave out --arch and --variant"),
    (["scan", "--mean", "0.5,abc"], "argument --mean: expected a number"),
    (["explain", "--method", "sise", "--images", "no/such/dir", "--out", "x"], "argument --images: no such file"),
    (["explain", "--method", "sise", "--images", ".", "--out", "x", "--method-args", "[1]"],
     "argument --method-args: expected a JSON object"),
    (["explain", "--method", "sise", "--images", ".", "--out", "x", "--target", "-2"], "argument --target"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_end_with_usage_and_status_2(argv, message, capsys):
    assert message in usage_error(argv, capsys)


def test_errors_found_after_parsing_end_the_same_way(user_files, tmp_path, capsys):
    model = str(user_files / "vgg_patch.safetensors")
    cases = [
        (["scan", "--model", model, "--arch", "vgg", "--num-classes", "5"], "--input-shape C,H,W is required"),
        (["scan", "--model", model, "--arch", "resnet", "--input-shape", "3,64,64"], "do not fit --arch 'resnet'"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "3,64,64", "--num-classes", "7"],
         "fc.weight: file (5, 64) vs model (7, 64)"),
        (["scan", "--model", model, "--arch", "no_such_pkg.models:Net", "--input-shape", "3,64,64"],
         "cannot import module 'no_such_pkg.models'"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "3,64,64", "--classes", "0,1"],
         "--classes needs at least 3"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "3,64,64", "--method", "neural-cleanse",
          "--out", str(tmp_path / "nc")], "neural-cleanse"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "1,64,64"], "does not run on inputs"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "3,64,64", "--variant", "patch"],
         "--variant chooses a reference model"),
        (["scan", "--model", model, "--arch", "vgg", "--input-shape", "3,64,64", "--reference", "vgg_patch"],
         "--reference and --model both name a model"),
        (["explain", "--method", "Occlusion", "--images", str(user_files / "clean.safetensors"),
          "--out", str(tmp_path / "occ")], "needs ['sliding_window_shapes']"),
        (["explain", "--method", "NoSuchMethod", "--images", str(user_files / "imgs"), "--out", str(tmp_path / "n")],
         "not a known attribution"),
        (["explain", "--method", "saliency", "--images", str(user_files / "imgs"), "--out", str(tmp_path / "t"),
          "--target", "9"], "target 9"),
        (["explain", "--method", "saliency", "--images", str(user_files / "imgs"), "--out", str(tmp_path / "l"),
          "--target", "labels"], "--target labels needs --labels"),
    ]
    for argv, message in cases:
        assert message in usage_error(argv, capsys), argv


def test_malicious_pickle_is_refused_by_the_command(user_files, tmp_path, capsys):
    err = usage_error(["scan", "--model", str(user_files / "evil.pt"), "--arch", "vgg", "--input-shape", "3,64,64",
                       "--out", str(tmp_path / "r")], capsys)
    assert "never unpickles arbitrary Python objects" in err
    assert not (user_files / "pwned").exists() and not (tmp_path / "r").exists()


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "captum_global", "demo", "--images", "0"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "usage: captum-global demo" in done.stderr and "must be between 1 and 5" in done.stderr


def test_output_folders_need_force(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "scan.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    err = usage_error(["scan", "--steps", "1", "--out", str(out)], capsys)
    assert "exists and is not empty; pass --force" in err and (out / "scan.json").read_text() == "{}"
    err = usage_error(["demo", "--out", str(out), "--archs", "vgg", "--no-photos"], capsys)
    assert "pass --force" in err
    assert main(["scan", "--classes", "0,1,2", "--steps", "1", "--out", str(out), "--force", "--quiet"]) == 0
    assert json.loads((out / "scan.json").read_text())["methods"]["ours"]["classes"] == [0, 1, 2]
    assert (out / "notes.txt").read_text() == "mine"  # --force removes only the report's own files


def test_scan_a_reference_model_by_name(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["scan", "--arch", "vgg", "--variant", "patch", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "== ours ==" in printed and all(name in printed for name in ("disk", "square", "triangle", "cross", "ring"))
    assert sorted(p.name for p in out.iterdir()) == ["maps_ours.png", "scan.json", "trigger_ours.png"]
    report = json.loads((out / "scan.json").read_text())
    assert report["model"] == {"reference": "vgg_patch"}
    scan = report["methods"]["ours"]
    assert scan["classes"] == [0, 1, 2, 3, 4] and len(scan["anomaly_index"]) == 5
    assert report["settings"]["steps"] == 2
    assert (out / "maps_ours.png").stat().st_size > 5_000 and (out / "trigger_ours.png").stat().st_size > 2_000


def test_scan_by_reference_name_reports_the_planted_trigger(tmp_path, capsys):
    out = tmp_path / "blended"
    assert main(["scan", "--reference", "resnet_blended", "--classes", "0,1,2", "--steps", "1", "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    report = json.loads((out / "scan.json").read_text())
    assert report["model"] == {"reference": "resnet_blended"}
    # the planted trigger's region reached the scan: it reports each class's overlap with it
    localisation = report["methods"]["ours"]["localisation"]
    assert set(localisation) == {"energy_share", "iou"} and all(len(v) == 3 for v in localisation.values())
    assert all(0 <= v <= 1 for values in localisation.values() for v in values)


def test_scan_with_both_methods(tmp_path, capsys):
    out = tmp_path / "both"
    argv = ["scan", "--reference", "vgg_patch", "--method", "both", "--classes", "0,1,4", "--steps", "1",
            "--max-clean", "12", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "== ours ==" in printed and "== neural-cleanse ==" in printed
    assert sorted(p.name for p in out.iterdir()) == ["maps_neural-cleanse.png", "maps_ours.png", "scan.json",
                                                     "trigger_neural-cleanse.png", "trigger_ours.png"]
    report = json.loads((out / "scan.json").read_text())
    assert set(report["methods"]) == {"ours", "neural-cleanse"} and report["settings"]["clean_samples"] == 12
    assert all(m["classes"] == [0, 1, 4] for m in report["methods"].values())
    # --steps is each method's own length: optimisation steps of ours, epochs of Neural Cleanse
    assert report["methods"]["ours"]["settings"]["n_steps"] == 1
    assert report["methods"]["neural-cleanse"]["settings"]["n_epochs"] == 1


def test_scan_a_user_state_dict_with_clean_samples(user_files, tmp_path, capsys):
    out = tmp_path / "user"
    argv = ["scan", "--model", str(user_files / "vgg_patch.pt"), "--arch", "captum_global.world.models:SmallVGG",
            "--num-classes", "5", "--input-shape", "3,64,64", "--clean", str(user_files / "imgs"),
            "--steps", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "scan.json").read_text())
    assert report["model"]["file"] == "vgg_patch.pt" and report["settings"]["clean_samples"] == 6
    printed = capsys.readouterr().out
    assert "== ours ==" in printed and "classes:" not in printed  # no class names for a user model
    assert all(re.search(rf"^\s*{c}\s", printed, re.M) for c in range(5))  # a table row per class


def test_explain_command_folder_labels_resume_and_force(user_files, tmp_path, capsys):
    out = tmp_path / "maps"
    argv = ["explain", "--method", "saliency", "--images", str(user_files / "imgs"), "--labels",
            str(user_files / "labels.csv"), "--out", str(out), "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    result = read_explanations(out)
    assert result.names == [f"{i:02d}.png" for i in range(6)] and result.num_shards == 2
    labels = [int(line.split(",")[1]) for line in (user_files / "labels.csv").read_text().splitlines()]
    assert result.targets.tolist() == labels
    before = (out / "shard-00000.safetensors").stat().st_mtime_ns
    (out / "shard-00001.safetensors").unlink()  # as if interrupted before the last shard
    assert main(argv) == 0  # the same command resumes
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == before
    assert torch.equal(read_explanations(out).maps(), result.maps())
    other = argv[:2] + ["InputXGradient"] + argv[3:]
    assert "--force on the command line" in usage_error(other, capsys)
    assert main(other + ["--force"]) == 0 and read_explanations(out).method == "InputXGradient"


def test_explain_a_user_torchscript_model_on_a_tensor_file(user_files, tmp_path, capsys):
    from captum.attr import IntegratedGradients

    from captum_global.world import load_reference_model

    path, net = tmp_path / "vgg.pt", load_reference_model("vgg", "clean")
    with pytest.warns(FutureWarning):
        torch.jit.trace(net, torch.rand(1, 3, 64, 64)).save(str(path))
    out, clean = tmp_path / "ig", user_files / "clean.safetensors"
    assert main(["explain", "--method", "IntegratedGradients", "--method-args", '{"n_steps": 4}', "--model", str(path),
                 "--input-shape", "3,64,64", "--images", str(clean), "--out", str(out), "--quiet"]) == 0
    result, x = read_explanations(out), load_tensor(clean)
    expected = IntegratedGradients(net).attribute(x, target=net(x).argmax(1), n_steps=4)
    assert torch.allclose(result.maps(), expected, atol=1e-5)
    err = usage_error(["explain", "--method", "LayerGradCam", "--model", str(path), "--input-shape", "3,64,64",
                       "--images", str(clean), "--out", str(tmp_path / "gc")], capsys)
    assert "TorchScript models do not support" in err


def test_a_model_returning_nan_ends_with_status_1_and_one_line(user_files, tmp_path, capsys, monkeypatch):
    (tmp_path / "nan_models.py").write_text(
        "import torch\n\n"
        "class NanNet(torch.nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.mean((2, 3))) * float('nan')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    save_file({"fc.weight": torch.ones(3, 3), "fc.bias": torch.zeros(3)}, str(tmp_path / "nan.safetensors"))
    status = main(["explain", "--method", "saliency", "--model", str(tmp_path / "nan.safetensors"), "--arch",
                   "nan_models:NanNet", "--input-shape", "3,64,64", "--images", str(user_files / "imgs"),
                   "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("captum-global explain: error:") and "NaN or infinity" in err
    assert "Traceback" not in err and not list((tmp_path / "out").glob("shard-*"))


def test_explain_interrupted_by_ctrl_c_resumes(user_files, tmp_path, capsys, monkeypatch):
    (tmp_path / "flaky_models.py").write_text(
        "import torch\n\n"
        "CALLS = {'left': None}\n\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes=5):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        if CALLS['left'] is not None:\n"
        "            CALLS['left'] -= 1\n"
        "            if CALLS['left'] < 0:\n"
        "                raise KeyboardInterrupt  # Ctrl-C in the middle of the run\n"
        "        return self.fc(x.mean((2, 3)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import flaky_models

    torch.manual_seed(0)
    save_file({f"fc.{k}": v for k, v in torch.nn.Linear(3, 5).state_dict().items()}, str(tmp_path / "w.safetensors"))
    argv = ["explain", "--method", "saliency", "--model", str(tmp_path / "w.safetensors"), "--arch",
            "flaky_models:Net", "--input-shape", "3,64,64", "--images", str(user_files / "imgs"),
            "--batch-size", "2", "--quiet"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    # load check, gradient check (saliency needs them), set-up, then two passes per shard: stops in shard 1
    flaky_models.CALLS["left"] = 6
    assert main(argv + ["--out", str(tmp_path / "cut")]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "cut").glob("shard-*")] == ["shard-00000.safetensors"]
    flaky_models.CALLS["left"] = None
    assert main(argv + ["--out", str(tmp_path / "cut")]) == 0
    for name in ["index.json"] + [f"shard-0000{k}.safetensors" for k in range(3)]:
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_explain_under_two_torchrun_style_processes(user_files, tmp_path):
    base = ["explain", "--method", "saliency", "--images", str(user_files / "imgs"), "--batch-size", "2", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    port = str(_free_port())
    procs = []
    for rank in range(2):  # the environment torchrun gives each process
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-m", "captum_global"] + base + ["--out", str(tmp_path / "two")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = outputs_of(procs)
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "6 maps (Saliency) in 3 shard(s)" in logs[0] and "maps" not in logs[1]  # rank 0 reports
    for name in ["index.json"] + [f"shard-0000{k}.safetensors" for k in range(3)]:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_small_demo_writes_pictures_and_table(tmp_path):
    args = build_parser().parse_args(
        ["demo", "--out", str(tmp_path), "--archs", "vgg", "--images", "2", "--quick", "--no-photos",
         "--methods", "SISE,Grad-CAM"]
    )
    assert args.methods == ["SISE", "Grad-CAM"]
    main(["demo", "--out", str(tmp_path), "--archs", "vgg", "--images", "2", "--quick", "--no-photos",
          "--methods", "SISE,Grad-CAM"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"gallery_vgg.png", "sise_blocks_vgg.png", "metrics.json", "metrics.md", "classwise_vgg.png",
            "backdoor_vgg_patch.png", "backdoor_vgg_blended.png"} <= names
    summary = json.loads((tmp_path / "metrics.json").read_text())
    methods = {row["method"] for row in summary["explanations"]}
    assert methods == {"SISE", "Grad-CAM"}
    for row in summary["explanations"]:
        assert 0.0 <= row["EBPG"] <= 1.0 and row["seconds_per_image"] > 0
    assert (tmp_path / "gallery_vgg.png").stat().st_size > 10_000


# ---- found by an adversarial sweep: user mistakes that used to end in a traceback ----

_USER_CODE = '''
import torch
from torch import nn


def grey(num_classes=3):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def colour(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


def needs_width(width):
    return colour()


def broken(num_classes=3):
    raise ValueError("bug in the user's code")


class FixedSize(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = colour()

    def forward(self, x):
        torch._assert(x.shape[-1] == 224, "Wrong image size! Expected 224")
        return self.net(x)
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of the user's own architectures on the Python path, and a state dict of ``colour``."""
    (tmp_path / "sweep_user_nets.py").write_text(_USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("sweep_user_nets")
    torch.manual_seed(0)
    save_file(module.colour().state_dict(), str(tmp_path / "colour.safetensors"))
    yield tmp_path
    sys.modules.pop("sweep_user_nets", None)


def test_an_entry_point_that_fails_when_called_is_a_usage_error(user_code, capsys):
    weights = str(user_code / "colour.safetensors")
    for arch, message in (("sweep_user_nets:needs_width", "missing 1 required positional argument: 'width'"),
                          ("sweep_user_nets:broken", "ValueError: bug in the user's code")):
        err = usage_error(["layers", arch], capsys)
        assert f"error: model {arch!r}: calling it failed" in err and message in err  # the positional argument
        err = usage_error(["scan", "--model", weights, "--arch", arch, "--input-shape", "3,16,16",
                           "--out", str(user_code / "out")], capsys)
        assert "calling it failed" in err and message in err
    assert not (user_code / "out").exists()


def test_layers_of_a_grey_or_fixed_size_model(user_code, capsys):
    err = usage_error(["layers", "sweep_user_nets:grey"], capsys)
    assert "does not run on a 3x64x64 input" in err and "--channels" in err
    assert main(["layers", "sweep_user_nets:grey", "--channels", "1", "--size", "16"]) == 0
    assert capsys.readouterr().out.split()  # one layer per block
    # an AssertionError of the model (torchvision's ViT checks its input size so) is a usage error too
    err = usage_error(["layers", "sweep_user_nets:FixedSize"], capsys)
    assert "does not run on a 3x64x64 input (Wrong image size! Expected 224)" in err
    assert "argument --channels: must be between 1 and 64, got 0" in usage_error(
        ["layers", "vgg", "--channels", "0"], capsys)


def test_lists_that_start_with_a_negative_number_are_values(capsys):
    parser = build_parser()
    args = parser.parse_args(["scan", "--value-range", "-1,1", "--mean", "-0.5,0,0.5", "--std", "1e-1"])
    assert args.value_range == [-1.0, 1.0] and args.mean == [-0.5, 0.0, 0.5]
    assert "argument --threshold: must be finite, got -inf" in usage_error(["scan", "--threshold", "-inf"], capsys)
    assert "argument --classes: must be >= 0, got -1" in usage_error(["scan", "--classes", "-1,0,1"], capsys)
    assert "argument --target: must be >= 0, got -3" in usage_error(
        ["explain", "--method", "saliency", "--images", ".", "--out", "x", "--target", "-3"], capsys)


def test_user_model_with_a_negative_value_range_scans(user_code, tmp_path, capsys):
    out = tmp_path / "scan"
    argv = ["scan", "--model", str(user_code / "colour.safetensors"), "--arch", "sweep_user_nets:colour",
            "--input-shape", "3,16,16", "--value-range", "-1,1", "--steps", "1", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert json.loads((out / "scan.json").read_text())["model"]["value_range"] == [-1.0, 1.0]


def test_a_pickle_named_safetensors_is_refused_and_never_runs(user_files, tmp_path, capsys):
    # torch.load hands a '.safetensors' name to safetensors, whose error used to escape as a traceback
    disguised = tmp_path / "weights.safetensors"
    disguised.write_bytes((user_files / "evil.pt").read_bytes())
    import pickle

    class RunsCodeOnLoad:
        def __reduce__(self):
            return (builtins.exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",))

    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps(RunsCodeOnLoad()))
    for path in (disguised, plain):
        err = usage_error(["scan", "--model", str(path), "--arch", "vgg", "--input-shape", "3,64,64",
                           "--out", str(tmp_path / "r")], capsys)
        assert "never unpickles arbitrary Python objects" in err
    assert not (tmp_path / "pwned").exists() and not (user_files / "pwned").exists()


def test_method_args_the_method_refuses_are_usage_errors(user_files, tmp_path, capsys):
    images = str(user_files / "clean.safetensors")
    base = ["explain", "--images", images, "--quiet"]
    err = usage_error(base + ["--method", "Saliency", "--method-args", '{"bogus": 1}', "--out", str(tmp_path / "a")],
                      capsys)
    assert "attribute_kwargs ['bogus'] (--method-args on the command line): Saliency.attribute does not take it" in err
    assert "'abs'" in err and not (tmp_path / "a").exists()  # refused before the folder is made
    err = usage_error(base + ["--method", "IntegratedGradients", "--method-args", '{"n_steps": 0}',
                              "--out", str(tmp_path / "b")], capsys)
    assert "attribute_kwargs {'n_steps': 0}" in err and "larger than zero" in err
    err = usage_error(base + ["--method", "IntegratedGradients", "--method-args", '{"n_steps": "x"}',
                              "--out", str(tmp_path / "c")], capsys)
    assert "attribute_kwargs {'n_steps': 'x'}" in err and "TypeError" in err
    err = usage_error(base + ["--method", "Saliency", "--method-args", '{"target": 1}', "--out", str(tmp_path / "d")],
                      capsys)
    assert "must not set ['target']" in err


def test_bad_tensor_and_label_files_are_usage_errors(user_files, user_code, tmp_path, capsys):
    model = ["--model", str(user_code / "colour.safetensors"), "--arch", "sweep_user_nets:colour",
             "--input-shape", "3,8,8"]
    torch.save(torch.zeros(0, 3, 8, 8), tmp_path / "none.pt")
    torch.save(torch.full((2, 3, 8, 8), 2.0), tmp_path / "range.pt")
    nan = torch.rand(2, 3, 8, 8)
    nan[1, 0, 0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    explain = ["explain", "--method", "Saliency", *model, "--out", str(tmp_path / "o"), "--images"]
    assert "holds no images (shape (0, 3, 8, 8))" in usage_error(explain + [str(tmp_path / "none.pt")], capsys)
    assert "--images must hold finite images in [0, 1], got values in [2, 2]" in usage_error(
        explain + [str(tmp_path / "range.pt")], capsys)
    assert "--images holds NaN or infinite values" in usage_error(explain + [str(tmp_path / "nan.pt")], capsys)
    scan = ["scan", *model, "--out", str(tmp_path / "o"), "--clean"]
    assert "holds no images (shape (0, 3, 8, 8))" in usage_error(scan + [str(tmp_path / "none.pt")], capsys)
    torch.save(torch.rand(1, 3, 8, 8), tmp_path / "one.pt")
    assert "--clean must give at least 2 clean images, got 1" in usage_error(scan + [str(tmp_path / "one.pt")], capsys)
    torch.save(torch.rand(5, 3, 8, 8), tmp_path / "five.pt")
    assert "got 1 (from the folder or file, after --max-clean)" in usage_error(
        scan + [str(tmp_path / "five.pt"), "--max-clean", "1"], capsys)
    err = usage_error(["explain", "--method", "Saliency", *model, "--images", str(user_files / "imgs"),
                       "--labels", str(user_code / "colour.safetensors"), "--out", str(tmp_path / "o")], capsys)
    assert "is not a text file" in err
    assert not (tmp_path / "o").exists()


def test_scan_user_models_on_a_folder_of_mixed_images(user_code, tmp_path, capsys):
    """A TorchScript file, a torchvision state dict and an entry point, on RGBA, grey, 16-bit and palette images."""
    import torchvision

    folder = tmp_path / "clean"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8), "L").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(folder / "c.png")
    Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8), "L").convert("P").save(folder / "d.gif")
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / "e.jpg")
    torch.manual_seed(0)
    scripted = tmp_path / "net.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(torchvision.models.resnet18(weights=None, num_classes=4).eval()).save(str(scripted))
    resnet = tmp_path / "resnet.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=4).state_dict(), resnet)
    runs = {
        "script": ["--model", str(scripted), "--input-shape", "3,32,32", "--method", "both"],
        "torchvision": ["--model", str(resnet), "--arch", "resnet18", "--num-classes", "4", "--input-shape",
                        "3,32,32", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"],
        "entry": ["--model", str(user_code / "colour.safetensors"), "--arch", "sweep_user_nets:colour",
                  "--input-shape", "3,16,24"],
    }
    for name, model in runs.items():
        out = tmp_path / name
        assert main(["scan", *model, "--clean", str(folder), "--classes", "0,1,2", "--steps", "1",
                     "--out", str(out), "--quiet"]) == 0, name
        report = json.loads((out / "scan.json").read_text())
        assert report["settings"]["clean_samples"] == 5
        methods = ["ours", "neural-cleanse"] if name == "script" else ["ours"]
        assert sorted(report["methods"]) == sorted(methods)
        assert {p.name for p in out.iterdir()} == {"scan.json"} | {f"{k}_{m}.png" for k in ("maps", "trigger")
                                                                   for m in methods}
    capsys.readouterr()
