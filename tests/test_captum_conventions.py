"""Captum's generic invariants, written for our classes.

Captum checks every attribution method with the same generic tests: no hook
left on any module after a run or after an error (a bad target must raise
``AssertionError``), every target format equal to the per-example list,
batch equal to per-example runs, NoiseTunnel wrapping, DataParallel and
TorchScript models. These are our versions for SISE, RISE and
InputAgnosticSaliency (ClassWiseSynthesis where it applies: it explains a
dataset, not inputs), on a tiny net with BatchNorm, so that a run that
touched the running statistics would show.
"""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import torch
from captum.attr import NoiseTunnel, Saliency
from torch import nn
from torch.utils.data import TensorDataset

from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency
from captum_global.errors import InvalidArgumentError

N, CLASSES = 3, 4
IAS_FAST = {"n_steps": 2, "samples_per_step": 2, "seed": 0}
RISE_FAST = {"n_masks": 12, "perturbations_per_eval": 5}


class ErrorModule(nn.Module):
    """Stands in for a layer and fails, as Captum's hook-removal test does."""

    def forward(self, *args):
        raise AssertionError("failing on purpose inside the forward pass")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    ).eval()


@pytest.fixture
def model():
    torch.set_num_threads(1)
    return tiny_net()


@pytest.fixture
def inputs():
    return torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def build(name, forward_func):
    """(attribution, fixed attribute keywords) for one of our methods."""
    if name == "SISE":
        return SISE(forward_func), {}
    if name == "RISE":
        return RISE(forward_func), dict(RISE_FAST)
    return InputAgnosticSaliency(forward_func), dict(IAS_FAST)


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def snapshot(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_unchanged(model: nn.Module, before) -> None:
    training, requires_grad, state = before
    assert hook_count(model) == 0
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def attribute(name, model, inputs, target, noise_tunnel=False, **kwargs):
    method, fixed = build(name, model)
    if noise_tunnel:
        return NoiseTunnel(method).attribute(inputs, target=target, nt_samples=2, stdevs=0.0, **fixed, **kwargs)
    return method.attribute(inputs, target=target, **fixed, **kwargs)


METHODS = ["SISE", "RISE", "InputAgnosticSaliency"]


# ---------------------------------------------------------------- hooks and model state


@pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "noise_tunnel"])
@pytest.mark.parametrize("name", METHODS)
def test_no_hook_left_and_model_untouched_after_a_run(name, noise_tunnel, model, inputs):
    model.train()  # a run must not switch modes for good, nor update BatchNorm statistics
    before = snapshot(model)
    attribute(name, model, inputs, [1, 2, 0], noise_tunnel)
    assert_unchanged(model, before)


BAD_TARGETS = {
    "captum_tuple": (9999,) * 20,  # the value Captum's own hook-removal test uses
    "too_large": 9999,
    "too_negative": -9999,
    "list_out_of_range": [9999] * N,
    "tensor_out_of_range": torch.full((N,), 9999),
    "list_too_short": [1],  # Captum refuses a list whose length is not N
}


@pytest.mark.parametrize("bad", list(BAD_TARGETS.values()), ids=list(BAD_TARGETS))
@pytest.mark.parametrize("noise_tunnel", [False, True], ids=["plain", "noise_tunnel"])
@pytest.mark.parametrize("name", METHODS)
def test_bad_target_raises_assertion_error_and_leaves_no_hook(name, noise_tunnel, bad, model, inputs):
    before = snapshot(model)
    with pytest.raises(AssertionError):
        attribute(name, model, inputs, bad, noise_tunnel)
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_failing_layer_leaves_no_hook(name, model, inputs):
    model[5] = ErrorModule()
    before = snapshot(model)
    with pytest.raises(AssertionError, match="failing on purpose"):
        attribute(name, model, inputs, [1, 2, 0])
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", METHODS)
def test_missing_target_for_a_multi_class_model_is_an_assertion_error(name, model, inputs):
    with pytest.raises(AssertionError, match="target"):
        attribute(name, model, inputs, None)


def _class_data():
    return TensorDataset(torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.arange(8) % CLASSES)


def test_class_wise_synthesis_leaves_no_hook_after_a_run(model):
    model.train()
    before = snapshot(model)
    ClassWiseSynthesis(model).attribute(_class_data(), classes=[0, 1], iterations=2, batch_size=4)
    assert_unchanged(model, before)


