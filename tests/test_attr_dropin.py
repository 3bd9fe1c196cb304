"""SISE, RISE and InputAgnosticSaliency dropped in where a Captum attribution goes.

Each test pins one behaviour a Captum user relies on, with exact comparisons
against an equivalent computation: NoiseTunnel as the mean of its noisy
draws, sensitivity_max and infidelity, the softmax rule (dimension 1, at
least two classes), one-element target tensors of any shape, models that
work in place on their input, per-example forward arguments of
InputAgnosticSaliency, awkward input layouts and the model's state after a
failure half-way.
"""
import random

import numpy as np
import pytest
import torch
from captum.attr import NoiseTunnel, Saliency
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from captum_global.attr import RISE, SISE, InputAgnosticSaliency, select_sise_layers
from captum_global.errors import InvalidArgumentError

N, CLASSES = 3, 4
TARGETS = [1, 2, 0]
FAST = {
    "SISE": {},
    "RISE": {"n_masks": 12, "perturbations_per_eval": 5},
    "InputAgnosticSaliency": {"n_steps": 2, "samples_per_step": 2, "seed": 0},
}
METHODS = list(FAST)


def tiny_net(classes: int = CLASSES, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).eval().to(dtype)


def images(n: int = N, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def method(name, model):
    cls = {"SISE": SISE, "RISE": RISE, "InputAgnosticSaliency": InputAgnosticSaliency}[name]
    return cls(model), dict(FAST[name])


def attribute(name, model, inputs, target=TARGETS, **kwargs):
    m, fixed = method(name, model)
    fixed.update(kwargs)
    return m.attribute(inputs, target=target, **fixed)


class TwoInputs(nn.Module):
    """Two image inputs, an optional per-example bias and a scale (forward arguments)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = tiny_net(), tiny_net()
        with torch.no_grad():
            for p in self.b.parameters():
                p.mul_(-0.5)

    def forward(self, x, y, scale=1.0, bias=None):
        out = self.a(x) + scale * self.b(y)
        return out if bias is None else out + bias


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# ---------------------------------------------------------------- NoiseTunnel, metrics, visualization


@pytest.mark.parametrize("name", ["SISE", "RISE"])
def test_noise_tunnel_is_the_mean_and_variance_of_the_method_on_its_noisy_draws(name):
    """Tuple inputs with a stdev each, one sample per model call: NoiseTunnel draws the noise of each
    partition from the global RNG (input by input); the method must neither consume that state nor
    mix targets and forward arguments between the expanded examples."""
    model = TwoInputs().eval()
    x, y = images(), images(seed=2) * 0.5
    bias = torch.randn(N, CLASSES, generator=torch.Generator().manual_seed(3))
    m, fixed = method(name, model)
    common = dict(target=TARGETS, additional_forward_args=(2.0, bias), **fixed)
    tunnel = NoiseTunnel(m)
    got = {}
    for nt_type in ("smoothgrad", "vargrad"):
        torch.manual_seed(7)
        got[nt_type] = tunnel.attribute((x, y), nt_type=nt_type, nt_samples=2, stdevs=(0.1, 0.2),
                                        nt_samples_batch_size=1, **common)
    torch.manual_seed(7)
    draws = []
    for _ in range(2):
        noisy = (x + torch.normal(0, torch.tensor(0.1).repeat(x.shape)),
                 y + torch.normal(0, torch.tensor(0.2).repeat(y.shape)))
        draws.append(m.attribute(noisy, **common))
    for i in range(2):
        mean = (draws[0][i] + draws[1][i]) / 2
        mean_sq = (draws[0][i] ** 2 + draws[1][i] ** 2) / 2
        torch.testing.assert_close(got["smoothgrad"][i], mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(got["vargrad"][i], mean_sq - mean ** 2, rtol=0, atol=1e-6)


def test_noise_tunnel_expands_per_example_forward_args_of_input_agnostic_saliency():
    model = TwoInputs().eval()
    x, y = images(), images(seed=2)
    bias = torch.randn(N, CLASSES, generator=torch.Generator().manual_seed(3))
    m, fixed = method("InputAgnosticSaliency", model)
    plain = m.attribute((x, y), target=TARGETS, additional_forward_args=(2.0, bias), **fixed)
    tunnel = NoiseTunnel(m).attribute((x, y), target=TARGETS, additional_forward_args=(2.0, bias), nt_samples=3,
                                      stdevs=(0.1, 0.3), nt_samples_batch_size=2, **fixed)
    for a, b in zip(tunnel, plain):  # its maps never read the input values
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_sensitivity_max_without_perturbation_is_zero(name):
    """A perturbation that changes nothing: every expanded example must get its own target and
    baseline back, whatever max_examples_per_batch, so the sensitivity is exactly the round-off."""
    model, x = tiny_net(), images()
    m, fixed = method(name, model)
    if name == "SISE":
        fixed["baselines"] = torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    sens = sensitivity_max(m.attribute, x, perturb_func=lambda inputs, perturb_radius=0.0: inputs,
                           target=TARGETS, n_perturb_samples=3, max_examples_per_batch=4, **fixed)
    torch.testing.assert_close(sens, torch.zeros(N), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_infidelity_of_the_attributions_is_its_formula(name):
    """One fixed perturbation I: infidelity = (sum(I * a) - (f(x)_t - f(x - I)_t))^2 per example."""
    model, x = tiny_net(), images()
    attributions = attribute(name, model, x)
    perturbation = torch.full_like(x, 0.05)

    def perturb(inputs):
        return perturbation[: inputs.shape[0]].clone(), inputs - perturbation[: inputs.shape[0]]

    got = infidelity(model, perturb, x, attributions, target=TARGETS, n_perturb_samples=1, normalize=False)
    with torch.no_grad():
        rows = torch.arange(N)
        drop = model(x)[rows, TARGETS] - model(x - perturbation)[rows, TARGETS]
    expected = ((perturbation * attributions).flatten(1).sum(1) - drop) ** 2
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_visualize_image_attr_draws_every_output(name):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from captum.attr import visualization as viz

    model = TwoInputs().eval()
    x, y = images(), images(seed=2)
    out = attribute(name, model, (x, y))
    assert isinstance(out, tuple) and len(out) == 2
    for attr in out:
        assert bool((attr >= 0).all())
        for how in ("heat_map", "blended_heat_map"):
            fig, ax = viz.visualize_image_attr(attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
                                               method=how, sign="positive", use_pyplot=False)
            assert fig is not None and ax is not None
            matplotlib.pyplot.close(fig)


# ---------------------------------------------------------------- the softmax rule


class Reshaped(nn.Module):
    """The tiny net's scores reshaped to ``[N, *shape]``."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.net = tiny_net(int(np.prod(shape)) if shape else 1)

    def forward(self, x):
        out = self.net(x)
        return out.reshape(out.shape[0], *self.shape)


def test_softmax_over_one_class_is_refused_by_every_method():
    """A softmax (or cross-entropy) over one class is constant, so every map built on it would be all
    zeros: each method refuses it."""
    one_class, x = Reshaped((1,)), images()
    with pytest.raises(InvalidArgumentError, match="apply_softmax=True needs at least two classes.*apply_softmax=False"):
        attribute("RISE", one_class, x, target=None)
    with pytest.raises(InvalidArgumentError, match="score='softmax' needs at least two classes.*score='logit'"):
        attribute("SISE", one_class, x, target=0, score="softmax")
    with pytest.raises(InvalidArgumentError, match="forward_func .*needs at least two classes"):
        attribute("InputAgnosticSaliency", one_class, x, target=0)
    # the raw score of an [N, 1] model is the [N] model's score, for every target form
    one_score = Reshaped(())
    expected = attribute("RISE", one_score, x, target=None, apply_softmax=False)
    assert expected.abs().max() > 0
    for target in (None, 0, -1, [0, 0, 0], torch.tensor([0])):
        got = attribute("RISE", one_class, x, target=target, apply_softmax=False)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_softmax_runs_over_dimension_one_for_sise_and_rise():
    """[N, A, B] outputs with tuple targets: "softmax" is over dimension 1 in both methods (SISE used
    the last dimension, RISE the first after the batch)."""
    model, x = Reshaped((3, 2)), images()
    target = [(1, 0), (2, 1), (0, -1)]
    sise = attribute("SISE", model, x, target=target, score="softmax")
    by_hand = attribute("SISE", model, x, target=target, score=lambda out: out.softmax(1))
    other_dim = attribute("SISE", model, x, target=target, score=lambda out: out.softmax(-1))
    torch.testing.assert_close(sise, by_hand, rtol=0, atol=0)
    assert not torch.allclose(sise, other_dim, atol=1e-3)  # the dimension matters for this model

    softmax_model = nn.Sequential(model, nn.Softmax(dim=1))
    torch.testing.assert_close(attribute("RISE", model, x, target=target),
                               attribute("RISE", softmax_model, x, target=target, apply_softmax=False),
                               rtol=0, atol=1e-7)


# ---------------------------------------------------------------- targets


def test_one_element_target_tensor_of_any_shape_is_one_class_for_all_as_in_captum():
    model, x = tiny_net(), images()
    captum = Saliency(model)  # Captum's rule, through its public API
    assert torch.equal(captum.attribute(x, target=torch.tensor([[2]])), captum.attribute(x, target=2))
    expected = attribute("RISE", model, x, target=[2, 2, 2])
    for target in (torch.tensor([[2]]), torch.tensor([[[-2]]], dtype=torch.int32)):
        torch.testing.assert_close(attribute("RISE", model, x, target=target), expected, rtol=0, atol=0)
    with pytest.raises(AssertionError):  # Captum refuses an [N, 1] tensor as well
        captum.attribute(x, target=torch.tensor([[1], [2], [0]]))
    with pytest.raises(InvalidArgumentError, match="target given as a tensor"):
        attribute("RISE", model, x, target=torch.tensor([[1], [2], [0]]))


# ---------------------------------------------------------------- models that work in place


class NormalisesInPlace(nn.Module):
    """Normalises its input in place, as some preprocessing wrappers do."""

    def __init__(self, in_place=True):
        super().__init__()
        self.in_place = in_place
        self.net = tiny_net()

    def forward(self, x):
        x = x.sub_(0.5) if self.in_place else x - 0.5
        return self.net(x)


@pytest.mark.parametrize("name", METHODS)
def test_model_that_changes_its_input_in_place_runs_on_copies(name):
    """SISE failed ("a leaf Variable that requires grad is being used in an in-place operation") after its
    layer search had already shifted the caller's images by 0.5; InputAgnosticSaliency failed the same way."""
    x = images()
    kept = x.clone()
    expected = attribute(name, NormalisesInPlace(in_place=False), x)
    got = attribute(name, NormalisesInPlace(in_place=True), x)
    assert torch.equal(x, kept)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_block_search_leaves_the_example_input_unchanged():
    x = images(1)
    kept = x.clone()
    assert select_sise_layers(NormalisesInPlace(), x) == ["net.2", "net.5"]
    assert torch.equal(x, kept)


# ---------------------------------------------------------------- forward arguments of InputAgnosticSaliency


class Biased(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x, bias, scale):
        return self.net(x) * scale + bias


def test_input_agnostic_per_example_forward_args_follow_the_class():
    """Captum expands per-example tensors with their example; the synthetic points of a class get the
    row of its examples (they crashed the model before: 'size of tensor a (6) must match (3)')."""
    model, x = Biased(), images()
    row = torch.tensor([0.5, -1.0, 2.0, 0.0])
    other = torch.tensor([1.0, 1.0, -3.0, 0.5])
    target = [1, 2, 1]
    shared = attribute("InputAgnosticSaliency", model, x, target=target, additional_forward_args=(row, 2.0))
    per_example = attribute("InputAgnosticSaliency", model, x, target=target,
                            additional_forward_args=(row.expand(N, 4).clone(), 2.0))
    torch.testing.assert_close(per_example, shared, rtol=0, atol=0)
    # rows that differ between classes: each class is the run of its own examples alone
    bias = torch.stack([row, other, row])
    batch = attribute("InputAgnosticSaliency", model, x, target=target, additional_forward_args=(bias, 2.0))
    for i, t in enumerate(target):
        alone = attribute("InputAgnosticSaliency", model, x[i:i + 1], target=t,
                          additional_forward_args=(bias[i:i + 1], 2.0))
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[1], shared[1], atol=1e-3)  # class 2 saw its own bias
    with pytest.raises(InvalidArgumentError, match=r"additional_forward_args\[0\].*examples 0 and 2.*target 1"):
        attribute("InputAgnosticSaliency", model, x, target=target,
                  additional_forward_args=(torch.stack([row, other, other]), 2.0))


