"""``explain_dataset`` and ``captum-global explain`` as a user runs them on their own dataset and model.

Each expectation is computed by hand or by calling the method directly: an interrupted run resumed
gives the files of an uninterrupted one byte for byte and computes no batch twice (the model's calls
are counted); a rerun with other settings, a damaged shard or index are detected; every method name
gives the maps of a direct call for each target rule; the data a user hands in (tuples, dicts,
loaders, empty data, NaN) is taken or refused by name; the model and the global RNG come back as
found after an error half-way; on the command line a model that cannot run with gradients is a
usage error for methods that need them, and runs for those that do not.

What tests/test_explain.py, test_cli.py and test_cli_defender.py already check is not repeated here.
"""
import inspect
import json
import random
import sys
import warnings
from pathlib import Path

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_global import attr as our_attr
from captum_global._seeding import seeded_global_rng
from captum_global.cli import main
from captum_global.errors import InvalidArgumentError
from captum_global.explain import INDEX_FILE, explain_dataset, method_names, read_explanations, shard_file_name
from captum_global.explain.dataset import _shard_seed
from captum_global.lineup import last_spatial_layer

sys.path.insert(0, str(Path(__file__).parent))
from _cli_errors import usage_error  # noqa: E402

SIZE = 6


class Net(nn.Module):
    """A small classifier every method (LRP included: no Flatten module) runs on; counts its calls by batch
    size and raises Ctrl-C (KeyboardInterrupt) at call ``stop_at``."""

    def __init__(self, classes=3, stop_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(6, classes)
        self.calls, self.stop_at = [], stop_at

    def forward(self, x):
        if self.stop_at is not None and len(self.calls) == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(x.shape[0])
        return self.fc(torch.flatten(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))), 1))


