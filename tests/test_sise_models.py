"""SISE on the models people have, in Captum's ecosystem; model state and argument errors."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import NoiseTunnel
from captum.attr import visualization as viz
from captum.metrics import infidelity, sensitivity_max
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _sise_nets import Net, TutorialNet, images as _x, no_hooks as _clean  # noqa: E402
from captum_global.attr import SISE
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


# ------------------------------------------------------------ models people have


def test_tutorial_net_with_shared_pool_and_functional_relu():
    torch.manual_seed(0)
    model, x = TutorialNet().eval(), _x(n=2, size=32)
    sise = SISE(model)
    assert sise.selected_layers(x) == ["conv1", "conv2"]
    attr, maps = sise.attribute(x, target=[3, 7], return_layer_maps=True)
    assert list(maps) == ["conv1", "conv2"] and attr.shape == x.shape and float(attr.amax()) == 1.0
    assert _clean(model)


def test_compiled_model_gives_the_eager_result():
    torch.manual_seed(0)
    model, x = TutorialNet().eval(), _x(n=2, size=32)
    compiled = torch.compile(model, backend="eager")
    expected = SISE(model).attribute(x, target=[3, 7])
    torch.testing.assert_close(SISE(compiled).attribute(x, target=[3, 7]), expected)
    named = SISE(compiled, ["_orig_mod.conv1", "conv2"])
    assert named.layer_names == ["conv1", "conv2"]
    torch.testing.assert_close(named.attribute(x, target=[3, 7]), expected)
    assert _clean(model)


@pytest.mark.slow  # inductor compiles C++ for the CPU: tens of seconds
def test_compiled_with_the_default_backend():
    torch.manual_seed(0)
    model, x = TutorialNet().eval(), _x(n=2, size=32)
    expected = SISE(model).attribute(x, target=[3, 7])
    torch.testing.assert_close(SISE(torch.compile(model)).attribute(x, target=[3, 7]), expected, atol=1e-4, rtol=0)


def test_torchscript_is_refused_with_the_reason():
    model, x = TutorialNet().eval(), _x(n=1, size=32)
    for scripted in (torch.jit.trace(model, x), torch.jit.script(model)):
        with pytest.raises(InvalidArgumentTypeError, match="TorchScript.*hooks.*torch.compile'd models are supported"):
            SISE(scripted)


def test_model_that_ignores_its_input_gets_an_all_zero_map():
    class Constant(Net):
        def forward(self, x):
            return super().forward(x) * 0 + torch.tensor([1.0, 2.0, 3.0])

    attr, maps = SISE(Constant().eval()).attribute(_x(n=2), target=1, return_layer_maps=True)
    assert not attr.any() and all(not v.any() for v in maps.values())


# ------------------------------------------------------------ Captum ecosystem


def test_noise_tunnel_infidelity_sensitivity_and_visualization(net):
    x = _x(n=2)
    sise = SISE(net)
    nt = NoiseTunnel(sise).attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=0.05, target=[0, 1])
    assert nt.shape == x.shape and torch.isfinite(nt).all()

    attr = sise.attribute(x, target=[0, 1])

    def perturb(inputs):
        noise = 0.01 * torch.randn_like(inputs)
        return noise, inputs - noise

    inf = infidelity(net, perturb, x, attr, target=[0, 1], n_perturb_samples=2)
    sens = sensitivity_max(sise.attribute, x, target=[0, 1], n_perturb_samples=2)
    assert inf.shape == (2,) and sens.shape == (2,)
    assert torch.isfinite(inf).all() and torch.isfinite(sens).all()

    fig, _ = viz.visualize_image_attr(
        attr[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(),
        method="blended_heat_map", sign="positive", use_pyplot=False,
    )
    assert fig is not None


def test_show_progress_repr_and_no_state_between_calls(net, capsys):
    sise = SISE(net, [net.block2, "block1"])
    assert repr(sise) == "SISE(layers=['block2', 'block1'])"
    sise.attribute(_x(n=1), target=0, show_progress=True, perturbations_per_eval=2)
    assert "SISE masks" in capsys.readouterr().err
    auto = SISE(net)
    before = dict(vars(auto))
    first = auto.attribute(_x(n=1), target=0)
    auto.attribute(_x(n=1, size=24), target=0)
    assert vars(auto) == before and repr(auto) == "SISE(layers=auto)"
    torch.testing.assert_close(auto.attribute(_x(n=1), target=0), first)
    assert auto.selected_layers(_x(n=1)) == ["block1", "block2"]


def test_inference_mode_inputs_and_numpy_integers(net):
    x = _x(n=2)
    expected = SISE(net).attribute(x, target=[0, 1], perturbations_per_eval=3, max_maps_per_layer=2)
    with torch.inference_mode():
        frozen = x.clone()
    got = SISE(net).attribute(frozen, target=np.array([0, 1]), perturbations_per_eval=np.int64(3),
                              max_maps_per_layer=np.int32(2))
    torch.testing.assert_close(got, expected)
    with torch.inference_mode():
        inside = SISE(net).attribute(x, target=[0, 1], perturbations_per_eval=3, max_maps_per_layer=2)
    torch.testing.assert_close(inside, expected)


# ------------------------------------------------------ state and errors


def test_model_state_restored_after_success_and_error():
    torch.manual_seed(0)
    model = Net().train()
    model.block1[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    SISE(model).attribute(_x(n=1), target=0)
    assert model.training and _clean(model) and [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ValueError, match="target"):
        SISE(model).attribute(_x(n=1), target=7)
    assert model.training and _clean(model) and [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(fusion="max"), InvalidArgumentError, "fusion must be one of"),
        (dict(score="prob"), InvalidArgumentError, "score must be one of"),
        (dict(perturbations_per_eval=0), InvalidArgumentError, "perturbations_per_eval must be >= 1"),
        (dict(perturbations_per_eval=2.0), InvalidArgumentTypeError, "perturbations_per_eval must be an int"),
        (dict(max_maps_per_layer=1.5), InvalidArgumentError, "max_maps_per_layer"),
        (dict(max_maps_per_layer=True), InvalidArgumentTypeError, "max_maps_per_layer"),
        (dict(mu="high"), InvalidArgumentTypeError, "mu must be a number"),
        (dict(mu=float("nan")), InvalidArgumentError, "mu must be a number, got NaN"),
        (dict(similarity_threshold=1.5), InvalidArgumentError, "similarity_threshold must be <= 1"),
        (dict(baselines=float("nan")), InvalidArgumentError, "baselines must be a number, got NaN"),
        (dict(baselines=torch.full((1, 3, 1, 1), float("inf"))), InvalidArgumentError, "baselines must be finite"),
        (dict(baselines=(0.0, 1.0)), InvalidArgumentError, "one baseline per input: 1 input"),
        (dict(show_progress="yes"), InvalidArgumentTypeError, "show_progress"),
        (dict(score=lambda out: out[:, :1]), InvalidArgumentError, r"score must return a tensor of the model output's shape"),
        (dict(score=lambda out: out * float("nan")), InvalidArgumentError, "score returned NaN"),
        (dict(score=lambda out: out.argmax(-1, keepdim=True).expand_as(out).float()), InvalidArgumentError,
         "score must be differentiable"),
    ],
)
def test_bad_arguments_name_the_argument(net, kwargs, error, match):
    with pytest.raises(error, match=match):
        SISE(net).attribute(_x(n=2), target=0, **kwargs)
    assert _clean(net)


@settings(max_examples=5, deadline=None)
@given(ppe=st.integers(1, 40), shape=st.sampled_from([(2, 3, 8, 8), (3, 3, 16, 16), (2, 1, 16, 15), (5,)]))
def test_baseline_shape_checked_whatever_perturbations_per_eval(ppe, shape):
    torch.manual_seed(0)
    with pytest.raises(InvalidArgumentError, match=r"baselines of shape .* does not fit inputs of shape"):
        SISE(Net().eval()).attribute(_x(n=2), target=0, baselines=torch.zeros(shape), perturbations_per_eval=ppe)


def test_baselines_that_fit(net):
    x = _x(n=2)
    sise = SISE(net)
    zero = sise.attribute(x, target=0)
    torch.testing.assert_close(sise.attribute(x, target=0, baselines=torch.zeros(1, 3, 1, 1)), zero)
    torch.testing.assert_close(sise.attribute(x, target=0, baselines=(0,)), zero)
    grey = sise.attribute(x, target=0, baselines=torch.full((2, 3, 16, 16), 0.5))
    torch.testing.assert_close(sise.attribute(x, target=0, baselines=0.5), grey)


def test_model_errors_are_clear(net):
    class Pair(Net):
        def forward(self, x):
            return super().forward(x), x

    class Dict(Net):
        def forward(self, x):
            return {"logits": super().forward(x)}

    class NanOnMasked(Net):
        def forward(self, x):
            out = super().forward(x)
            masked = (x.flatten(1).amin(1) == 0).view(-1, 1)  # a mask hid at least one pixel
            return torch.where(masked & (torch.arange(len(x)) % 3 == 1).view(-1, 1), float("nan"), out)

    for bad in (Pair(), Dict()):
        with pytest.raises(InvalidArgumentTypeError, match="forward_func must return one tensor"):
            SISE(bad.eval(), ["block1"]).attribute(_x(n=1), target=0)
    with pytest.raises(NonFiniteOutputError, match="SISE masks: the model returned NaN"):
        SISE(NanOnMasked().eval()).attribute(_x(n=2), target=0, similarity_threshold=None)


def test_bad_inputs_and_layers(net):
    with pytest.raises(InvalidArgumentError, match=r"inputs must be 4-D|\[N, C, H, W\]"):
        SISE(net).attribute(torch.rand(3, 16, 16), target=0)
    nan = _x(n=1)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidArgumentError, match="inputs must be finite"):
        SISE(net).attribute(nan, target=0)
    for not_a_tensor in (_x(n=1).numpy(), [_x(n=1)[0]]):
        with pytest.raises(InvalidArgumentTypeError, match="inputs must be a tensor"):
            SISE(net).attribute(not_a_tensor, target=0)
        with pytest.raises(InvalidArgumentTypeError, match="inputs must be a tensor"):
            SISE(net).selected_layers(not_a_tensor)
    with pytest.raises(ValueError, match="layers"):
        SISE(net, ["block3"])
    with pytest.raises(ValueError, match="layers"):
        SISE(net, [nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="layers"):
        SISE(net, ["fc"]).attribute(_x(n=1), target=0)  # not a spatial map
    with pytest.raises(ValueError, match="layers: 'pool' runs more than once"):
        SISE(TutorialNet(), ["pool"]).attribute(_x(n=1, size=32), target=0)
    with pytest.raises(TypeError, match="forward_func"):
        SISE(lambda x: x)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(ValueError, match="no spatial layer"):
        SISE(mlp).attribute(_x(n=1), target=0)
    assert _clean(net) and _clean(mlp)




class _FrozenBackbone(nn.Module):
    """Transfer learning: the backbone runs under torch.no_grad(), only the head has gradients."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(6, 3))

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


