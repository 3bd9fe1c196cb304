"""Safe loading of user models, tensors and image folders (captum_global.loading)."""
import builtins
import json
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from captum_global.errors import InvalidArgumentError
from captum_global.loading import (
    ImageFiles,
    NormalizedModel,
    build_architecture,
    load_model,
    load_tensor,
    torchvision_classifiers,
)


def small_torchvision(num_classes=4):
    torch.manual_seed(0)
    net = torchvision.models.squeezenet1_1(weights=None, num_classes=num_classes).eval()
    with torch.no_grad():  # BN-free net: perturb every weight so a wrong load shows
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net


def tiny_net(num_classes=3):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)).eval()


@pytest.fixture
def tiny_arch(monkeypatch):
    """``"_tiny_arch:make"`` names :func:`tiny_net` as a module:callable entry point."""
    module = type(sys)("_tiny_arch")
    module.make = tiny_net
    monkeypatch.setitem(sys.modules, "_tiny_arch", module)
    return "_tiny_arch:make"


class RunsCodeOnLoad:
    """Unpickling this runs ``exec``: it writes the marker file (a stand-in for any attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_safetensors_round_trip_gives_the_same_model(tmp_path):
    net = small_torchvision()
    path = tmp_path / "weights.safetensors"
    save_file(net.state_dict(), str(path))
    loaded = load_model(path, arch="squeezenet1_1", num_classes=4, input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    assert not loaded.training
    assert torch.equal(loaded(x), net(x))


def test_weights_only_round_trip_nested_and_prefixed(tmp_path, tiny_arch):
    net = tiny_net()
    with torch.no_grad():  # BN statistics that differ from a fresh net's
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    plain, nested = tmp_path / "plain.pt", tmp_path / "checkpoint.pth"
    torch.save(net.state_dict(), plain)
    # a training script's checkpoint: DataParallel-prefixed weights under "state_dict", plus an epoch number
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, nested)
    x = torch.rand(2, 3, 8, 8)
    for path in (plain, nested):
        model = load_model(path, arch=tiny_arch, num_classes=3, input_shape=(3, 8, 8))
        assert torch.equal(model(x), net(x)), path.name


def test_format_comes_from_content_not_extension(tmp_path, tiny_arch):
    net = tiny_net()
    with torch.no_grad():
        net[5].weight.mul_(3)
    path = tmp_path / "weights.bin"
    save_file(net.state_dict(), str(path))
    model = load_model(path, arch=tiny_arch)
    assert torch.equal(model[5].weight, net[5].weight)


def test_torchscript_loads_without_arch_and_refuses_one(tmp_path):
    net = tiny_net()
    path = tmp_path / "model.pt"
    with pytest.warns(FutureWarning):
        torch.jit.trace(net, torch.rand(1, 3, 8, 8)).save(str(path))
    model = load_model(path, input_shape=(3, 8, 8), num_classes=3)
    x = torch.rand(3, 3, 8, 8)
    assert torch.allclose(model(x), net(x), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="TorchScript model, which carries its own architecture"):
        load_model(path, arch="resnet18")
    with pytest.raises(InvalidArgumentError, match="returns 3 scores"):
        load_model(path, input_shape=(3, 8, 8), num_classes=5)


def test_module_callable_entry_point(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(textwrap.dedent("""
        import torch

        def with_classes(num_classes=10):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, num_classes))

        class Factory:
            @staticmethod
            def fixed():
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))

        not_a_module = lambda: 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    path = tmp_path / "w.safetensors"
    save_file(reference.state_dict(), str(path))
    model = load_model(path, arch="user_models:with_classes", num_classes=6, input_shape=(3, 2, 2))
    x = torch.rand(4, 3, 2, 2)
    assert torch.equal(model(x), reference(x))
    # an entry point that takes no num_classes is called without it, and its output is checked
    with pytest.raises(InvalidArgumentError, match=r"1 key\(s\)|shape mismatch"):
        load_model(path, arch="user_models:Factory.fixed", num_classes=6)
    with pytest.raises(InvalidArgumentError, match="not an nn.Module"):
        load_model(path, arch="user_models:not_a_module")
    with pytest.raises(InvalidArgumentError, match="cannot import module 'no_such_user_module'"):
        load_model(path, arch="no_such_user_module:make")
    with pytest.raises(InvalidArgumentError, match="has no attribute 'missing'"):
        load_model(path, arch="user_models:missing")
    with pytest.raises(InvalidArgumentError, match="package.module:callable"):
        load_model(path, arch="user models:make")


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    payload = {"fc.weight": RunsCodeOnLoad(marker)}
    path = tmp_path / "model.pt"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    # the payload is live: a plain unpickler runs it
    with open(path, "rb") as handle:
        if how == "torch.save":
            torch.load(handle, weights_only=False)
        else:
            pickle.load(handle)
    assert marker.read_text() == "pwned"
    marker.unlink()
    for call in (lambda: load_model(path, arch="resnet18"), lambda: load_model(path),
                 lambda: load_tensor(path)):
        with pytest.raises(InvalidArgumentError, match="never unpickles arbitrary Python objects"):
            call()
        assert not marker.exists()


