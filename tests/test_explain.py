"""Dataset-scale explanations: shards, index, targets, methods by name, resume, torch.distributed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from PIL import Image
from safetensors.numpy import load_file as load_numpy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_global.errors import InvalidArgumentError, NonFiniteOutputError
from captum_global.explain import INDEX_FILE, explain_dataset, method_names, read_explanations, shard_file_name
from captum_global.lineup import last_spatial_layer

sys.path.insert(0, str(Path(__file__).parent))
from _explain_worker import SETTINGS, problem  # noqa: E402
from _processes import outputs_of  # noqa: E402


def tiny(classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)).eval()


def images(n=7, size=8, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_maps_targets_and_files_match_the_bare_method(tmp_path):
    model, x = tiny(), images(7)
    result = explain_dataset(model, "saliency", x, tmp_path / "out", batch_size=3)
    top1 = model(x).argmax(1)
    expected = torch.cat([Saliency(model).attribute(x[i:i + 3], target=top1[i:i + 3]) for i in (0, 3, 6)])
    assert torch.equal(result.maps(), expected)
    assert result.targets.tolist() == top1.tolist() and len(result) == 7 and result.method == "Saliency"
    index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    assert index["complete"] and index["num_shards"] == 3 and index["map_shape"] == [3, 8, 8]
    assert index["shards"] == [{"file": shard_file_name(k), "start": s, "stop": e}
                               for k, (s, e) in enumerate([(0, 3), (3, 6), (6, 7)])]
    assert index["names"] == [str(i) for i in range(7)] and index["dtype"] == "float32"
    # the shards are plain safetensors: NumPy reads them without torch or captum_global
    shard = load_numpy(str(tmp_path / "out" / "shard-00002.safetensors"))
    assert shard["indices"].tolist() == [6] and shard["targets"].tolist() == [int(top1[6])]
    assert np.array_equal(shard["attributions"], expected[6:].numpy())


def test_batch_size_changes_shards_not_maps(tmp_path):
    model, x = tiny(), images(7)
    one = explain_dataset(model, "InputXGradient", x, tmp_path / "a", batch_size=1)
    four = explain_dataset(model, "input_x_gradient", x, tmp_path / "b", batch_size=4)
    assert one.num_shards == 7 and four.num_shards == 2
    assert torch.allclose(one.maps(), four.maps(), atol=1e-6)


def test_target_rules(tmp_path):
    model, x = tiny(), images(5)
    labels = torch.tensor([2, 0, 1, 1, 0])
    data = TensorDataset(x, labels)
    assert explain_dataset(model, "saliency", data, tmp_path / "l", target="labels").targets.tolist() == [2, 0, 1, 1, 0]
    assert explain_dataset(model, "saliency", x, tmp_path / "c", target=-1).targets.tolist() == [2] * 5
    per = explain_dataset(model, "saliency", x, tmp_path / "p", target=[1, 2, 0, 0, 1], batch_size=2)
    assert per.targets.tolist() == [1, 2, 0, 0, 1]
    assert torch.allclose(per.maps()[1:2], Saliency(model).attribute(x[1:2], target=2), atol=1e-7)
    with pytest.raises(InvalidArgumentError, match="target 3"):
        explain_dataset(model, "saliency", x, tmp_path / "bad", target=3)
    with pytest.raises(InvalidArgumentError, match="the data items carry no label"):
        explain_dataset(model, "saliency", x, tmp_path / "nolabel", target="labels")
    with pytest.raises(InvalidArgumentError, match="label 7 of example 1"):
        explain_dataset(model, "saliency", TensorDataset(x, torch.tensor([0, 7, 0, 0, 0])), tmp_path / "big",
                        target="labels")


def test_layer_method_uses_the_grad_cam_layer_and_input_resolution(tmp_path):
    model, x = tiny(), images(4)
    result = explain_dataset(model, "LayerGradCam", x, tmp_path / "gc", batch_size=4)
    layer = last_spatial_layer(model, x[:1])
    raw = LayerGradCam(model, layer).attribute(x, target=model(x).argmax(1))
    assert raw.shape[-1] == 4  # the layer is coarser than the input
    expected = LayerAttribution.interpolate(raw, (8, 8), interpolate_mode="bilinear")
    assert torch.allclose(result.maps(), expected, atol=1e-6)
    assert result.index["settings"]["layer"] == next(n for n, m in model.named_modules() if m is layer)
    named = explain_dataset(model, "layer-grad-cam", x, tmp_path / "gc0", layer="1", batch_size=4)
    assert named.index["settings"]["layer"] == "1" and named.maps().shape == (4, 1, 8, 8)
    with pytest.raises(InvalidArgumentError, match="not a submodule name"):
        explain_dataset(model, "LayerGradCam", x, tmp_path / "gc1", layer="nope")
    with pytest.raises(InvalidArgumentError, match="reads no layer"):
        explain_dataset(model, "Saliency", x, tmp_path / "gc2", layer="1")


def test_objects_callables_and_attribute_kwargs(tmp_path):
    model, x = tiny(), images(4)
    top1 = model(x).argmax(1)
    expected = IntegratedGradients(model).attribute(x, target=top1, n_steps=5)
    by_name = explain_dataset(model, "integrated-gradients", x, tmp_path / "n", attribute_kwargs={"n_steps": 5})
    by_object = explain_dataset(model, IntegratedGradients(model), x, tmp_path / "o",
                                attribute_kwargs={"n_steps": 5})
    by_callable = explain_dataset(model, lambda inputs, t: IntegratedGradients(model).attribute(
        inputs, target=t, n_steps=5), x, tmp_path / "c")
    for result in (by_name, by_object, by_callable):
        assert torch.allclose(result.maps(), expected, atol=1e-6)
    assert by_name.index["settings"]["attribute_kwargs"] == {"n_steps": 5}
    with pytest.raises(InvalidArgumentError, match=r"needs \['sliding_window_shapes'\]"):
        explain_dataset(model, "Occlusion", x, tmp_path / "occ")
    with pytest.raises(InvalidArgumentError, match="not a known attribution"):
        explain_dataset(model, "NoSuchMethod", x, tmp_path / "x")
    assert {"SISE", "InputAgnosticSaliency", "IntegratedGradients", "LayerGradCam", "Occlusion"} <= set(method_names())
    assert "NeuronGradient" not in method_names() and "NoiseTunnel" not in method_names()



def test_attribute_kwargs_the_method_refuses_name_attribute_kwargs(tmp_path):
    """An unknown keyword or a value Captum asserts on used to escape as a bare TypeError / AssertionError."""
    from captum.attr import NoiseTunnel

    from captum_global.errors import InvalidArgumentTypeError

    model, x = tiny(), images(2)
    with pytest.raises(InvalidArgumentTypeError, match=r"attribute_kwargs \['bogus'\].*does not take it; it takes "
                                                       r"\['abs', 'additional_forward_args'\]"):
        explain_dataset(model, "Saliency", x, tmp_path / "a", attribute_kwargs={"bogus": 1})
    assert not (tmp_path / "a").exists()  # refused before the folder is made
    with pytest.raises(InvalidArgumentTypeError, match="does not take them"):
        explain_dataset(model, IntegratedGradients(model), x, tmp_path / "b", attribute_kwargs={"m": 1, "k": 2})
    with pytest.raises(InvalidArgumentError, match=r"must not set \['target'\]"):
        explain_dataset(model, "Saliency", x, tmp_path / "c", attribute_kwargs={"target": 0})
    with pytest.raises(InvalidArgumentError, match=r"attribute_kwargs \{'n_steps': 0\}.*IntegratedGradients.attribute "
                                                   r"failed with them: AssertionError"):
        explain_dataset(model, "IntegratedGradients", x, tmp_path / "d", attribute_kwargs={"n_steps": 0})
    with pytest.raises(InvalidArgumentTypeError, match=r"failed with them: TypeError"):
        explain_dataset(model, "IntegratedGradients", x, tmp_path / "e", attribute_kwargs={"n_steps": "x"})
    # a method with **kwargs (NoiseTunnel) takes what its inner method takes
    tunnel = explain_dataset(model, NoiseTunnel(Saliency(model)), x, tmp_path / "f", seed=3,
                             attribute_kwargs={"nt_type": "smoothgrad", "nt_samples": 2, "stdevs": 0.1})
    assert tunnel.maps().shape == x.shape


def test_sise_by_name_on_a_reference_model(tmp_path):
    from captum_global.attr import SISE
    from captum_global.world import load_reference_model, make_dataset

    model, x = load_reference_model("vgg", "clean"), make_dataset(2, seed=3).images
    result = explain_dataset(model, "sise", x, tmp_path / "s", batch_size=2)
    assert torch.allclose(result.maps(), SISE(model).attribute(x, target=model(x).argmax(1)), atol=1e-6)


def test_rise_by_name_with_its_options(tmp_path):
    from captum_global.attr import RISE

    model, x = tiny(), images(3, size=8)
    result = explain_dataset(model, "rise", x, tmp_path / "r", batch_size=2,
                             attribute_kwargs=dict(n_masks=30, seed=4))
    expected = RISE(model).attribute(x, target=model(x).argmax(1), n_masks=30, seed=4)
    assert "RISE" in method_names() and torch.allclose(result.maps(), expected, atol=1e-6)


def test_image_folder_with_labels_and_data_loader(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    x = images(5, size=6)
    for i, image in enumerate(x):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "labels.json").write_text(json.dumps({f"{i}.png": i % 3 for i in range(5)}))
    from captum_global.loading import ImageFiles

    files = ImageFiles(folder, size=(8, 8), labels=tmp_path / "labels.json")
    result = explain_dataset(tiny(), "saliency", files, tmp_path / "f", target="labels", batch_size=2)
    assert result.names == [f"{i}.png" for i in range(5)] and result.targets.tolist() == [0, 1, 2, 0, 1]
    by_path = explain_dataset(tiny(), "saliency", folder, tmp_path / "g", image_size=(8, 8))
    assert by_path.names == result.names and by_path.maps().shape == (5, 3, 8, 8)
    loader = DataLoader(TensorDataset(x), batch_size=2)
    assert explain_dataset(tiny(), "saliency", loader, tmp_path / "dl").num_shards == 3
    with pytest.raises(InvalidArgumentError, match="no shuffle"):
        explain_dataset(tiny(), "saliency", DataLoader(TensorDataset(x), batch_size=2, shuffle=True), tmp_path / "s")


class Interrupting:
    """Saliency that counts its calls and is interrupted (Ctrl-C) at call ``stop_at``."""

    def __init__(self, model, stop_at=None):
        self.saliency, self.calls, self.stop_at = Saliency(model), [], stop_at
        self.__qualname__ = "Interrupting"

    def __call__(self, inputs, target):
        if len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(inputs.shape[0])
        return self.saliency.attribute(inputs, target=target)


def test_resume_after_an_interruption_redoes_no_finished_shard(tmp_path):
    model, x, out = tiny(), images(10), tmp_path / "out"
    reference = explain_dataset(model, Interrupting(model), x, tmp_path / "whole", batch_size=3)
    first = Interrupting(model, stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(model, first, x, out, batch_size=3)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert not json.loads((out / INDEX_FILE).read_text())["complete"]
    with pytest.raises(InvalidArgumentError, match="unfinished; rerun it to resume"):
        read_explanations(out)
    (out / ".shard-00002.safetensors.999.tmp").write_bytes(b"half a file")  # a write cut short
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    second = Interrupting(model)
    resumed = explain_dataset(model, second, x, out, batch_size=3)
    assert second.calls == [3, 1]  # only shards 2 and 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-0000[01]*")} == before
    assert not list(out.glob(".*.tmp"))
    assert torch.equal(resumed.maps(), reference.maps()) and resumed.index == reference.index
    third = Interrupting(model)
    explain_dataset(model, third, x, out, batch_size=3)
    assert third.calls == []  # a complete run is not redone


def test_other_settings_refused_overwrite_and_foreign_folders(tmp_path):
    model, x, out = tiny(), images(4), tmp_path / "out"
    explain_dataset(model, "saliency", x, out, batch_size=2)
    with pytest.raises(InvalidArgumentError, match=r"other settings \(differing: \['method', 'method_source'\]\)"):
        explain_dataset(model, "InputXGradient", x, out, batch_size=2)
    other_model = tiny()
    with torch.no_grad():
        other_model[0].weight.add_(1)
    with pytest.raises(InvalidArgumentError, match=r"differing: \['model_sha256'\]"):
        explain_dataset(other_model, "saliency", x, out, batch_size=2)
    (out / "mine.txt").write_text("keep me")
    replaced = explain_dataset(model, "InputXGradient", x, out, batch_size=4, overwrite=True)
    assert replaced.num_shards == 1 and sorted(p.name for p in out.iterdir()) == [
        INDEX_FILE, "mine.txt", "shard-00000.safetensors"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("...")
    with pytest.raises(InvalidArgumentError, match="not empty and holds no explanations"):
        explain_dataset(model, "saliency", x, foreign)


def test_non_finite_maps_are_an_error_and_state_is_kept(tmp_path):
    model, x = tiny(), images(4)
    model.train()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)

    def nan_method(inputs, target):
        torch.rand(5)  # draws from the global RNG, which must come back as it was
        out = torch.zeros_like(inputs)
        out[0, 0, 0, 0] = float("nan")
        return out

    with pytest.raises(NonFiniteOutputError, match=r"shard 1 \(examples 2-3\)"):
        explain_dataset(model, lambda i, t: nan_method(i, t) if i[0, 0, 0, 0] == x[2, 0, 0, 0] else i * 0,
                        x, tmp_path / "nan", batch_size=2)
    assert not (tmp_path / "nan" / "shard-00001.safetensors").exists()
    assert model.training and torch.equal(torch.rand(3), expected_draw)
    bad = x.clone()
    bad[3, 1, 2, 2] = float("inf")
    with pytest.raises(InvalidArgumentError, match="data: examples 2-3 hold NaN or infinite values"):
        explain_dataset(model, "saliency", bad, tmp_path / "inf", batch_size=2)


def test_two_gloo_processes_write_the_same_files_as_one(tmp_path):
    model, x, method = problem()
    single = explain_dataset(model, method, x, tmp_path / "one", **SETTINGS)
    worker = Path(__file__).parent / "_explain_worker.py"
    log, init = tmp_path / "ranks.jsonl", tmp_path / "init"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", str(init), str(tmp_path / "two"), str(log)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = outputs_of(procs)
    assert all(p.returncode == 0 for p in procs), logs
    starts = {entry["rank"]: entry["starts"] for entry in map(json.loads, log.read_text().splitlines())}
    assert starts == {0: [0, 6], 1: [3, 9]}  # shard k on rank k mod 2
    for k in range(single.num_shards):
        name = shard_file_name(k)
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    two = json.loads((tmp_path / "two" / INDEX_FILE).read_text())
    for index in (two, single.index):  # the worker wraps the method in a recording function
        index["settings"].pop("method")
        index["settings"].pop("method_source")
    assert two == single.index