def test_layers_run_without_autograd_are_named():
    """No gradient reaches a layer computed under no_grad: the error names that layer, not ``score``."""
    model = _FrozenBackbone().eval()
    with pytest.raises(InvalidArgumentError, match=r"layers: \['backbone.1'\] run without autograd"):
        SISE(model).attribute(_x(n=1), target=0)
    assert _clean(model)
    # the layers after the no_grad block work, and give the map of the same layer in the plain model
    head_only = SISE(model, ["head.1"]).attribute(_x(n=1), target=0)
    plain = nn.Sequential(model.backbone, model.head).eval()
    torch.testing.assert_close(head_only, SISE(plain, ["1.1"]).attribute(_x(n=1), target=0))


def test_output_without_gradient_path_falls_back_on_the_scores():
    """A model ending in a non-differentiable step (one-hot of the argmax) has zero gradient
    everywhere: no map passes the filter, each layer falls back on one map and the masked scores
    decide; the result is the same as with a score whose gradient is exactly zero."""
    torch.manual_seed(0)
    net = Net().eval()

    class OneHot(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return F.one_hot(self.net(x).argmax(1), 3).float()

    x = _x(n=2)
    got = SISE(OneHot().eval()).attribute(x, target=[0, 1])
    # the same one-hot computed with a zero-gradient path through the logits
    flat = SISE(net).attribute(x, target=[0, 1], score=lambda out: out * 0 + F.one_hot(out.argmax(1), 3).float())
    torch.testing.assert_close(got, flat)