def test_a_pickled_module_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny_net(), path)
    with pytest.raises(InvalidArgumentError, match=r"model\.state_dict\(\).*torch\.jit\.save"):
        load_model(path, arch="resnet18")


def test_key_and_shape_errors_name_the_file_and_keys(tmp_path):
    net = small_torchvision(num_classes=4)
    path = tmp_path / "sq.safetensors"
    weights = dict(net.state_dict())
    weights.pop("features.0.bias")
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(path))
    with pytest.raises(InvalidArgumentError) as info:
        load_model(path, arch="squeezenet1_1")
    message = str(info.value)
    assert "sq.safetensors" in message and "squeezenet1_1" in message
    assert "1 key(s) missing from the file: ['features.0.bias']" in message
    assert "1 key(s) in the file that the model lacks: ['extra.weight']" in message
    assert "classifier.1.weight: file (4, 512, 1, 1) vs model (1000, 512, 1, 1)" in message
    assert "pass num_classes=4" in message


@pytest.mark.parametrize("kwargs, match", [
    (dict(arch=None), "arch is required"),
    (dict(arch="squeezenet1_2"), r"did you mean \['squeezenet1_1'"),
    (dict(arch="squeezenet1_1", num_classes=0), "num_classes must be >= 1"),
    (dict(arch="squeezenet1_1", input_shape=(3, 0, 8)), r"input_shape\[1\] must be >= 1"),
    (dict(arch="squeezenet1_1", std=[0.0]), r"std\[0\] must be > 0"),
    (dict(arch="squeezenet1_1", value_range=(1, 1)), "value_range must have low < high"),
])
def test_bad_arguments_name_themselves(tmp_path, kwargs, match):
    path = tmp_path / "w.safetensors"
    save_file(torchvision.models.squeezenet1_1(num_classes=2).state_dict(), str(path))
    kwargs.setdefault("num_classes", 2)
    with pytest.raises(InvalidArgumentError, match=match):
        load_model(path, **kwargs)


def test_missing_file_and_a_model_that_does_not_run(tmp_path, tiny_arch):
    with pytest.raises(InvalidArgumentError, match="no such file"):
        load_model(tmp_path / "absent.pt", arch="resnet18")
    path = tmp_path / "w.pt"
    torch.save(tiny_net().state_dict(), path)
    with pytest.raises(InvalidArgumentError, match=r"does not run on inputs of shape \(1, 5, 8, 8\)"):
        load_model(path, arch=tiny_arch, input_shape=(5, 8, 8))


