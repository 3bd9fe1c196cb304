"""ClassWiseSynthesis as a user runs it on their own model, data and checkpoints.

Each test follows docs/use/classwise.md and the docstrings, with the
expected values computed independently (plain torch on a copy of the model).
What tests/test_classwise.py, test_global_methods_contract.py,
test_unusual_inputs.py and test_captum_interop.py already hold (the mismatch
messages of state dicts, malicious pickles, DataParallel names, the note,
batch sizes, float64, dataset order) is not repeated here.
"""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_global.attr import ClassWiseResult, ClassWiseSynthesis
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

CLASSES = 3


def net(seed: int = 0) -> nn.Module:
    """A tiny CNN with BatchNorm that has tracked statistics (a trained model's)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, CLASSES))
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.8, 1.2)
        model[1].num_batches_tracked.fill_(7)
    return model.eval()


def moved(state: dict, by: float) -> dict:
    """A later checkpoint: every floating tensor shifted (BatchNorm statistics too)."""
    return {k: v + by if v.is_floating_point() else v.clone() for k, v in state.items()}


def tensors(n: int = 15, size: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen)
    y = torch.arange(n) % CLASSES
    x[torch.arange(n), y] += 0.3  # class c brightens channel c
    return x.clamp(0, 1), y


def weights(model: nn.Module):
    return [p for p in model.parameters() if p.dim() >= 2]


def _trajectory(model: nn.Module):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return [sd, moved(sd, 0.05), moved(sd, 0.11)]


def _same(a: ClassWiseResult, b: ClassWiseResult) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.distances, b.distances) and torch.equal(a.initial_distances, b.initial_distances)
    assert len(a.trajectory) == len(b.trajectory)
    for pa, pb in zip(a.trajectory, b.trajectory):
        assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


FAST = dict(iterations=3, batch_size=4, seed=2)


# ---------------------------------------------------------------- checkpoints in the forms users hold them


def _forms(trajectory, tmp_path):
    from safetensors.torch import save_file

    pt, st = [], []
    for i, sd in enumerate(trajectory):
        torch.save(sd, tmp_path / f"epoch{i}.pt")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / f"epoch{i}.safetensors"))
        pt.append(tmp_path / f"epoch{i}.pt")
        st.append(str(tmp_path / f"epoch{i}.safetensors"))

    def models():  # a callable yielding models, loaded one at a time
        for sd in trajectory:
            m = net(seed=9)
            m.load_state_dict(sd)
            yield m

    compiled = torch.compile(net(seed=9))  # only its state dict's names are read: nothing is compiled
    compiled_names = []
    for sd in trajectory:
        compiled.load_state_dict({"_orig_mod." + k: v for k, v in sd.items()})
        compiled_names.append({k: v.clone() for k, v in compiled.state_dict().items()})
    assert all(k.startswith("_orig_mod.") for k in compiled_names[0])
    return {
        ".pt files": lambda: pt,
        ".safetensors files": lambda: st,
        "a tuple": lambda: tuple(trajectory),
        "a callable yielding models": lambda: models,
        "a generator": lambda: (sd for sd in trajectory),
        "a generator of files": lambda: (p for p in pt),
        "torch.compile names (_orig_mod.)": lambda: compiled_names,
    }


@pytest.mark.parametrize("mode", ["gradient", "trajectory"])
def test_every_checkpoint_form_gives_the_result_of_the_list_of_state_dicts(tmp_path, mode):
    x, y = tensors()
    model = net()
    trajectory = _trajectory(model)
    options = dict(FAST, mode=mode)
    if mode == "trajectory":
        options.update(student_steps=2)
    method = ClassWiseSynthesis(model)
    reference = method.attribute(TensorDataset(x, y), checkpoints=trajectory, **options)
    assert reference.note == "" and len(reference.trajectory) == 3
    for label, form in _forms(trajectory, tmp_path).items():
        got = method.attribute(TensorDataset(x, y), checkpoints=form(), **options)
        try:
            _same(got, reference)
        except AssertionError:
            raise AssertionError(f"checkpoints as {label} gave another result") from None
    names = method.attribute(TensorDataset(x, y), checkpoints=[tmp_path / "epoch0.pt"], iterations=0).checkpoint_names
    assert names == ("checkpoints[0] (epoch0.pt)",)


def test_a_generator_of_checkpoints_is_read_once_and_a_consumed_one_is_refused_saying_so():
    """A generator is consumed by the first run; passed again it holds nothing. It said only "checkpoints
    holds no checkpoint", which reads as if the generator were wrong, not used up."""
    x, y = tensors()
    model = net()
    trajectory = _trajectory(model)
    method = ClassWiseSynthesis(model)
    generator = (sd for sd in trajectory)
    first = method.attribute(TensorDataset(x, y), checkpoints=generator, **FAST)
    _same(first, method.attribute(TensorDataset(x, y), checkpoints=trajectory, **FAST))
    with pytest.raises(InvalidArgumentError, match=r"^checkpoints holds no checkpoint.*only once.*callable"):
        method.attribute(TensorDataset(x, y), checkpoints=generator, **FAST)
    # a callable returning a fresh generator is the reusable form the message points to
    again = lambda: (sd for sd in trajectory)  # noqa: E731
    _same(method.attribute(TensorDataset(x, y), checkpoints=again, **FAST),
          method.attribute(TensorDataset(x, y), checkpoints=again, **FAST))
    with pytest.raises(InvalidArgumentError, match=r"^checkpoints holds no checkpoint$"):  # no hint: nothing spent
        method.attribute(TensorDataset(x, y), checkpoints=lambda: iter([]), **FAST)