def images(n=7, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def files_of(folder: Path):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("stop_at", [2, 5])
def test_a_run_interrupted_in_the_model_resumes_to_the_same_files_computing_no_batch_twice(tmp_path, stop_at):
    # 7 examples, batches of 3: shards [0-2], [3-5], [6]. The model is called once on example 0 (its output
    # shape), then per shard once for the top-1 class and once by Saliency.
    whole = Net()
    explain_dataset(whole, "Saliency", images(), tmp_path / "whole", batch_size=3)
    assert whole.calls == [1, 3, 3, 3, 3, 1, 1]
    cut = Net(stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(cut, "Saliency", images(), tmp_path / "cut", batch_size=3)
    finished = (stop_at - 1) // 2  # shards whose two calls completed
    assert sorted(p.name for p in (tmp_path / "cut").glob("shard-*")) == [shard_file_name(k) for k in range(finished)]
    cut.stop_at, cut.calls = None, []
    resumed = explain_dataset(cut, "Saliency", images(), tmp_path / "cut", batch_size=3)
    assert cut.calls == [1] + [3, 3, 3, 3, 1, 1][2 * finished:]  # the finished shards are not redone
    assert files_of(tmp_path / "cut") == files_of(tmp_path / "whole")
    assert resumed.maps().shape == (7, 3, SIZE, SIZE)


@pytest.mark.parametrize("change, differing", [
    (dict(batch_size=2), "shard_size"),
    (dict(target=1), "target"),
    (dict(seed=1), "seed"),
    (dict(attribute_kwargs={"abs": False}), "attribute_kwargs"),
    (dict(data=images(seed=1)), "data_sha256"),  # other images, as many: they used to resume the old maps
])
def test_a_rerun_with_other_settings_is_refused_naming_them_and_changes_nothing(tmp_path, change, differing):
    explain_dataset(Net(), "Saliency", images(), tmp_path / "out", batch_size=3)
    before = files_of(tmp_path / "out")
    other = dict(dict(data=images(), batch_size=3), **change)
    counted = Net()
    with pytest.raises(InvalidArgumentError, match=rf"other settings \(differing: \['{differing}'\]\)"):
        explain_dataset(counted, "Saliency", other.pop("data"), tmp_path / "out", **other)
    assert files_of(tmp_path / "out") == before and counted.calls == [1]  # only the output-shape check ran


def _damage(folder: Path, how: str) -> None:
    path = folder / shard_file_name(1)
    if how == "truncated":  # a copy or a disk that stopped half-way
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "junk":
        path.write_bytes(b"<html>503</html>")
    else:  # a whole shard, but of other examples (copied over it)
        path.write_bytes((folder / shard_file_name(0)).read_bytes())


@pytest.mark.parametrize("how", ["truncated", "junk", "another shard"])
def test_a_damaged_shard_is_detected_by_the_reader_and_recomputed_by_a_rerun(tmp_path, how):
    whole = tmp_path / "whole"
    explain_dataset(Net(), "Saliency", images(), whole, batch_size=3)
    damaged = tmp_path / "damaged"
    explain_dataset(Net(), "Saliency", images(), damaged, batch_size=3)
    _damage(damaged, how)
    # the reader used to open it (the size check passes) and fail in maps() with a SafetensorError, or, for
    # another shard copied over it, return 9 maps for 7 examples
    with pytest.raises(InvalidArgumentError, match=r"shard-00001\.safetensors.*damaged"):
        read_explanations(damaged)
    again = Net()
    with pytest.warns(RuntimeWarning, match=r"shard-00001\.safetensors .*damaged.*computed again"):
        explain_dataset(again, "Saliency", images(), damaged, batch_size=3)
    assert again.calls == [1, 3, 3]  # the output-shape check, then shard 1 only
    assert files_of(damaged) == files_of(whole)


def test_a_damaged_index_is_refused_by_name_not_reported_as_other_settings(tmp_path):
    out = tmp_path / "out"
    explain_dataset(Net(), "Saliency", images(), out, batch_size=3)
    (out / INDEX_FILE).write_text((out / INDEX_FILE).read_text()[:40])  # cut short
    with pytest.raises(InvalidArgumentError, match=r"index\.json.*damaged") as refused:
        explain_dataset(Net(), "Saliency", images(), out, batch_size=3)
    assert "other settings" not in str(refused.value)  # it used to list every setting as differing
    with pytest.raises(InvalidArgumentError, match=r"index\.json.*damaged"):  # used to be a JSONDecodeError
        read_explanations(out)
    redone = explain_dataset(Net(), "Saliency", images(), out, batch_size=3, overwrite=True)
    assert redone.num_shards == 3


# ------------------------------------------------------------------------- every method, every target rule

BASELINES = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
MASK = (torch.arange(SIZE * SIZE).view(1, 1, SIZE, SIZE) // (SIZE * SIZE // 4)).repeat(1, 3, 1, 1)  # 4 features
KWARGS = {
    "DeepLiftShap": {"baselines": BASELINES}, "LayerDeepLiftShap": {"baselines": BASELINES},
    "GradientShap": {"baselines": BASELINES, "n_samples": 3},
    "LayerGradientShap": {"baselines": BASELINES, "n_samples": 3},
    "IntegratedGradients": {"n_steps": 4}, "InternalInfluence": {"n_steps": 4}, "LayerConductance": {"n_steps": 4},
    "LayerIntegratedGradients": {"n_steps": 4},
    "KernelShap": {"n_samples": 8, "feature_mask": MASK}, "Lime": {"n_samples": 8, "feature_mask": MASK},
    "ShapleyValues": {"feature_mask": MASK}, "ShapleyValueSampling": {"n_samples": 2, "feature_mask": MASK},
    "Occlusion": {"sliding_window_shapes": (3, 2, 2), "strides": (3, 2, 2)},
    "RISE": {"n_masks": 8, "seed": 1}, "InputAgnosticSaliency": {"n_steps": 2, "seed": 3},
}
LAYERS = {"LayerLRP": "conv2"}  # Captum's LayerLRP has no rule for a ReLU, the default (block output) layer
# Captum's LayerFeaturePermutation selects the target twice (AssertionError "Output must be 2D to select
# tensor of targets" on any model, called directly too): explain_dataset always passes targets.
CAPTUM_CANNOT = {"LayerFeaturePermutation"}
LABELS = torch.tensor([2, 0, 1, 1, 0])


def _direct(model, name, x, targets, layer):
    """The maps of calling the method directly, batch by batch as the shards are, with each shard's seed."""
    cls = getattr(captum_attr, name, None) or getattr(our_attr, name)
    method = cls(model, layer) if "layer" in inspect.signature(cls.__init__).parameters else cls(model)
    parts = []
    for k, (start, stop) in enumerate([(0, 3), (3, 5)]):
        target = {} if name == "LayerActivation" else {"target": targets[start:stop]}
        with seeded_global_rng(_shard_seed(0, k)):
            maps = method.attribute(x[start:stop], **target, **KWARGS.get(name, {}))
        if maps.dim() == 4 and maps.shape[-2:] != x.shape[-2:]:  # layer maps at the input's size
            maps = captum_attr.LayerAttribution.interpolate(maps, x.shape[-2:], interpolate_mode="bilinear")
        parts.append(maps)
    return torch.cat(parts)


@pytest.mark.parametrize("name", [n for n in method_names() if n not in CAPTUM_CANNOT])
def test_every_method_name_gives_the_maps_of_a_direct_call_for_each_target_rule(tmp_path, name):
    model, x = Net().eval(), images(5)
    layer = getattr(model, LAYERS[name]) if name in LAYERS else last_spatial_layer(model, x[:1])
    predicted = torch.cat([model(x[:3]).argmax(1), model(x[3:]).argmax(1)])
    rules = [("labels", TensorDataset(x, LABELS), "labels", LABELS),
             ("fixed", x, 2, torch.full((5,), 2)),
             ("predicted", x, None, predicted)]
    for rule, data, target, classes in rules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum's own warnings (requires_grad, LRP's layers, ...)
            result = explain_dataset(model, name, data, tmp_path / rule, target=target, batch_size=3,
                                     layer=LAYERS.get(name), attribute_kwargs=KWARGS.get(name))
            expected = _direct(model, name, x, classes, layer)
        assert result.targets.tolist() == classes.tolist(), rule
        assert torch.equal(result.maps(), expected.detach()), (rule, (result.maps() - expected).abs().max())


def test_the_method_captum_cannot_run_with_targets_still_fails_in_captum():
    """When Captum fixes it, CAPTUM_CANNOT above must shrink (the test of every method then covers it)."""
    model, x = Net().eval(), images(2)
    with pytest.raises(AssertionError, match="to select tensor of targets"):
        captum_attr.LayerFeaturePermutation(model, model.relu2).attribute(x, target=torch.tensor([0, 1]))


def test_a_method_that_draws_its_own_seed_gives_the_same_maps_on_every_run_and_resume(tmp_path):
    # InputAgnosticSaliency's seed defaults to a fresh one per call: two runs, or a resumed run, used to differ
    kwargs = {"n_steps": 2}
    first = explain_dataset(Net(), "InputAgnosticSaliency", images(), tmp_path / "a", batch_size=3,
                            attribute_kwargs=kwargs)
    second = explain_dataset(Net(), "InputAgnosticSaliency", images(), tmp_path / "b", batch_size=3,
                             attribute_kwargs=kwargs)
    assert torch.equal(first.maps(), second.maps())
    (tmp_path / "b" / shard_file_name(1)).unlink()
    explain_dataset(Net(), "InputAgnosticSaliency", images(), tmp_path / "b", batch_size=3, attribute_kwargs=kwargs)
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    other_seed = explain_dataset(Net(), "InputAgnosticSaliency", images(), tmp_path / "c", batch_size=3,
                                 attribute_kwargs=kwargs, seed=1)
    assert not torch.equal(other_seed.maps(), first.maps())  # the seed of explain_dataset reaches the method


# ---------------------------------------------------------------------------------------------- the data


class Tuples(Dataset):
    """A user's dataset: (image, label, file name) tuples with plain int labels."""

    def __init__(self, x, labels):
        self.x, self.labels_ = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels_[i]), f"img{i}.png"


class Dicts(Tuples):
    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.labels_[i])}