def test_normalisation_by_hand():
    wrapped = NormalizedModel(nn.Identity(), mean=[127.5], std=[127.5], value_range=(0, 255))
    x = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 1, 3)
    assert torch.allclose(wrapped(x), torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))
    per_channel = NormalizedModel(nn.Identity(), mean=[0.5, 0.0], std=[0.5, 2.0])
    y = per_channel(torch.ones(1, 2, 1, 1))
    assert y.flatten().tolist() == [1.0, 0.5]


def test_load_model_with_mean_std_feeds_normalised_inputs(tmp_path):
    net = small_torchvision()
    path = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(path))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = load_model(path, arch="squeezenet1_1", num_classes=4, mean=mean, std=std, input_shape=(3, 32, 32))
    x = torch.rand(2, 3, 32, 32)
    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert "model.features.0" in dict(model.named_modules())
    with pytest.raises(InvalidArgumentError, match="mean must hold 1 or 3 values"):
        load_model(path, arch="squeezenet1_1", num_classes=4, mean=[0.1, 0.2], input_shape=(3, 32, 32))


def test_build_architecture_and_classifier_names():
    names = torchvision_classifiers()
    assert "resnet18" in names and "fasterrcnn_resnet50_fpn" not in names  # classifiers only
    model = build_architecture("captum_global.world.models:SmallResNet", num_classes=7)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 7)


def test_load_tensor(tmp_path):
    images = torch.rand(3, 3, 4, 4)
    save_file({"images": images}, str(tmp_path / "one.safetensors"))
    assert torch.equal(load_tensor(tmp_path / "one.safetensors", dims=(4,)), images)
    save_file({"a": images, "b": images.clone()}, str(tmp_path / "two.safetensors"))
    with pytest.raises(InvalidArgumentError, match="must hold one tensor"):
        load_tensor(tmp_path / "two.safetensors")
    torch.save(images[0], tmp_path / "three_d.pt")
    with pytest.raises(InvalidArgumentError, match="expected 4-D"):
        load_tensor(tmp_path / "three_d.pt", argument="--clean", dims=(4,))


