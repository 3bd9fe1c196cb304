"""Contract checks of the command line, the loaders, the figures and the integrations that a
demanding user would run into: user code that fails on import, non-finite settings and weights,
hidden files in image folders, EXIF orientation, label files, --force in the demo folder, maps
with no signal or NaN in figures, and every target format of the quantus / grad-cam adapters."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from captum_global.cli import main
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.loading import ImageFiles, load_model

sys.path.insert(0, str(Path(__file__).parent))
from _cli_errors import usage_error  # noqa: E402

torch.set_num_threads(1)

NET_SOURCE = """
from torch import nn
def net(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A folder on sys.path (with a space and a non-ASCII letter) holding the user's modules."""
    folder = tmp_path / "my code é"
    folder.mkdir()
    (folder / "contract_net.py").write_text(NET_SOURCE)
    (folder / "contract_raises.py").write_text("raise RuntimeError('boom at import')\n")
    (folder / "contract_syntax.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(folder))
    for name in ("contract_net", "contract_raises", "contract_syntax"):
        sys.modules.pop(name, None)
    return folder


def tiny_net(num_classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes)).eval()


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("module, reason", [("contract_raises", "RuntimeError: boom at import"),
                                            ("contract_syntax", "SyntaxError: invalid syntax")])
def test_entry_point_whose_module_fails_on_import_is_a_usage_error(user_code, capsys, module, reason):
    err = usage_error(["layers", f"{module}:f"], capsys)
    assert f"error: model '{module}:f': importing module '{module}' failed: {reason}" in err


@pytest.mark.parametrize("method_args, word", [('{"n_steps": NaN}', "NaN"), ('{"n_steps": Infinity}', "Infinity"),
                                               ('{"baselines": -Infinity}', "-Infinity"),
                                               ('{"baselines": 1e999}', "1e999")])
def test_method_args_refuse_non_finite_numbers_before_any_work(tmp_path, capsys, method_args, word):
    torch.save(torch.rand(2, 3, 64, 64), tmp_path / "images.pt")
    out = tmp_path / "out"
    err = usage_error(["explain", "--method", "IntegratedGradients", "--images", str(tmp_path / "images.pt"),
                       "--out", str(out), "--method-args", method_args, "--quiet"], capsys)
    assert f"argument --method-args: must hold finite numbers, got {word} in" in err
    assert not out.exists()


@pytest.mark.parametrize("option, value, expected", [
    ("--mean", "0.5,,0.5", "argument --mean: expected comma-separated numbers, got '0.5,,0.5' (an empty value"),
    ("--std", "0.2,", "argument --std: expected comma-separated numbers, got '0.2,' (an empty value"),
])
def test_number_lists_refuse_empty_values(tmp_path, capsys, option, value, expected):
    err = usage_error(["explain", "--method", "Saliency", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                       option, value], capsys)
    assert expected in err


def test_scan_classes_refuse_empty_values(capsys):
    err = usage_error(["scan", "--classes", "0,,2,3"], capsys)
    assert "argument --classes: expected distinct comma-separated class indices, got '0,,2,3'" in err


def test_demo_force_removes_only_the_files_the_demo_writes(tmp_path, monkeypatch):
    import captum_global.demo

    calls = []
    monkeypatch.setattr(captum_global.demo, "run_demo", lambda out, **kw: calls.append((out, kw)))
    out = tmp_path / "demo out"
    out.mkdir()
    mine = ["holiday.png", "notes.md", "gallery_vgg.png", "sise_blocks_resnet.png", "backdoor_vgg_patch.png",
            "classwise_vgg.png", "gallery_photos.png", "metrics.json", "metrics.md"]
    for name in mine:
        (out / name).write_text("x")
    assert main(["demo", "--out", str(out), "--force", "--no-photos", "--quick"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["holiday.png", "notes.md"]
    assert calls and calls[0][0] == out


def test_demo_refuses_a_non_empty_folder_without_force(tmp_path, capsys):
    (tmp_path / "holiday.png").write_text("x")
    err = usage_error(["demo", "--out", str(tmp_path)], capsys)
    assert f"--out {str(tmp_path)!r} exists and is not empty; pass --force to overwrite it" in err
    assert (tmp_path / "holiday.png").read_text() == "x"


def test_labels_out_of_range_are_refused_before_anything_is_written(tmp_path, user_code, capsys):
    model = tiny_net()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a b.png", "é.png"):
        Image.new("RGB", (12, 10), (200, 10, 10)).save(images / name)
    (tmp_path / "labels.csv").write_text("a b.png,1\né.png,7\n")
    out = tmp_path / "out"
    err = usage_error(["explain", "--method", "Saliency", "--images", str(images), "--labels",
                       str(tmp_path / "labels.csv"), "--out", str(out), "--model", str(tmp_path / "w.safetensors"),
                       "--arch", "contract_net:net", "--num-classes", "3", "--input-shape", "3,16,16", "--quiet"],
                      capsys)
    assert "error: --labels: label 7 of example 1 (é.png) is not a class 0..2" in err  # a label of the file
    assert not out.exists()


def test_explain_with_labels_in_paths_with_spaces_and_unicode(tmp_path, user_code, capsys):
    model = tiny_net()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    images = tmp_path / "my images ü"
    (images / ".ipynb_checkpoints").mkdir(parents=True)
    for name in ("a b.png", "é.png", "c.jpg", ".ipynb_checkpoints/a b-checkpoint.png"):
        Image.new("RGB", (12, 10), (200, 10, 10)).save(images / name)
    (images / "._a b.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "labels.csv").write_text("file,label\na b.png, 1 \n\né.png , 2\nc.jpg,0\n")
    out = tmp_path / "out é"
    assert main(["explain", "--method", "Saliency", "--images", str(images), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(out), "--model", str(tmp_path / "w.safetensors"), "--arch", "contract_net:net",
                 "--num-classes", "3", "--input-shape", "3,16,16", "--quiet"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["names"] == ["a b.png", "c.jpg", "é.png"]
    assert index["targets"] == [1, 0, 2]
    assert "3 maps (Saliency) in 1 shard(s)" in capsys.readouterr().out


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path, user_code, capsys):
    weights = tiny_net().state_dict()
    weights["4.bias"] = torch.tensor([0.0, float("nan"), 0.0])
    save_file(weights, str(tmp_path / "nan.safetensors"))
    err = usage_error(["explain", "--method", "Saliency", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
                       "--model", str(tmp_path / "nan.safetensors"), "--arch", "contract_net:net",
                       "--input-shape", "3,16,16"], capsys)
    assert "hold NaN or infinite values in 1 tensor(s): ['4.bias']" in err
    assert not (tmp_path / "o").exists()


def test_non_finite_torchscript_weights_are_refused(tmp_path):
    model = tiny_net()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("inf")
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    with pytest.raises(InvalidArgumentError, match=r"NaN or infinite values in 1 tensor\(s\): \['0.weight'\]"):
        load_model(tmp_path / "ts.pt", input_shape=(3, 16, 16))


def test_module_prefixed_state_dict_still_loads_exactly(tmp_path, user_code):
    model = tiny_net()
    save_file({"module." + k: v for k, v in model.state_dict().items()}, str(tmp_path / "ddp.safetensors"))
    loaded = load_model(tmp_path / "ddp.safetensors", "contract_net:net", 3, input_shape=(3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), model(x))


# --- image folders and label files ------------------------------------------------------------


def test_image_folders_skip_hidden_files_and_folders(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "sub" / "b.png")
    for hidden in (".ipynb_checkpoints", ".git"):
        (tmp_path / hidden).mkdir()
        Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / hidden / "a.png")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 junk")
    (tmp_path / "notes.txt").write_text("not an image")
    files = ImageFiles(tmp_path, size=(4, 4))
    assert files.names == ["a.png", "sub/b.png"]
    assert files[1][:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    # only names below the folder count: a folder that is itself hidden is read
    assert ImageFiles(tmp_path / ".git").names == ["a.png"]


def test_folder_of_only_hidden_images_is_an_error_that_says_so(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / ".hidden.png")
    with pytest.raises(InvalidArgumentError, match=r"no image files .* \(hidden files and folders are skipped\)"):
        ImageFiles(tmp_path)


def test_damaged_first_image_without_size_names_the_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(InvalidArgumentError, match=r"images: cannot read '.*a\.png'"):
        ImageFiles(tmp_path)


def test_exif_orientation_is_applied(tmp_path):
    # stored 8 wide x 4 high, white left half; orientation 6 shows it turned a quarter clockwise:
    # 4 wide x 8 high, white top half
    stored = Image.new("RGB", (8, 4), (0, 0, 0))
    stored.paste((255, 255, 255), (0, 0, 4, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    files = ImageFiles(tmp_path)
    assert files.size == (8, 4)
    image = files[0]
    assert image.shape == (3, 8, 4)
    assert float(image[:, :3].min()) > 0.9 and float(image[:, 5:].max()) < 0.1


@pytest.mark.parametrize("mode, color, expected", [
    ("RGBA", (255, 0, 0, 0), [1.0, 0.0, 0.0]), ("LA", (51, 7), [0.2, 0.2, 0.2]), ("1", 1, [1.0, 1.0, 1.0]),
])
def test_image_modes_read_as_unit_rgb(tmp_path, mode, color, expected):
    Image.new(mode, (6, 6), color).save(tmp_path / "x.png")
    assert ImageFiles(tmp_path)[0][:, 0, 0].tolist() == pytest.approx(expected)


def test_labels_with_a_number_that_is_not_a_class_name_it(tmp_path):
    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "labels.csv").write_text("a.png,1.5\nb.png,0\n")
    with pytest.raises(InvalidArgumentError, match=r"labels\['a.png'\] must be a class index, got '1.5'"):
        ImageFiles(tmp_path, labels=tmp_path / "labels.csv")


def test_labels_giving_one_file_two_labels_are_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("a.png,1\na.png,2\n")
    with pytest.raises(InvalidArgumentError, match="gives 'a.png' two labels, '1' and '2'"):
        ImageFiles(tmp_path, labels=tmp_path / "labels.csv")
    (tmp_path / "same.csv").write_text("a.png,1\na.png, 1\n")
    assert ImageFiles(tmp_path, labels=tmp_path / "same.csv").labels == [1]


# --- figures and maps -------------------------------------------------------------------------


def test_gallery_shows_a_constant_map_as_empty_and_refuses_nan():
    from captum_global import viz

    images = torch.rand(2, 3, 16, 16)
    fig = viz.explanation_gallery(images, {"flat": torch.full((2, 3, 16, 16), 0.3),
                                           "one": (torch.rand(2, 1, 16, 16) + 0.1,)})
    assert [ax.get_title() for ax in fig.axes] == ["input", "flat\n(empty map)", "one"] * 2
    with pytest.raises(InvalidArgumentError, match=r"attributions\['bad'\] must be finite"):
        viz.explanation_gallery(images, {"bad": torch.full((2, 3, 16, 16), float("nan"))})
    with pytest.raises(InvalidArgumentError, match=r"attributions\['few'\] holds 1 map\(s\) for 2 image\(s\)"):
        viz.explanation_gallery(images, {"few": torch.rand(1, 3, 16, 16)})


def test_class_map_grid_keeps_no_signal_maps_at_zero():
    from captum_global import viz

    noise = 1.0 + 1e-7 * torch.arange(64.0).reshape(1, 1, 8, 8)  # varies by round-off only
    signal = torch.zeros(1, 1, 8, 8)
    signal[0, 0, 2, 3] = 2.0
    fig = viz.class_map_grid({"m": torch.cat([torch.zeros(1, 1, 8, 8), noise, signal])}, ["a", "b", "c"])
    arrays = [np.asarray(ax.images[0].get_array()) for ax in fig.axes]
    assert [ax.images[0].get_clim() for ax in fig.axes] == [(0.0, 1.0)] * 3
    assert arrays[0].max() == 0.0 and arrays[1].max() == 0.0
    assert arrays[2][2, 3] == 1.0 and arrays[2].sum() == 1.0


def test_class_map_grid_refuses_bad_inputs_by_name():
    from captum_global import viz

    with pytest.raises(InvalidArgumentError, match=r"maps_by_model\['m'\] holds 2 map\(s\) for 3 class name\(s\)"):
        viz.class_map_grid({"m": torch.rand(2, 3, 8, 8)}, ["a", "b", "c"])
    with pytest.raises(InvalidArgumentError, match=r"maps_by_model\['m'\] must be finite"):
        viz.class_map_grid({"m": torch.full((2, 3, 8, 8), float("inf"))}, ["a", "b"])
    with pytest.raises(InvalidArgumentError, match="highlight marks no pixel"):
        viz.class_map_grid({"m": torch.rand(2, 3, 8, 8)}, ["a", "b"], highlight=torch.zeros(8, 8, dtype=torch.bool))


def test_to_heatmap_raises_the_package_errors():
    from captum_global.maps import to_heatmap

    with pytest.raises(InvalidArgumentTypeError, match="attributions must be a tensor"):
        to_heatmap(np.zeros((1, 3, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="got a 2-tuple"):
        to_heatmap((torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)))
    with pytest.raises(InvalidArgumentError, match="sign must be"):
        to_heatmap(torch.zeros(1, 3, 4, 4), sign="pos")
    assert to_heatmap((torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]]),)).tolist() == [[[2.0, 0.0]]]


# --- integrations -----------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [np.array([0, 2]), [0, 2], (0, 2), torch.tensor([0, 2]), np.array([[0], [2]]),
                                     [np.int32(0), np.int32(2)], np.array([-3, -1])])
def test_quantus_explain_takes_every_integer_target_format(targets):
    from captum_global.integrations.quantus import explain

    net = tiny_net()
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    expected = explain(net, x, np.array([0, 2]), method="Saliency")
    assert np.array_equal(explain(net, x, targets, method="Saliency"), expected)


@pytest.mark.parametrize("targets, error, message", [
    (np.array([5, 0]), InvalidArgumentError, r"targets 5 \(example 0\) is out of range: .* valid values are 0..2"),
    (np.array([-4, 0]), InvalidArgumentError, r"targets -4 \(example 0\) is out of range"),
    (None, InvalidArgumentTypeError, "targets must be integer class indices .* got None"),
    ("a", InvalidArgumentTypeError, "targets must be integer class indices .* got str"),
    (np.array([0.0, 2.0]), InvalidArgumentTypeError, "targets must be integer class indices, got dtype"),
    ([0, 1, 2], InvalidArgumentError, "targets has 3 entries for 2 inputs"),
])
def test_quantus_explain_refuses_bad_targets_by_name(targets, error, message):
    from captum_global.integrations.quantus import explain

    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with pytest.raises(error, match=message):
        explain(tiny_net(), x, targets, method="Saliency")


def test_quantus_explain_refuses_non_finite_and_channel_last_inputs():
    from captum_global.integrations.quantus import explain

    net = tiny_net()
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    x[1, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"inputs must be finite: it holds 1 NaN"):
        explain(net, x, [0, 1], method="Saliency")
    with pytest.raises(InvalidArgumentError, match=r"inputs: the model does not run on .* shape \(2, 16, 16, 3\)"):
        explain(net, np.zeros((2, 16, 16, 3), np.float32), [0, 1], method="Saliency")


def test_grad_cam_adapter_checks_targets_and_inputs():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from captum_global.integrations.grad_cam import AttributionCAM, attributions_to_cams

    net = tiny_net()
    x = torch.rand(2, 3, 16, 16)
    cam = AttributionCAM(net, "Saliency")
    last = cam(x, [ClassifierOutputTarget(-1), ClassifierOutputTarget(0)])
    assert np.array_equal(last, cam(x, [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]))
    with pytest.raises(InvalidArgumentError, match=r"targets 5 \(example 0\) is out of range"):
        cam(x, [ClassifierOutputTarget(5), ClassifierOutputTarget(0)])
    with pytest.raises(InvalidArgumentTypeError, match="targets must be a list of grad-cam targets, one per image"):
        cam(x, ClassifierOutputTarget(0))
    with pytest.raises(InvalidArgumentError, match="input_tensor must be finite"):
        cam(torch.full((1, 3, 16, 16), float("nan")), None)
    with pytest.raises(InvalidArgumentError, match="attributions must be finite"):
        attributions_to_cams(torch.full((1, 3, 4, 4), float("nan")))
    assert attributions_to_cams(torch.full((1, 3, 4, 4), 0.7)).tolist() == [[[0.0] * 4] * 4]


def test_integrations_leave_model_and_rng_as_found():
    from captum_global.integrations.quantus import explain

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(InvalidArgumentError):
        explain(net, np.zeros((2, 3, 8, 8), np.float32), [0, 9], method="Saliency")
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in net.modules())