def test_class_wise_synthesis_bad_class_is_an_assertion_error_and_leaves_no_hook(model):
    before = snapshot(model)
    with pytest.raises(AssertionError, match="classes"):
        ClassWiseSynthesis(model).attribute(_class_data(), classes=[9999], iterations=2)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- targets


TARGET_FORMATS = {
    # name: (target, the equivalent per-example list)
    "int": (2, [2, 2, 2]),
    "negative_int": (-1, [3, 3, 3]),
    "numpy_int": (np.int64(2), [2, 2, 2]),
    "one_element_tensor": (torch.tensor(2), [2, 2, 2]),
    "tuple": ((2,), [2, 2, 2]),
    "list_of_tuples": ([(1,), (2,), (0,)], [1, 2, 0]),
    "tensor": (torch.tensor([1, 2, 0]), [1, 2, 0]),
    "numpy_array": (np.array([1, 2, 0]), [1, 2, 0]),
}


@pytest.mark.parametrize("name,fmt", [(n, f) for n in METHODS for f in TARGET_FORMATS])
def test_every_captum_target_format_equals_the_per_example_list(name, fmt, model, inputs):
    target, per_example = TARGET_FORMATS[fmt]
    expected = attribute(name, model, inputs, per_example)
    torch.testing.assert_close(attribute(name, model, inputs, target), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_batch_equals_per_example_runs(name, model, inputs):
    """Captum's targets test: row i of a batch run is the run on example i alone, with t[i] or [t[i]]."""
    targets = [1, 2, 0]
    batch = attribute(name, model, inputs, targets)
    for i, t in enumerate(targets):
        torch.testing.assert_close(attribute(name, model, inputs[i:i + 1], t), batch[i:i + 1], rtol=0, atol=1e-5)
        torch.testing.assert_close(attribute(name, model, inputs[i:i + 1], [t]), batch[i:i + 1], rtol=0, atol=1e-5)


def test_sise_batching_knob_never_changes_the_result(model, inputs):
    one = SISE(model).attribute(inputs, target=[1, 2, 0], perturbations_per_eval=1)
    many = SISE(model).attribute(inputs, target=[1, 2, 0], perturbations_per_eval=64)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- wrappers and Captum API


@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_without_noise_gives_back_the_method(name, model, inputs):
    """With stdevs=0 every sample is the input: smoothgrad is the map, smoothgrad_sq its square, vargrad 0."""
    method, fixed = build(name, model)
    plain = method.attribute(inputs, target=[1, 2, 0], **fixed)
    tunnel = NoiseTunnel(method)
    common = dict(target=[1, 2, 0], nt_samples=3, stdevs=0.0, **fixed)
    torch.testing.assert_close(tunnel.attribute(inputs, nt_type="smoothgrad", **common), plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(tunnel.attribute(inputs, nt_type="smoothgrad_sq", **common), plain ** 2,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(tunnel.attribute(inputs, nt_type="vargrad", **common), torch.zeros_like(plain),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_captum_api_surface(name, model, inputs):
    method, fixed = build(name, model)
    assert isinstance(method.get_name(), str) and method.get_name()
    assert hasattr(type(method).attribute, "__wrapped__")  # @log_usage, which NoiseTunnel unwraps
    assert method.has_convergence_delta() is False
    single = method.attribute(inputs, target=[1, 2, 0], **fixed)
    pair = method.attribute((inputs,), target=[1, 2, 0], **fixed)
    assert isinstance(single, torch.Tensor) and single.shape == inputs.shape
    assert isinstance(pair, tuple) and len(pair) == 1 and torch.equal(pair[0], single)
    assert not inputs.requires_grad


def test_no_convergence_delta_where_has_convergence_delta_is_false(model, inputs):
    method = InputAgnosticSaliency(model)
    maps = method.attribute(inputs, target=[1, 2, 0], **IAS_FAST)
    with pytest.raises(NotImplementedError):
        method.compute_convergence_delta(maps, torch.zeros_like(inputs), inputs, target=[1, 2, 0])


# ---------------------------------------------------------------- DataParallel and TorchScript


@pytest.mark.parametrize("name", METHODS)
def test_data_parallel_wrapper_gives_the_same_attributions(name, model, inputs):
    """On the CPU DataParallel runs its module directly; the attributions must not change."""
    expected = attribute(name, model, inputs, [1, 2, 0])
    wrapped = nn.DataParallel(model)
    torch.testing.assert_close(attribute(name, wrapped, inputs, [1, 2, 0]), expected, rtol=0, atol=1e-6)
    assert hook_count(model) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", METHODS)
def test_cuda_and_data_parallel_match_the_cpu(name, model, inputs):
    expected = attribute(name, model, inputs, [1, 2, 0])
    cuda_model = copy.deepcopy(model).cuda()
    for forward in (cuda_model, nn.DataParallel(cuda_model)):
        got = attribute(name, forward, inputs.cuda(), [1, 2, 0])
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("compile_mode", ["trace", "script"])
def test_input_agnostic_saliency_on_torchscript_equals_eager(compile_mode, model, inputs):
    scripted = torch.jit.trace(model, inputs) if compile_mode == "trace" else torch.jit.script(model)
    expected = InputAgnosticSaliency(model).attribute(inputs, target=[1, 2, 0], **IAS_FAST)
    got = InputAgnosticSaliency(scripted).attribute(inputs, target=[1, 2, 0], **IAS_FAST)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the reference point: Captum's own gradient methods run on TorchScript too
    torch.testing.assert_close(Saliency(scripted).attribute(inputs, target=1), Saliency(model).attribute(inputs, target=1))


@pytest.mark.parametrize("compile_mode", ["trace", "script"])
def test_sise_says_torchscript_is_unsupported(compile_mode, model, inputs):
    """SISE reads layer activations through forward hooks, which TorchScript modules do not run."""
    scripted = torch.jit.trace(model, inputs) if compile_mode == "trace" else torch.jit.script(model)
    with pytest.raises(InvalidArgumentError, match="(?i)torchscript"):
        SISE(scripted).attribute(inputs, target=[1, 2, 0])


@settings(max_examples=5, deadline=None)
@given(st.lists(st.integers(0, CLASSES - 1), min_size=N, max_size=N))
def test_sise_target_list_tensor_array_and_tuples_agree(targets):
    torch.set_num_threads(1)
    model, inputs = tiny_net(), torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    sise = SISE(model)
    expected = sise.attribute(inputs, target=targets)
    for same in (torch.tensor(targets), np.array(targets), [(t,) for t in targets]):
        torch.testing.assert_close(sise.attribute(inputs, target=same), expected, rtol=0, atol=1e-6)


def test_rise_batching_knob_never_changes_the_result(model, inputs):
    one = RISE(model).attribute(inputs, target=[1, 2, 0], n_masks=130, perturbations_per_eval=1)
    many = RISE(model).attribute(inputs, target=[1, 2, 0], n_masks=130, perturbations_per_eval=1000)
    torch.testing.assert_close(one, many, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- global random state, grad modes, devices


class MCDropoutNet(nn.Module):
    """Monte-Carlo dropout: the forward pass draws from the global RNG, whatever the training flag."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        return self.net(nn.functional.dropout(x, 0.2, training=True))


@pytest.mark.parametrize("name", METHODS)
def test_model_drawing_from_the_global_rng_leaves_it_as_found(name, inputs):
    """The caller's global RNG is restored after a run and after an error, and two runs agree."""
    model = MCDropoutNet()
    state = torch.get_rng_state()
    first = attribute(name, model, inputs, [1, 2, 0])
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(attribute(name, model, inputs, [1, 2, 0]), first, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="target"):
        attribute(name, model, inputs, 9999)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", METHODS)
def test_same_result_under_no_grad_and_inference_mode(name, model, inputs):
    expected = attribute(name, model, inputs, [1, 2, 0])
    with torch.no_grad():
        torch.testing.assert_close(attribute(name, model, inputs, [1, 2, 0]), expected, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(attribute(name, model, inputs, [1, 2, 0]), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_meta_model_and_meta_inputs_are_named(name, model, inputs):
    with pytest.raises(InvalidArgumentError, match="forward_func.*'meta' device"):
        attribute(name, tiny_net().to("meta"), inputs, [1, 2, 0])
    with pytest.raises(InvalidArgumentError, match="inputs.*'meta' device"):
        attribute(name, model, inputs.to("meta"), [1, 2, 0])


@pytest.mark.parametrize("name", ["SISE", "InputAgnosticSaliency"])
def test_gradient_methods_name_weights_made_under_inference_mode(name, inputs):
    with torch.inference_mode():
        frozen = tiny_net()
    with pytest.raises(InvalidArgumentError, match="forward_func.*inference_mode"):
        attribute(name, frozen, inputs, [1, 2, 0])
    # RISE needs no gradient: it runs such a model
    assert RISE(frozen).attribute(inputs, target=[1, 2, 0], **RISE_FAST).shape == inputs.shape


# ---------------------------------------------------------------- no signal


class FrozenConstant(nn.Module):
    """Runs its layers but ignores them: no autograd path from the input to the output at all."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        self.net(x)
        return torch.tensor([0.5, 1.0, -2.0, 3.0]).expand(x.shape[0], CLASSES)


class ConnectedConstant(nn.Module):
    """Ignores its input, but the output stays in the autograd graph of the input."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        return self.net(x) * 0 + torch.tensor([0.5, 1.0, -2.0, 3.0])


@pytest.mark.parametrize("constant", [FrozenConstant, ConnectedConstant])
@pytest.mark.parametrize("name", METHODS)
def test_a_model_that_ignores_its_input_gets_all_zero_maps(name, constant, inputs):
    maps = attribute(name, constant(), inputs, [1, 2, 0])
    assert torch.equal(maps, torch.zeros_like(inputs))


class ScaledLinear(nn.Module):
    """``s_i * <w, x_i>``: linear in the input, per-example scale as a forward argument."""

    def __init__(self, size=8):
        super().__init__()
        self.w = torch.linspace(-1.0, 1.0, 3 * size * size).view(1, 3, size, size)

    def forward(self, x, scale):
        return ((x * self.w).flatten(1).sum(1) * scale).unsqueeze(1)


def test_rise_no_signal_example_is_zero_and_the_others_are_its_formula():
    """Example 0 has scale 0 (every masked score equal): zero map. Example 1 is sum_i f(x M_i) M_i / (n p1)."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    scale = torch.tensor([0.0, 1.5])
    settings_ = dict(n_masks=30, p1=0.5, seed=2**63 - 1)  # the largest seed check_seed accepts
    got = RISE(ScaledLinear()).attribute(x, target=None, additional_forward_args=(scale,), apply_softmax=False,
                                         perturbations_per_eval=7, **settings_)
    masks = torch.cat(list(RISE.masks(8, 8, **settings_)))
    scores = ScaledLinear()(x[1] * masks, scale[1])  # [30, 1]
    expected = (scores.view(-1, 1, 1, 1) * masks).sum(0) / (30 * 0.5)
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    torch.testing.assert_close(got[1], expected.expand(3, 8, 8), rtol=0, atol=1e-5)


def test_rise_masks_that_keep_everything_carry_no_signal(model, inputs):
    """p1 = 1 keeps every cell: every mask is all ones (up to the upsampling's round-off), every score
    the same, so the map is zero rather than the masks' coverage times the score."""
    masks = torch.cat(list(RISE.masks(16, 16, n_masks=5, p1=1.0)))
    torch.testing.assert_close(masks, torch.ones_like(masks), rtol=0, atol=1e-6)
    assert torch.equal(RISE(model).attribute(inputs, target=1, n_masks=5, p1=1.0), torch.zeros_like(inputs))


class OneScore(nn.Module):
    """One score per example, shape [N]."""

    def __init__(self):
        super().__init__()
        self.net = tiny_net()

    def forward(self, x):
        return self.net(x)[:, 0]


def test_softmax_over_one_score_per_example_is_refused(inputs):
    """A softmax over an [N] output would run across the batch and mix the examples."""
    with pytest.raises(InvalidArgumentError, match="score='softmax'.*\\[N, classes\\]"):
        SISE(OneScore()).attribute(inputs, score="softmax")
    with pytest.raises(InvalidArgumentError, match="apply_softmax.*\\[N, classes\\]"):
        RISE(OneScore()).attribute(inputs, n_masks=4)
    # the raw score is fine; with target=None it is the [N] output itself
    x0 = inputs[:1]
    got = RISE(OneScore()).attribute(inputs, apply_softmax=False, **RISE_FAST)
    torch.testing.assert_close(got[:1], RISE(OneScore()).attribute(x0, apply_softmax=False, **RISE_FAST))
    got = SISE(OneScore()).attribute(inputs)
    torch.testing.assert_close(got[:1], SISE(OneScore()).attribute(x0), rtol=0, atol=1e-6)