def test_a_torch_compiled_model_is_explained_as_the_module_it_wraps():
    """torch.compile's graphs do not take the double backward gradient matching needs: a compiled model
    failed after compiling with "torch.compile with aot_autograd does not currently support double
    backward". Its checkpoints carry the _orig_mod. prefix the docs say is recognised."""
    x, y = tensors()
    plain = net()
    trajectory = _trajectory(plain)
    compiled = torch.compile(net()).train()
    saved = [{"_orig_mod." + k: v for k, v in sd.items()} for sd in trajectory]
    for mode, extra in (("gradient", {}), ("trajectory", dict(student_steps=2))):
        expected = ClassWiseSynthesis(plain).attribute(TensorDataset(x, y), checkpoints=trajectory, mode=mode,
                                                       **FAST, **extra)
        got = ClassWiseSynthesis(compiled).attribute(TensorDataset(x, y), checkpoints=saved, mode=mode,
                                                     **FAST, **extra)
        _same(got, expected)
        assert torch.equal(got.confidence, expected.confidence)
    # no trajectory: the compiled model's own weights
    _same(ClassWiseSynthesis(compiled).attribute(TensorDataset(x, y), **FAST),
          ClassWiseSynthesis(plain).attribute(TensorDataset(x, y), **FAST))
    assert compiled.training and all(m.training for m in compiled.modules())  # flags given back


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, and users still hold such models
def test_a_torchscript_model_is_refused_naming_model():
    """TorchScript modules refuse torch.func.functional_call: it failed with torch's "The stateless API
    can't be used with Jitted modules" at the first checkpoint."""
    scripted = torch.jit.trace(net(), torch.rand(1, 3, 6, 6))
    with pytest.raises(InvalidArgumentTypeError, match=r"^model is a TorchScript module.*eager"):
        ClassWiseSynthesis(scripted)


def test_training_checkpoints_holding_model_and_optimizer_are_refused_naming_the_entry(tmp_path):
    x, y = tensors()
    model = net()
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    model.train()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # an optimizer state with nested tensors (exp_avg, exp_avg_sq) and plain numbers
    model.eval()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 1}
    torch.save(checkpoint, tmp_path / "last.pt")
    method = ClassWiseSynthesis(model)
    for given, where in ((checkpoint, r"checkpoints"), (tmp_path / "last.pt", r"checkpoints \(last\.pt\)"),
                         ([model.state_dict(), checkpoint], r"checkpoints\[1\]")):
        with pytest.raises(InvalidArgumentError, match=rf"^{where} is a training checkpoint with a 'model' entry.*"
                                                       r"pass checkpoint\['model'\]"):
            method.attribute(TensorDataset(x, y), checkpoints=given, **FAST)
    # doing what the message says works, and equals the plain state dict
    _same(method.attribute(TensorDataset(x, y), checkpoints=torch.load(tmp_path / "last.pt")["model"], **FAST),
          method.attribute(TensorDataset(x, y), checkpoints=model.state_dict(), **FAST))


