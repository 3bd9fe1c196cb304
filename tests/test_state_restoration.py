"""The model and the caller's state come back as they were, on every path.

The package promises: no hook left behind, no weight, ``training`` flag,
``requires_grad`` flag, BatchNorm statistic or global random state changed,
also when an error is raised; a non-finite model output met during a run is
an error, never a silently used value. These tests hold the public callables
that reach a model in ways the method tests do not (a bound method or a
wrapper instead of the module, a model in train mode with BatchNorm and
dropout, a model that works in place on its input, NaN logits where only a
class or an accuracy is read) to that promise.
"""
import functools
import random

import numpy as np
import pytest
import torch
from torch import nn

from captum_global.attr import RISE, InputAgnosticSaliency
from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.contract import preserved_model_state
from captum_global.errors import InvalidArgumentError, NonFiniteOutputError
from captum_global.integrations import AttributionCAM, explain
from captum_global.metrics import ForwardCounter
from captum_global.robustness import GradCAMExplanation, GradientExplanation, SoftSISESurrogate, manipulate_model

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _net(seed: int = 0) -> nn.Module:
    """A tiny CNN with BatchNorm (non-trivial statistics) and dropout, in train mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3),
                        nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.1, 0.1)
        net[1].running_var.uniform_(0.9, 1.1)
    return net.train()


def _state(model: nn.Module) -> dict:
    """Everything the promise covers, as comparable values."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [sum(len(getattr(m, h)) for h in _HOOKS) for m in model.modules()],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][name]), name  # BatchNorm running statistics included
    for key in ("training", "requires_grad", "hooks", "python_rng"):
        assert before[key] == after[key], key
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert np.array_equal(before["numpy_rng"], after["numpy_rng"])


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


# -- methods given model.forward, a partial or a wrapper instead of the module ----------------------

_WRAPPINGS = {
    "bound method": lambda net: net.forward,
    "functools.partial": lambda net: functools.partial(net),
    "ForwardCounter": ForwardCounter,
}
_METHODS = {
    "RISE": lambda f, x: RISE(f).attribute(x, target=0, n_masks=8, perturbations_per_eval=4),
    "InputAgnosticSaliency": lambda f, x: InputAgnosticSaliency(f).attribute(
        x, target=0, n_steps=2, samples_per_step=2, seed=0),
}


@pytest.mark.parametrize("wrapping", sorted(_WRAPPINGS))
@pytest.mark.parametrize("method", sorted(_METHODS))
def test_methods_on_a_forward_function_run_its_module_in_eval_mode_and_leave_it_as_found(method, wrapping):
    # Captum methods take model.forward, a partial or a wrapper as well as the module; the module behind
    # it is the one whose BatchNorm statistics must not move and whose dropout must stay off
    net, x = _net(), _images()
    before = _state(net)
    got = _METHODS[method](_WRAPPINGS[wrapping](net), x)
    _assert_same_state(before, _state(net))
    assert net.training
    reference = _net().eval()
    assert torch.equal(got, _METHODS[method](reference, x))  # exactly the map of the module in eval mode