def test_tuples_and_an_ordered_loader_give_the_maps_of_the_tensor(tmp_path):
    x, labels = images(5), LABELS
    by_tensor = explain_dataset(Net(), "Saliency", x, tmp_path / "t", target=labels.tolist(), batch_size=2)
    tuples = explain_dataset(Net(), "Saliency", Tuples(x, labels), tmp_path / "d", target="labels", batch_size=2)
    loader = explain_dataset(Net(), "Saliency", DataLoader(Tuples(x, labels), batch_size=2), tmp_path / "l",
                             target="labels")
    for result in (tuples, loader):
        assert result.num_shards == 3 and result.targets.tolist() == labels.tolist()
        assert torch.equal(result.maps(), by_tensor.maps())


@pytest.mark.parametrize("data, message", [
    (Dicts(images(4), LABELS), r"data items must be an input tensor or \(input, label, ...\), got a batch of type "
                               "dict"),
    (DataLoader(TensorDataset(images(4)), batch_size=2, shuffle=True), "no shuffle"),
    (torch.zeros(0, 3, SIZE, SIZE), "N > 0"),
    (TensorDataset(torch.zeros(0, 3, SIZE, SIZE)), "data holds no examples"),
    (DataLoader(TensorDataset(torch.zeros(0, 3, SIZE, SIZE)), batch_size=2), "data holds no examples"),
], ids=["dicts", "shuffled loader", "empty tensor", "empty dataset", "empty loader"])
def test_data_it_cannot_take_is_refused_before_any_folder_or_model_call(tmp_path, data, message):
    model = Net()
    with pytest.raises(InvalidArgumentError, match=message):
        explain_dataset(model, "Saliency", data, tmp_path / "out", batch_size=2)
    assert not (tmp_path / "out").exists() and model.calls in ([], [1])