def test_checkpoint_files_that_do_not_match_are_named_with_the_file_and_the_entry(tmp_path):
    from safetensors.torch import save_file

    x, y = tensors()
    model = net()
    good = model.state_dict()
    other = net()
    other[5] = nn.Linear(16, 5)  # another head: 5 classes
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "five.safetensors"))
    torch.save({k: v for k, v in good.items() if not k.startswith("1.")}, tmp_path / "no_bn.pt")
    method = ClassWiseSynthesis(model)
    with pytest.raises(InvalidArgumentError,
                       match=r"^checkpoints\[1\] \(five\.safetensors\)\['5\.weight'\] has shape \(5, 16\), "
                             r"the model's is \(3, 16\)"):
        method.attribute(TensorDataset(x, y), checkpoints=[good, tmp_path / "five.safetensors"], **FAST)
    with pytest.raises(InvalidArgumentError, match=r"^checkpoints\[0\] \(no_bn\.pt\) does not match the model: "
                                                   r"it lacks 5 entries.*'1\.bias'"):
        method.attribute(TensorDataset(x, y), checkpoints=[tmp_path / "no_bn.pt", good], **FAST)


# ---------------------------------------------------------------- data as users build it


class Pairs(Dataset):
    """(image, label) with the label in the form a user's dataset returns it."""

    def __init__(self, x, y, label):
        self.x, self.y, self.label = x, y, label

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.label(int(self.y[i]))


@pytest.mark.parametrize("label", [int, torch.tensor, np.int64, np.int32, np.uint8],
                         ids=["python int", "0-d tensor", "numpy int64", "numpy int32", "numpy uint8"])
def test_labels_as_python_numpy_or_0d_tensor_integers_give_the_tensor_dataset_result(label):
    x, y = tensors()
    method = ClassWiseSynthesis(net())
    expected = method.attribute(TensorDataset(x, y), real_examples=2, **FAST)
    for data in (Pairs(x, y, label), DataLoader(Pairs(x, y, label), batch_size=4)):
        got = method.attribute(data, real_examples=2, **FAST)
        torch.testing.assert_close(got.images, expected.images, rtol=0, atol=1e-6)
        assert got.counts.tolist() == [5, 5, 5]
    same = method.attribute(Pairs(x, y, label), real_examples=2, **FAST)
    assert all(torch.equal(same.real_examples[c], expected.real_examples[c]) for c in range(CLASSES))


@pytest.mark.parametrize("options", [dict(init="real", images_per_class=2), dict(real_examples=2),
                                     dict(match="clusters", images_per_class=2)],
                         ids=["init real", "real_examples", "clusters"])
def test_a_shuffled_data_loader_gives_the_result_of_the_unshuffled_one(options):
    """The real targets are class means (order-free); the real examples kept and the groups of
    match="clusters" were chosen by reading position, so a shuffled DataLoader gave other starting images,
    other kept examples and other groups, and one with its own generator (a new order per pass) another
    result on every call with the same seed."""
    x, y = tensors(n=24)
    method = ClassWiseSynthesis(net())
    data = TensorDataset(x, y)
    expected = method.attribute(DataLoader(data, batch_size=5), **FAST, **options)
    own_order = DataLoader(data, batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(3))
    for loader in (DataLoader(data, batch_size=7, shuffle=True), own_order, own_order):
        got = method.attribute(loader, **FAST, **options)
        torch.testing.assert_close(got.images, expected.images, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.distances, expected.distances, rtol=1e-5, atol=1e-6)
        assert got.real_examples.keys() == expected.real_examples.keys()
        assert all(torch.equal(got.real_examples[c], expected.real_examples[c]) for c in got.real_examples)
        if got.cluster_sizes is not None:
            assert torch.equal(got.cluster_sizes, expected.cluster_sizes)
    # still a seeded choice: another seed picks other real examples
    if options.get("init") == "real":
        other = method.attribute(DataLoader(data, batch_size=5), **dict(FAST, seed=5), **options)
        assert not torch.equal(other.initial_images, expected.initial_images)
        for row, c in enumerate(expected.classes):  # and they are examples of their class
            for img in expected.initial_images[row]:
                assert bool(((x[y == c] - img).flatten(1).abs().amax(1) == 0).any())