def write_images(folder, count=3, size=(6, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(count):
        array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"im{i}.png")
        arrays.append(array)
    return arrays


def test_image_files_order_values_resize_and_labels(tmp_path):
    arrays = write_images(tmp_path / "imgs" / "sub", count=3)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    files = ImageFiles(tmp_path / "imgs")
    assert files.names == ["sub/im0.png", "sub/im1.png", "sub/im2.png"] and len(files) == 3
    assert torch.allclose(files[1], torch.from_numpy(arrays[1]).permute(2, 0, 1).float() / 255)
    small = ImageFiles(tmp_path / "imgs", size=(3, 4), channels=1)
    assert small[0].shape == (1, 3, 4)
    (tmp_path / "labels.csv").write_text("file,label\nsub/im0.png,2\nsub/im1.png,0\nsub/im2.png,1\n")
    (tmp_path / "labels.json").write_text(json.dumps({"sub/im0.png": 2, "sub/im1.png": 0, "sub/im2.png": 1}))
    for labels in ("labels.csv", "labels.json"):
        labelled = ImageFiles(tmp_path / "imgs", labels=tmp_path / labels)
        assert labelled.labels == [2, 0, 1] and labelled[2][1] == 1
    (tmp_path / "short.csv").write_text("sub/im0.png,2\n")
    with pytest.raises(InvalidArgumentError, match=r"no label for 2 image\(s\)"):
        ImageFiles(tmp_path / "imgs", labels=tmp_path / "short.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="no image files"):
        ImageFiles(tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="no such folder"):
        ImageFiles(tmp_path / "absent")


def test_wide_images_are_scaled_not_clipped_at_255(tmp_path):
    """16-bit grey PNGs and float TIFFs used to come out (almost) all white or all black."""
    folder = tmp_path / "wide"
    folder.mkdir()
    grey16 = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(folder / "a16.png")
    Image.fromarray(np.array([[0.0, 0.25], [0.5, 2.0]], dtype=np.float32), mode="F").save(folder / "b_float.tif")
    Image.fromarray(np.array([[0, 255], [128, 64]], dtype=np.uint8), mode="L").save(folder / "c8.png")
    Image.fromarray(np.full((2, 2, 4), (255, 0, 0, 0), dtype=np.uint8), mode="RGBA").save(folder / "d_rgba.png")
    with Image.open(folder / "a16.png") as opened:
        assert opened.mode.startswith("I")  # what Pillow opens a 16-bit PNG as
    grey = ImageFiles(folder, channels=1)
    assert grey.names == ["a16.png", "b_float.tif", "c8.png", "d_rgba.png"]
    assert torch.allclose(grey[0][0], torch.from_numpy(grey16 / 65535.0).float())
    assert torch.allclose(grey[1][0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))  # clipped to [0, 1]
    assert torch.allclose(grey[2][0], torch.tensor([[0, 255], [128, 64]]) / 255.0)
    colour = ImageFiles(folder)
    assert all(colour[i].shape == (3, 2, 2) and colour[i].dtype == torch.float32 for i in range(4))
    assert torch.equal(colour[0][0], colour[0][2]) and torch.allclose(colour[0][1], grey[0][0])
    assert colour[3][:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # alpha dropped
    resized = ImageFiles(folder, size=(4, 3), channels=1)
    assert resized[0].shape == (1, 4, 3) and 0.0 <= float(resized[0].min()) and float(resized[0].max()) <= 1.0
    assert float(resized[0].mean()) > 0.3  # not clipped to white (1.0) nor black


def test_unreadable_label_files_and_images_are_argument_errors(tmp_path):
    write_images(tmp_path / "imgs", count=2)
    (tmp_path / "labels.bin").write_bytes(b"\x80\x81\xfe" * 10)
    with pytest.raises(InvalidArgumentError, match="is not a text file"):
        ImageFiles(tmp_path / "imgs", labels=tmp_path / "labels.bin")
    (tmp_path / "bom.csv").write_text("\ufefffile,label\nim0.png,1\nim1.png,0\n", encoding="utf-8")
    assert ImageFiles(tmp_path / "imgs", labels=tmp_path / "bom.csv").labels == [1, 0]  # a spreadsheet's BOM
    (tmp_path / "imgs" / "im2.png").write_bytes(b"not a png")
    files = ImageFiles(tmp_path / "imgs")
    with pytest.raises(InvalidArgumentError, match="cannot read .*im2.png"):
        files[2]


def test_an_entry_point_that_raises_names_the_arch(tmp_path, monkeypatch):
    module = type(sys)("_raising_arch")

    def needs_width(width):
        return tiny_net()

    def broken(num_classes=3):
        raise RuntimeError("CUDA is not available in the user's code")

    module.needs_width, module.broken = needs_width, broken
    monkeypatch.setitem(sys.modules, "_raising_arch", module)
    with pytest.raises(InvalidArgumentError, match=r"arch='_raising_arch:needs_width': calling it failed: "
                                                   r"TypeError: .*'width'"):
        build_architecture("_raising_arch:needs_width")
    path = tmp_path / "w.safetensors"
    save_file(tiny_net().state_dict(), str(path))
    with pytest.raises(InvalidArgumentError, match=r"calling it with num_classes=3 failed: RuntimeError: CUDA"):
        load_model(path, arch="_raising_arch:broken", num_classes=3)


def test_a_pickle_named_safetensors_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, data in (("a.safetensors", pickle.dumps({"fc.weight": RunsCodeOnLoad(marker)})),
                       ("b.safetensors", pickle.dumps(RunsCodeOnLoad(marker)))):
        path = tmp_path / name
        path.write_bytes(data)
        for call in (lambda: load_model(path, arch="resnet18"), lambda: load_tensor(path)):
            with pytest.raises(InvalidArgumentError, match="never unpickles arbitrary Python objects"):
                call()
    assert not marker.exists()
