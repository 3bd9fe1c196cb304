"""The command line: help on every subcommand, layer listing, a small demo run."""
import json
import subprocess
import sys

import pytest

from captum_global.cli import build_parser, main


@pytest.mark.parametrize("command", [[], ["demo"], ["scan"], ["layers"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: captum-global" in capsys.readouterr().out


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "captum_global", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


def test_layers_lists_one_layer_per_block(capsys):
    assert main(["layers", "resnet18", "--size", "64"]) == 0
    assert capsys.readouterr().out.split() == ["relu", "layer1", "layer2", "layer3", "layer4"]


def test_unknown_method_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method names"):
        main(["demo", "--out", str(tmp_path), "--archs", "vgg", "--methods", "NoSuchMethod", "--no-photos"])


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