@pytest.mark.parametrize("bad", [0, 4])
def test_an_image_with_nan_is_refused_naming_the_example_and_keeps_the_shards_before_it(tmp_path, bad):
    x = images()
    x[bad, 1, 2, 3] = float("nan")
    start = bad // 3 * 3
    with pytest.raises(InvalidArgumentError, match=rf"data: examples {start}-{start + 2} hold NaN or infinite "
                                                   rf"values; the first is example {bad}$"):
        explain_dataset(Net(), "Saliency", x, tmp_path / "out", batch_size=3)
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*")) == [shard_file_name(k) for k in range(bad // 3)]


def test_a_nan_in_an_image_of_a_folder_is_named_by_its_file(tmp_path):
    x = images(4)
    x[3, 0, 0, 0] = float("inf")

    class Named(TensorDataset):
        names = ["a.png", "b.png", "c.png", "d.png"]

    with pytest.raises(InvalidArgumentError, match=r"the first is example 3 \(d\.png\)$"):
        explain_dataset(Net(), "Saliency", Named(x), tmp_path / "out", batch_size=4)


# ------------------------------------------------------------------------------- model and RNG as found


class Failing(Net):
    """Raises at call ``fail_at``: Ctrl-C or an error of the user's forward."""

    def __init__(self, fail_at, error):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.fail_at, self.error = fail_at, error

    def forward(self, x):
        if len(self.calls) == self.fail_at:
            raise self.error
        self.calls.append(x.shape[0])
        return self.fc(torch.flatten(self.pool(self.relu2(self.conv2(self.bn(self.relu1(self.conv1(x)))))), 1))


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("CUDA out of memory")])
def test_the_model_and_the_global_rng_come_back_as_found_after_a_failure_half_way(tmp_path, error):
    model = Failing(fail_at=4, error=error).train()
    model.pool.eval()
    model.conv1.weight.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    stats = {k: v.clone() for k, v in model.bn.state_dict().items()}
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(11), random.seed(11), np.random.seed(11)
    with pytest.raises(type(error)):
        explain_dataset(model, "IntegratedGradients", images(), tmp_path / "out", batch_size=3,
                        attribute_kwargs={"n_steps": 2})
    assert model.calls == [1, 3, 6, 3]  # output shape, shard 0 (top-1, IG), shard 1 top-1, then the failure
    assert [m.training for m in model.modules()] == flags and [p.requires_grad for p in model.parameters()] == grads
    assert all(torch.equal(v, stats[k]) for k, v in model.bn.state_dict().items())  # BN statistics untouched
    drawn = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(drawn[0], expected[0]) and drawn[1:] == expected[1:]


# ------------------------------------------------------------------------------------------ the command

_NETS = '''
import torch
from torch import nn


def body(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))


class _Wrapped(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.body = body(num_classes)


class Plain(_Wrapped):
    def forward(self, x):
        return self.body(x)


class NoGradForward(_Wrapped):
    """A forward written for inference: no gradient reaches anything."""
    def forward(self, x):
        with torch.no_grad():
            return self.body(x)


class DetachedScores(_Wrapped):
    def forward(self, x):
        return self.body(x).detach()


class DetachedInput(_Wrapped):
    """Gradients reach the layers but not the input."""
    def forward(self, x):
        return self.body(x.detach())
'''
ARCHS = ("Plain", "NoGradForward", "DetachedScores", "DetachedInput")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain user")
    (root / "explain_user_nets.py").write_text(_NETS)
    sys.path.insert(0, str(root))
    import explain_user_nets

    for arch in ARCHS:
        torch.manual_seed(0)
        save_file(getattr(explain_user_nets, arch)().state_dict(), str(root / f"{arch}.safetensors"))
    torch.save(images(3), root / "images.pt")
    yield root, explain_user_nets
    sys.path.remove(str(root))
    sys.modules.pop("explain_user_nets", None)


def _argv(root, arch, method, out, *extra):
    return ["explain", "--method", method, "--model", str(root / f"{arch}.safetensors"), "--arch",
            f"explain_user_nets:{arch}", "--input-shape", f"3,{SIZE},{SIZE}", "--images", str(root / "images.pt"),
            "--out", str(out), "--quiet", *extra]