def test_bad_examples_and_labels_are_named_in_reading_order_across_batches():
    x, y = tensors()
    method = ClassWiseSynthesis(net())
    bad = x.clone()
    bad[9, 2, 0, 1] = float("nan")
    bad[13, 0, 3, 3] = float("inf")  # in a later batch: the read stops at the first bad one
    for data in (TensorDataset(bad, y), DataLoader(TensorDataset(bad, y), batch_size=3)):
        with pytest.raises(InvalidArgumentError, match=r"^data must be finite: example\(s\) \[9\] \(in reading"):
            method.attribute(data, **FAST)
    tail = x.clone()
    tail[[12, 13]] = float("nan")
    with pytest.raises(InvalidArgumentError, match=r"example\(s\) \[12, 13\]"):
        method.attribute(TensorDataset(tail, y), **FAST)
    for wrong in (-1, CLASSES):
        labels = y.clone()
        labels[10] = wrong
        with pytest.raises(InvalidArgumentError, match=rf"^data holds label {wrong}, outside the model's 3 outputs"):
            method.attribute(Pairs(x, labels, int), **FAST)
    # a class without examples: named, and synthesising the others works
    two = TensorDataset(x[y < 2], y[y < 2])
    with pytest.raises(InvalidArgumentError, match=r"classes \[2\] have no examples"):
        method.attribute(two, **FAST)
    assert method.attribute(two, classes=[1, 0], **FAST).classes == (1, 0)


# ---------------------------------------------------------------- the result, recomputed by hand


def _real_mean_gradient(model, x, y, c):
    loss = F.cross_entropy(model(x[y == c]), y[y == c])
    return [g.detach() for g in torch.autograd.grad(loss, weights(model))]


def _distance_by_hand(model, images, c, real, distance):
    loss = F.cross_entropy(model(images), torch.full((images.shape[0],), c))
    total = 0.0
    for g, r in zip(torch.autograd.grad(loss, weights(model)), real):
        a, b = g.reshape(g.shape[0], -1).double(), r.reshape(r.shape[0], -1).double()
        if distance == "cosine":
            total += float((1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).sum())
        else:
            total += float(((a - b) ** 2).sum())
    return total


@pytest.mark.parametrize("distance", ["cosine", "mse"])
def test_result_fields_of_a_one_checkpoint_run_recomputed_by_hand(distance):
    """distances at the checkpoint (its weights and BatchNorm statistics, eval mode); confidence and
    predictions at the model's own weights; the images inside value_range; the trajectory the checkpoint."""
    x, y = tensors()
    model = net()
    checkpoint = moved(model.state_dict(), 0.07)
    result = ClassWiseSynthesis(model).attribute(TensorDataset(x, y), checkpoints=checkpoint, classes=[2, 0],
                                                 images_per_class=2, distance=distance, value_range=(0.1, 0.8),
                                                 iterations=4, lr=0.05, batch_size=4)
    assert isinstance(result, ClassWiseResult) and result.mode == "gradient"
    assert result.images.shape == (2, 2, 3, 6, 6) and result.images.dtype == torch.float32
    assert result.classes == (2, 0) and result.counts.tolist() == [5, 5]
    assert float(result.images.min()) >= 0.1 and float(result.images.max()) <= 0.8
    assert result.loss_history.shape == (4,)
    assert result.checkpoint_names == ("checkpoints",) and result.note.startswith("one checkpoint was given")
    assert all(torch.equal(result.trajectory[0][k], checkpoint[k]) for k in checkpoint)
    at_checkpoint = net()
    at_checkpoint.load_state_dict(checkpoint)
    at_checkpoint.eval()
    assert result.distances.shape == result.initial_distances.shape == (1, 2)
    for row, c in enumerate(result.classes):
        real = _real_mean_gradient(at_checkpoint, x, y, c)
        for field, images in (("distances", result.images), ("initial_distances", result.initial_images)):
            expected = _distance_by_hand(at_checkpoint, images[row], c, real, distance)
            assert float(getattr(result, field)[0, row]) == pytest.approx(expected, rel=1e-4, abs=1e-6), field
    assert torch.equal(result.final_distance, result.distances.sum(0))
    assert torch.equal(result.initial_distance, result.initial_distances.sum(0))
    with torch.no_grad():
        own = torch.softmax(model(result.images.flatten(0, 1)), -1).view(2, 2, CLASSES)
        theirs = torch.softmax(at_checkpoint(result.images.flatten(0, 1)), -1).view(2, 2, CLASSES)
    expected = torch.stack([own[0, :, 2], own[1, :, 0]])
    torch.testing.assert_close(result.confidence, expected, rtol=1e-5, atol=1e-7)
    assert float((torch.stack([theirs[0, :, 2], theirs[1, :, 0]]) - expected).abs().max()) > 1e-3  # not these
    assert torch.equal(result.predictions, own.argmax(-1))
    text = result.summary()
    assert "one checkpoint" in text and f"{float(result.confidence[0].mean()):.3f}" in text


