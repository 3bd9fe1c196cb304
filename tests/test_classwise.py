"""Tests of ClassWiseSynthesis (gradient-matching class-wise global explanation)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum.attr import NoiseTunnel
from captum_global.attr import ClassWiseSynthesis, GradientMatchingSynthesis
from captum_global.attr._gradient_matching import class_gradient, gradient_distance, weight_points

sys.path.insert(0, str(Path(__file__).parent))
from _distributed_worker import SETTINGS, problem  # noqa: E402

FAST = dict(iterations=10, batch_size=8)


@pytest.fixture(autouse=True)
def one_thread():
    # Double backward of tiny convolutions is dominated by thread hand-offs on
    # the shared 2-core machine: one thread is ~8x faster there.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(classes=3, act=nn.ReLU, bn=True, dtype=torch.float32):
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1)] + ([nn.BatchNorm2d(4)] if bn else []) + [
        act(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes)]
    return nn.Sequential(*layers).to(dtype)


def labelled(n=24, classes=3, size=6, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=gen, dtype=dtype)
    y = torch.arange(n) % classes
    x[torch.arange(n), y % 3] += 0.4  # class c brightens channel c: learnable
    return TensorDataset(x.clamp(0, 1), y)


def trained(data, classes=3, steps=60):
    model = tiny(classes)
    x, y = data.tensors
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_shapes_grouping_and_access():
    data = labelled()
    r = ClassWiseSynthesis(tiny()).attribute(data, classes=[2, 0], images_per_class=3, **FAST)
    assert r.images.shape == (2, 3, 3, 6, 6) and r.classes == (2, 0)
    assert r.initial_images.shape == r.images.shape
    assert r.confidence.shape == r.predictions.shape == (2, 3)
    assert r.loss_history.shape == (FAST["iterations"],)
    assert r.initial_distance.shape == r.final_distance.shape == (2,)
    assert torch.equal(r[2], r.images[0]) and torch.equal(r.as_dict()[0], r.images[1])
    assert r.counts.tolist() == [8, 8]
    assert r.images.min() >= 0 and r.images.max() <= 1  # value_range clamp
    with pytest.raises(KeyError, match="not synthesised"):
        r[1]
    assert GradientMatchingSynthesis is ClassWiseSynthesis
    assert ClassWiseSynthesis.get_name() == "Class-wise Synthesis"


def test_deterministic_under_seed_and_batching():
    data, model = labelled(), tiny()
    method = ClassWiseSynthesis(model)
    a = method.attribute(data, seed=1, **FAST)
    b = method.attribute(data, seed=1, iterations=10, batch_size=5)  # batching never changes results
    c = method.attribute(data, seed=2, **FAST)
    assert torch.allclose(a.images, b.images, atol=1e-5)
    assert not torch.allclose(a.images, c.images)
    loader = DataLoader(data, batch_size=7)  # a DataLoader is read as is
    d = method.attribute(loader, seed=1, iterations=10)
    assert torch.allclose(a.images, d.images, atol=1e-5)


def test_matching_loss_decreases_and_model_agrees():
    data = labelled(n=30)
    model = trained(data)
    r = ClassWiseSynthesis(model).attribute(data, images_per_class=2, iterations=60)
    assert (r.final_distance < 0.7 * r.initial_distance).all()
    assert r.loss_history[-10:].mean() < 0.7 * r.loss_history[0]
    assert (r.predictions == torch.tensor(r.classes).view(-1, 1)).all()


def test_distance_equals_hand_computation():
    g1 = [torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([5.0, 1.0])]
    g2 = [torch.tensor([[1.0, 1.0], [0.0, -3.0]]), torch.tensor([0.0, 9.0])]
    # row 0: cos = 1/sqrt(2); row 1: cos = -1; the bias is left out.
    expected = (1 - 1 / 2 ** 0.5) + 2
    assert torch.isclose(gradient_distance(g1, g2), torch.tensor(expected), atol=1e-5)
    assert torch.isclose(gradient_distance(g1, g2, "mse"), torch.tensor(1.0 + 25.0))
    conv = torch.arange(24.0).view(2, 3, 2, 2)  # conv rows flatten in*kh*kw
    rows = conv.view(2, 12)
    flipped = torch.stack([rows[0], -rows[1]]).view(2, 3, 2, 2)
    assert torch.isclose(gradient_distance([conv], [flipped]), torch.tensor(2.0), atol=1e-5)
    with pytest.raises(ValueError, match="distance"):
        gradient_distance(g1, g2, "l1")


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.floats(0.01, 100.0), st.integers(0, 10_000))
def test_cosine_distance_properties(rows, cols, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    b = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    d = gradient_distance([a], [b])
    assert 0 <= d <= 2 * rows + 1e-9
    assert torch.isclose(gradient_distance([a * scale], [b]), d, atol=1e-4)  # scale invariant
    assert gradient_distance([a], [a]) < 1e-4 * rows


def test_synthetic_side_gradient_gradcheck():
    model = tiny(act=nn.Tanh, dtype=torch.float64).eval()  # smooth, so second derivatives exist
    point = weight_points(model, None, torch.device("cpu"))[0]
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    gen = torch.Generator().manual_seed(0)
    real = [torch.randn(point[n].shape, generator=gen, dtype=torch.float64) for n in names]
    x = torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for distance in ("cosine", "mse"):
        def f(s):
            return gradient_distance(class_gradient(model, point, names, s, 1, create_graph=True), real, distance)
        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_real_target_is_full_class_mean_gradient():
    data, model = labelled(n=20), tiny().eval()
    method = ClassWiseSynthesis(model)
    rg = method.real_class_gradients(data, classes=[1], batch_size=3)
    x, y = data.tensors
    model.zero_grad()
    F.cross_entropy(model(x[y == 1]), y[y == 1]).backward()
    expected = [p.grad for p in model.parameters() if p.dim() >= 2]
    for got, want in zip(rg.grads[0][0], expected):
        assert torch.allclose(got, want, atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_checkpoints_and_reuse_of_targets(tmp_path):
    data, model = labelled(), tiny()
    method = ClassWiseSynthesis(model)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    one = method.attribute(data, iterations=0)
    two = method.attribute(data, iterations=0, checkpoints=[path, model.state_dict()])
    # Gradients at three identical points: the objective is three times one.
    assert torch.allclose(two.initial_distance, 3 * one.initial_distance, atol=1e-4)
    rg = method.real_class_gradients(data, batch_size=8)
    assert torch.allclose(method.attribute(rg, seed=4, iterations=5).images,
                          method.attribute(data, seed=4, iterations=5, batch_size=8).images, atol=1e-6)
    with pytest.raises(ValueError, match="checkpoints"):
        method.attribute(data, checkpoints=[{"0.weight": torch.zeros(4, 3, 3, 3)}])
    with pytest.raises(ValueError, match="parameters and checkpoints"):
        method.attribute(rg, checkpoints=[path])


def test_real_init_draws_examples_of_the_class_and_options():
    data = labelled()
    x, y = data.tensors
    method = ClassWiseSynthesis(tiny())
    r = method.attribute(data, init="real", images_per_class=2, iterations=0, classes=[1, 2])
    for row, c in zip(r.initial_images, r.classes):
        for img in row:
            hit = (x - img).flatten(1).abs().amax(1) == 0
            assert hit.any() and (y[hit] == c).all()
    r = method.attribute(data, distance="mse", parameters=["5"], priors={"tv": 0.1, "l2": 0.1},
                         augment=lambda s: torch.roll(s, 1, dims=-1), iterations=3,
                         optimizer="sgd", lr=0.5, momentum=0.9)
    assert torch.isfinite(r.images).all()
    with pytest.raises(ValueError, match="init='real'"):
        method.attribute(data, init="real", images_per_class=9, iterations=0)


def test_model_untouched():
    model, data = tiny(), labelled()
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    ClassWiseSynthesis(model).attribute(data, init="real", images_per_class=2,
                                        checkpoints=[model.state_dict()], **FAST)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BatchNorm statistics
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


class Unlabelled(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.rand(3, 6, 6)


def test_clear_errors():
    data = labelled(classes=2)  # class 2 of the 3-logit model has no example
    method = ClassWiseSynthesis(tiny())
    with pytest.raises(ValueError, match=r"classes \[2\] have no examples"):
        method.attribute(data, iterations=1)
    with pytest.raises(ValueError, match="classes"):
        method.attribute(data, classes=[0, 3], iterations=1)
    with pytest.raises(ValueError, match="classes"):
        method.attribute(data, classes=[-1], iterations=1)
    with pytest.raises(ValueError, match=r"\(input, label\)"):
        method.attribute(Unlabelled(), iterations=1)
    with pytest.raises(ValueError, match="empty"):
        method.attribute(TensorDataset(torch.rand(0, 3, 6, 6), torch.zeros(0).long()))
    for kwargs, word in (({"init": "zeros"}, "init"), ({"distance": "l1"}, "distance"),
                         ({"images_per_class": 0}, "images_per_class"),
                         ({"priors": {"tvv": 1.0}}, "priors"), ({"value_range": (1, 0)}, "value_range"),
                         ({"parameters": ["nope"]}, "parameters"), ({"optimizer": "lbfgs"}, "optimizer"),
                         ({"lr": -1.0}, "lr")):
        with pytest.raises(ValueError, match=word):
            method.attribute(data, classes=[0], **kwargs)
    with pytest.raises(TypeError, match="NoiseTunnel"):
        method.attribute(torch.rand(2, 3, 6, 6))
    with pytest.raises(TypeError, match="NoiseTunnel"):
        NoiseTunnel(method).attribute(torch.rand(2, 3, 6, 6), nt_samples=2)


def test_two_gloo_processes_equal_one(tmp_path):
    model, data = problem()
    single = ClassWiseSynthesis(model).attribute(data, **SETTINGS)
    worker = Path(__file__).parent / "_distributed_worker.py"
    out, init = tmp_path / "rank0.pt", tmp_path / "init"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", str(init), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    try:
        logs = [p.communicate(timeout=90)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), logs
    got = torch.load(out, weights_only=True)
    assert got["counts"].tolist() == single.counts.tolist()
    assert torch.allclose(got["initial"], single.initial_images)  # same real examples chosen
    assert torch.allclose(got["images"], single.images, atol=1e-8)
    assert torch.allclose(got["final_distance"], single.final_distance, atol=1e-8)


def test_reference_model_synthetic_images_are_classified_as_their_class():
    world = pytest.importorskip("captum_global.world")
    if not hasattr(world, "load_reference_model"):
        pytest.skip("captum_global.world.load_reference_model not available yet")
    model = world.load_reference_model("vgg", "clean")
    data = world.make_dataset(250, seed=11)
    r = ClassWiseSynthesis(model).attribute(data, iterations=25, batch_size=125)
    assert (r.predictions == torch.tensor(r.classes).view(-1, 1)).float().mean() >= 0.8
    assert r.confidence.median() > 0.8
    assert (r.final_distance < r.initial_distance).all()