class _FailsOnSecondCall(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("model failed on its second call")
        return self.net(x)


@pytest.mark.parametrize("method", sorted(_METHODS))
def test_methods_on_a_bound_method_restore_the_module_when_the_model_raises(method):
    model, x = _FailsOnSecondCall(_net()), _images()
    before = _state(model)
    with pytest.raises(RuntimeError, match="second call"):
        _METHODS[method](model.forward, x)
    _assert_same_state(before, _state(model))


# -- the differentiable explanations of captum_global.robustness ------------------------------------

_EXPLANATIONS = {
    "grad_cam": lambda net, x: GradCAMExplanation()(net, x, target=[0, 1]),
    "gradient": lambda net, x: GradientExplanation()(net, x, target=[0, 1]),
    "soft_sise": lambda net, x: SoftSISESurrogate(masks_per_layer=2)(
        net, x, target=[0, 1], generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", sorted(_EXPLANATIONS))
def test_differentiable_explanations_leave_a_training_model_as_found(name):
    net, x = _net(), _images()
    before = _state(net)
    maps = _EXPLANATIONS[name](net, x)
    _assert_same_state(before, _state(net))  # no BatchNorm update, no dropout draw, train flags back
    assert maps.requires_grad and maps.shape == (2, 16, 16)
    assert torch.equal(maps.detach(), _EXPLANATIONS[name](_net().eval(), x).detach())


@pytest.mark.parametrize("name", sorted(_EXPLANATIONS))
def test_differentiable_explanations_keep_their_graph_under_the_callers_inference_mode(name):
    net, x = _net().eval(), _images()
    expected = _EXPLANATIONS[name](net, x).detach()
    before = _state(net)
    with torch.inference_mode():
        maps = _EXPLANATIONS[name](net, x)
    _assert_same_state(before, _state(net))
    assert maps.requires_grad and not maps.is_inference()
    assert torch.equal(maps.detach(), expected)
    (grad,) = torch.autograd.grad(maps.sum(), net[-1].weight, allow_unused=True)
    assert grad is not None and bool(torch.isfinite(grad).all())


# -- NaN logits where only a class or an accuracy is read --------------------------------------------


class _NaNWhereFlagged(nn.Module):
    """``net``'s logits, with NaN in class 1 for inputs whose first pixel exceeds 1 (finite inputs)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = self.net(x)
        flag = (x[:, 0, 0, 0] > 1).unsqueeze(1) & (torch.arange(out.shape[1]) == 1)
        return out + torch.where(flag, torch.tensor(float("nan")), torch.tensor(0.0))


def test_manipulate_model_refuses_nan_logits_in_its_accuracy_check():
    model = _NaNWhereFlagged(_net()).eval()
    data = [(_images(4), torch.tensor([0, 1, 2, 3]))]
    flagged = _images(4, seed=2)
    flagged[1, 0, 0, 0] = 1.5  # a finite input on which the model returns NaN
    before = _state(model)
    with pytest.raises(NonFiniteOutputError, match=r"manipulate_model.*accuracy check.*example\(s\) \[1\]"):
        manipulate_model(model, data, "gradient", steps=1, eval_data=[(flagged, torch.tensor([0, 1, 2, 3]))])
    _assert_same_state(before, _state(model))


def test_attribution_cam_refuses_nan_scores_when_it_picks_the_top_class():
    model = _NaNWhereFlagged(_net()).eval()
    x = _images(2)
    x[0, 0, 0, 0] = 1.5
    before = _state(model)
    with pytest.raises(NonFiniteOutputError, match=r"AttributionCAM.*top-class.*example\(s\) \[0\]"):
        AttributionCAM(model, "Saliency")(x)
    _assert_same_state(before, _state(model))
    x[0, 0, 0, 0] = 0.5
    assert AttributionCAM(model, "Saliency")(x).shape == (2, 16, 16)  # finite scores: maps as before


# -- a model that works in place on its input ------------------------------------------------------


class _HalvesItsInput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        if not x.requires_grad:
            x.mul_(0.5)
        else:
            x = x * 0.5
        return self.net(x)


def test_integrations_leave_the_callers_input_unchanged_under_a_model_that_works_in_place():
    model = _HalvesItsInput(_net()).eval()
    x = _images(2)
    kept = x.clone()
    explain(model, x, [0, 1], method="SISE")
    assert torch.equal(x, kept)
    AttributionCAM(model, "SISE")(x)
    assert torch.equal(x, kept)


# -- weights made under torch.inference_mode() -----------------------------------------------------


def _inference_net() -> nn.Module:
    with torch.inference_mode():
        return _net().eval()


def test_frozen_inference_mode_weights_get_their_requires_grad_back_also_after_an_error():
    net = _inference_net()
    assert all(p.requires_grad and p.is_inference() for p in net.parameters())
    with pytest.raises(KeyboardInterrupt):
        with preserved_model_state(net, freeze_parameters=True):
            assert not any(p.requires_grad for p in net.parameters())
            raise KeyboardInterrupt
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("scan", ["scan_for_backdoor", "neural_cleanse"])
def test_backdoor_scans_refuse_inference_mode_weights_up_front_and_leave_them_as_found(scan):
    net, x = _inference_net(), _images(4)
    before = _state(net)
    run = {"scan_for_backdoor": lambda: scan_for_backdoor(net, x[:1], clean_inputs=x, n_steps=2, check_every=1),
           "neural_cleanse": lambda: neural_cleanse(net, x, n_epochs=1)}[scan]
    with pytest.raises(InvalidArgumentError, match=r"model has its parameter '0\.weight' created under "
                                                   r"torch\.inference_mode\(\)"):
        run()
    _assert_same_state(before, _state(net))