@pytest.mark.parametrize("parametrization", ["pixels", "spectrum"])
@pytest.mark.parametrize("mode", ["gradient", "trajectory"])
def test_zero_iterations_return_the_starting_images_exactly(mode, parametrization):
    """The spectrum's decode(encode(start)) rounds: zero steps returned images 1e-7 away from
    initial_images (and change maps |S - S_init| of pure rounding noise)."""
    x, y = tensors(size=8)
    model = net()
    options = dict(iterations=0, images_per_class=2, parametrization=parametrization, batch_size=8)
    if mode == "trajectory":
        options.update(mode="trajectory", checkpoints=_trajectory(model)[:2], student_steps=2)
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.25
    for init in ("noise", start):
        r = ClassWiseSynthesis(model).attribute(TensorDataset(x, y), init=init, **options)
        assert torch.equal(r.images, r.initial_images)
        if isinstance(init, torch.Tensor):
            assert all(torch.equal(r.images[i], start) for i in range(CLASSES))
        assert r.images.data_ptr() != r.initial_images.data_ptr()  # not one tensor under two names
        assert torch.equal(r.distances, r.initial_distances) and r.loss_history.shape == (0,)
        if mode == "trajectory":
            assert torch.equal(r.trajectory_distances, r.initial_trajectory_distances)


@pytest.mark.parametrize("mode", ["gradient", "trajectory"])
def test_spectrum_images_stay_inside_value_range(mode):
    """The spectrum is clamped through decode, clamp, encode; decoding again rounds, and the returned
    images were up to 1.6e-7 outside value_range (below 0.2, above 0.7 here)."""
    x, y = tensors(size=8)
    model = net()
    options = dict(optimizer="sgd", lr=50.0, momentum=0.0)
    if mode == "trajectory":
        options = dict(mode="trajectory", checkpoints=_trajectory(model)[:2], student_steps=2, lr=0.5)
    r = ClassWiseSynthesis(model).attribute(TensorDataset(x, y), iterations=3, parametrization="spectrum",
                                            value_range=(0.2, 0.7), batch_size=8, **options)
    assert float(r.images.min()) >= 0.2 and float(r.images.max()) <= 0.7
    assert float(r.images.min()) == pytest.approx(0.2) and float(r.images.max()) == pytest.approx(0.7)  # reached


# ---------------------------------------------------------------- the caller's model and random state