REFUSED = [
    ("NoGradForward", "Saliency", "its input"),
    ("NoGradForward", "IntegratedGradients", "its input"),
    ("NoGradForward", "LayerGradCam", "layer 'body.3'"),
    ("NoGradForward", "SISE", "layer 'body.3'"),  # SISE's own refusal named its 'layers' argument, no option
    ("DetachedScores", "GuidedBackprop", "its input"),
    ("DetachedInput", "Saliency", "its input"),
]


@pytest.mark.parametrize("arch, method, what", REFUSED, ids=[f"{a}-{m}" for a, m, _ in REFUSED])
def test_a_model_without_gradients_is_a_usage_error_for_a_method_that_needs_them(user, tmp_path, capsys, arch,
                                                                                  method, what):
    root, _ = user
    out = tmp_path / "never"
    err = usage_error(_argv(root, arch, method, out), capsys)  # used to end in autograd's traceback
    line = err.strip().splitlines()[-1]
    assert line == (f"captum-global explain: error: --model: the model's scores do not depend on {what} through "
                    "autograd (does its forward run under torch.no_grad() or detach a tensor?); --method "
                    f"{method} needs their gradient; methods that need none (Occlusion, FeatureAblation, ...) "
                    "run on it")
    assert not out.exists()


@pytest.mark.parametrize("arch, method, extra", [
    ("NoGradForward", "Occlusion", ["--method-args", '{"sliding_window_shapes": [3, 2, 2]}']),
    ("NoGradForward", "FeatureAblation", []),
    ("DetachedScores", "RISE", ["--method-args", '{"n_masks": 4}']),
    ("DetachedInput", "LayerGradCam", []),  # its gradient is the layer's, which the forward keeps
], ids=["no grad-Occlusion", "no grad-FeatureAblation", "detached-RISE", "detached input-LayerGradCam"])
def test_a_method_that_needs_no_input_gradient_still_runs_on_such_a_model(user, tmp_path, capsys, arch, method,
                                                                            extra):
    root, nets = user
    assert main(_argv(root, arch, method, tmp_path / "out", *extra)) == 0
    model = getattr(nets, arch)()
    model.load_state_dict(load_file(str(root / f"{arch}.safetensors")))
    model.eval()
    x = torch.load(root / "images.pt")
    targets = model(x).argmax(1)
    kwargs = json.loads(extra[1]) if extra else {}
    if method == "LayerGradCam":
        layer = last_spatial_layer(model, x[:1])
        maps = captum_attr.LayerGradCam(model, layer).attribute(x, target=targets)
        expected = captum_attr.LayerAttribution.interpolate(maps, (SIZE, SIZE), interpolate_mode="bilinear")
    else:
        method_class = getattr(captum_attr, method, None) or getattr(our_attr, method)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        with seeded_global_rng(_shard_seed(0, 0)):
            expected = method_class(model).attribute(x, target=targets, **kwargs)
    assert torch.allclose(read_explanations(tmp_path / "out").maps(), expected, atol=1e-6)


def test_the_scan_and_explain_refuse_such_a_model_with_one_shared_check(user, tmp_path, capsys):
    root, _ = user
    scan = ["scan", "--model", str(root / "NoGradForward.safetensors"), "--arch", "explain_user_nets:NoGradForward",
            "--input-shape", f"3,{SIZE},{SIZE}", "--clean", str(root / "images.pt"), "--out", str(tmp_path / "s"),
            "--quiet"]
    line = usage_error(scan, capsys).strip().splitlines()[-1]
    assert line == ("captum-global scan: error: --model: the model's scores do not depend on its input through "
                    "autograd (does its forward run under torch.no_grad() or detach a tensor?); the scan needs "
                    "their gradient")
    from captum_global.cli import _args, _explain, _scan

    assert not hasattr(_scan, "_classes_with_gradients")  # one copy, in _args, used by both commands
    assert _scan.classes_with_gradients is _args.classes_with_gradients is _explain.classes_with_gradients


def test_layer_activation_runs_by_name_from_the_command(user, tmp_path, capsys):
    # LayerActivation's attribute takes no target: explain_dataset passed one and it ended in a TypeError
    root, _ = user
    assert main(_argv(root, "Plain", "LayerActivation", tmp_path / "out")) == 0
    result = read_explanations(tmp_path / "out")
    assert result.maps().shape == (3, 4, SIZE, SIZE)