# ---------------------------------------------------------------- input layouts and dtypes


@pytest.mark.parametrize("name", METHODS)
def test_input_layouts_give_the_same_map_and_leave_the_caller_s_tensors_alone(name):
    model, x = tiny_net(), images()
    expected = attribute(name, model, x)
    wide = torch.zeros(N, 3, 16, 32)
    wide[..., ::2] = x
    leaf = x.clone().requires_grad_(True)
    leaf.grad = torch.full_like(x, 3.0)
    layouts = {
        "channels_last": x.to(memory_format=torch.channels_last),
        "transposed": x.transpose(2, 3).contiguous().transpose(2, 3),
        "strided": wide[..., ::2],
        "leaf_requiring_grad": leaf,
        "non_leaf": x.clone().requires_grad_(True) * 1.0,
    }
    for layout, inputs in layouts.items():
        got = attribute(name, model, inputs)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=layout)
        assert not got.requires_grad and got.grad_fn is None, layout
    assert leaf.requires_grad and torch.equal(leaf.grad, torch.full_like(x, 3.0))
    assert all(p.grad is None for p in model.parameters())
    wide_model = tiny_net(dtype=torch.float64)
    double = attribute(name, wide_model, x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double, expected.double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["RISE", "InputAgnosticSaliency"])
def test_compiled_model_gives_the_eager_attributions(name):
    """torch.compile (eager backend, so the test stays fast on the CPU); SISE's is in test_sise_models."""
    model, x = tiny_net(), images()
    expected = attribute(name, model, x)
    compiled = torch.compile(model, backend="eager")
    torch.testing.assert_close(attribute(name, compiled, x), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- state after a failure half-way


class FailsOnThirdCall(nn.Module):
    """Train mode, MC dropout from the global RNG, BatchNorm, a frozen layer; the third forward fails."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net().train()
        self.net[0].weight.requires_grad_(False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("failing on purpose")
        h = nn.functional.dropout(self.net[:6](x), 0.3, training=True)
        return self.net[6:](h)


@pytest.mark.parametrize("name", METHODS)
def test_failure_half_way_restores_model_rng_and_grad_mode(name):
    model = FailsOnThirdCall()
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with pytest.raises(RuntimeError, match="failing on purpose"):
        attribute(name, model, images())
    assert model.calls == 3
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])
    assert torch.is_grad_enabled()