class Jittered(Dataset):
    """A dataset whose transform draws from torch's, NumPy's and Python's global RNGs (random flips and
    brightness), read through a DataLoader without workers."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = self.x[i] * (0.9 + 0.1 * float(np.random.rand())) + 0.02 * random.random()
        if bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        return img.clamp(0, 1), int(self.y[i])


def _caller_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].copy(),
        "python": random.getstate(),
    }


def _assert_as_found(before: dict, model: nn.Module) -> None:
    after = _caller_state(model)
    for name, value in before["tensors"].items():  # weights and BatchNorm statistics
        assert torch.equal(value, after["tensors"][name]), name
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert torch.equal(before["torch"], after["torch"]) and np.array_equal(before["numpy"], after["numpy"])
    assert before["python"] == after["python"]


def _users_model() -> nn.Module:
    model = net().train()  # left in train mode by the user's training loop
    model[0].weight.requires_grad_(False)  # a frozen layer
    return model


def test_a_jittering_loader_is_read_seeded_and_leaves_model_and_global_rngs_as_found():
    x, y = tensors()
    model = _users_model()
    checkpoints = _trajectory(net())[:2]  # net() seeds torch: before the caller's state is taken
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    before = _caller_state(model)
    loader = DataLoader(Jittered(x, y), batch_size=4, shuffle=True, num_workers=0)
    method = ClassWiseSynthesis(model)
    runs = [method.attribute(loader, checkpoints=checkpoints, mode=mode, init="real",
                             images_per_class=2, **FAST, **extra)
            for mode, extra in (("gradient", {}), ("gradient", {}), ("trajectory", dict(student_steps=2)))]
    _assert_as_found(before, model)
    assert torch.equal(runs[0].images, runs[1].images)  # the transform's draws are seeded by seed
    assert not bool(((x - runs[0].initial_images[0, 0]).flatten(1).abs().amax(1) == 0).any())  # jittered
    other = method.attribute(loader, init="real", images_per_class=2, **dict(FAST, seed=3))
    assert not torch.equal(other.initial_images, runs[0].initial_images)
    _assert_as_found(before, model)


class FailsAfter(nn.Module):
    """The user's model, raising at its n-th call (a CUDA OOM, a bad batch...); with ``optimised``, counting
    only calls on inputs that require grad (the synthetic set being optimised, not the real data)."""

    def __init__(self, inner: nn.Module, calls: int, optimised: bool = False):
        super().__init__()
        self.inner, self.calls, self.optimised, self.seen = inner, calls, optimised, 0

    def forward(self, x):
        if x.requires_grad or not self.optimised:
            self.seen += 1
        if self.seen > self.calls:
            raise RuntimeError("out of memory (simulated)")
        return self.inner(x)


def _prefixed(points, prefix="inner."):
    return [{prefix + k: v for k, v in sd.items()} for sd in points]


@pytest.mark.parametrize("where", ["streaming pass", "optimisation", "trajectory student", "bad data",
                                   "bad checkpoint"])
def test_an_error_raised_mid_run_leaves_model_and_global_rngs_as_found(where):
    x, y = tensors()
    inner = _users_model()
    calls = {"streaming pass": 3, "optimisation": 4, "trajectory student": 3}.get(where, 10**6)
    model = FailsAfter(inner, calls, optimised=where != "streaming pass")
    data = DataLoader(Jittered(x, y), batch_size=4, shuffle=True)
    options = dict(FAST, iterations=4)
    if where == "trajectory student":
        options.update(mode="trajectory", checkpoints=_prefixed(_trajectory(net())[:2]), student_steps=2)
    if where == "bad data":
        bad = x.clone()
        bad[-1] = float("nan")
        data = TensorDataset(bad, y)
    if where == "bad checkpoint":  # a generator whose third checkpoint is another model's
        options.update(checkpoints=(sd if k < 2 else {"inner.0.weight": sd["inner.0.weight"]}
                                    for k, sd in enumerate(_prefixed(_trajectory(net())))))
    torch.manual_seed(21)
    np.random.seed(22)
    random.seed(23)
    before = _caller_state(model)
    with pytest.raises((RuntimeError, InvalidArgumentError)) as info:
        ClassWiseSynthesis(model).attribute(data, **options)
    expected = {"bad data": r"example\(s\) \[14\]", "bad checkpoint": r"checkpoints\[2\] does not match"}
    assert info.match(expected.get(where, "out of memory"))
    if where in ("optimisation", "trajectory student"):  # raised after a step of the optimisation
        assert model.seen == calls + 1
    _assert_as_found(before, model)
    assert inner.training and not inner[0].weight.requires_grad
