"""Client code we do not see: the package called the way a Captum (or grad-cam) user calls it.

Each test pins a behaviour found wrong by such a program, against a value
computed by hand or by Captum itself: the faithfulness metrics' softmax
follows the package's one softmax rule (refused over one class, where it is
the constant 1), AttributionCAM returns maps at the input's size for layer
methods as grad-cam's CAMs do, and the backdoor scans and the explanation
manipulation run inside an evaluation script's ``torch.no_grad()`` or
``torch.inference_mode()`` block and give what they give outside it.
"""
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from captum_global.attr import RISE, SISE
from captum_global.backdoor import NeuralCleanse, scan_for_backdoor
from captum_global.errors import InvalidArgumentError
from captum_global.integrations.grad_cam import AttributionCAM, attributions_to_cams
from captum_global.metrics import average_drop, deletion_auc, drop_and_increase, insertion_auc
from captum_global.robustness import GradientExplanation, manipulate_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def conv_net(classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).eval()


def images(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- metrics: the one softmax rule


def test_faithfulness_metrics_refuse_a_softmax_over_one_class_and_score_it_raw():
    """A softmax over a single output is 1 whatever the input: Average Drop was 0 and both AUCs 1 for every
    example and every explanation. The metrics now refuse it as SISE and RISE do, naming score='raw';
    with score='raw' the deletion AUC of one step is the trapezoid of the score on the input and on the
    baseline (hand-computed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1)).eval()
    x, attr = images(2, 4), images(2, 4, seed=2)
    for metric in (drop_and_increase, average_drop, insertion_auc, deletion_auc):
        with pytest.raises(InvalidArgumentError, match="score='softmax' needs at least two classes.*score='raw'"):
            metric(model, x, attr, target=0)
    with torch.no_grad():
        expected = (model(x)[:, 0] + model(torch.zeros_like(x))[:, 0]) / 2
    got = deletion_auc(model, x, attr, target=0, n_steps=1, score="raw")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- grad-cam adapter


def test_attribution_cam_gives_layer_methods_maps_at_the_input_size():
    """grad-cam's CAM objects return [N, H, W] maps at the input's size, which show_cam_on_image and its
    metrics multiply with the image; AttributionCAM returned LayerGradCam's layer-resolution maps
    ([N, 8, 8] for a 16 x 16 input). The maps are Captum's attributions upsampled with
    LayerAttribution.interpolate (bilinear), then made CAMs."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x = conv_net(), images(2)
    targets = [ClassifierOutputTarget(0), ClassifierOutputTarget(2)]
    cams = AttributionCAM(model, "LayerGradCam", target_layers=[model[4]])(input_tensor=x, targets=targets)
    captum = LayerGradCam(model, model[4]).attribute(x, target=[0, 2])
    expected = attributions_to_cams(LayerAttribution.interpolate(captum, (16, 16), "bilinear"))
    assert cams.shape == (2, 16, 16)
    torch.testing.assert_close(torch.from_numpy(cams), torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert CamMultImageConfidenceChange()(x, cams, targets, model).shape == (2,)  # grad-cam's metric runs on them


# ---------------------------------------------------------------- gradients inside the caller's no_grad / inference_mode


def _same(a, b):
    for u, v in zip(a, b):
        if isinstance(u, torch.Tensor):
            torch.testing.assert_close(u, v, rtol=0, atol=0)
        else:
            assert u == v


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_neural_cleanse_under_the_caller_s_grad_mode_equals_a_plain_call(mode):
    """Neural Cleanse learns a mask and a pattern by gradient descent; under torch.inference_mode() it failed
    with torch's 'element 0 of tensors does not require grad'."""
    model, x = conv_net(), images(8, 12)
    options = dict(target=3, n_epochs=2, batch_size=4, seed=0)
    plain = NeuralCleanse(model).attribute(x, **options)
    with mode():
        inside = NeuralCleanse(model).attribute(x, **options)
    _same(inside, plain)
    with mode():
        scan = NeuralCleanse(model).scan(x, n_epochs=1, batch_size=4, seed=0)
    torch.testing.assert_close(scan.trigger_masks[3], NeuralCleanse(model).scan(
        x, n_epochs=1, batch_size=4, seed=0).trigger_masks[3], rtol=0, atol=0)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_backdoor_scan_under_the_caller_s_grad_mode_equals_a_plain_call(mode):
    """The scan draws noise inputs and learns stamps on them; under torch.inference_mode() it failed deep in
    autograd. Under either mode it now gives the plain call's stamps and norms."""
    model, x = conv_net(), images(1, 12)
    options = dict(n_steps=4, batch_size=4, cells=4, seed=0)
    plain = scan_for_backdoor(model, x, **options)
    with mode():
        inside = scan_for_backdoor(model, x, **options)
    torch.testing.assert_close(inside.trigger_masks, plain.trigger_masks, rtol=0, atol=0)
    torch.testing.assert_close(inside.statistics["mask_l1"], plain.statistics["mask_l1"], rtol=0, atol=0)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_manipulate_model_under_the_caller_s_grad_mode_equals_a_plain_call(mode):
    """manipulate_model fine-tunes a copy; under torch.no_grad() (as Captum's gradient methods allow) or
    torch.inference_mode() its first backward failed with 'does not require grad'."""
    model, x = conv_net(), images(4, 12)
    data = [(x, torch.tensor([0, 1, 2, 3]))]
    options = dict(explanation=GradientExplanation(), fooling="location", steps=2, lr=1e-2, seed=0)
    plain = manipulate_model(model, data, **options)
    with mode():
        inside = manipulate_model(model, data, **options)
    for (name, a), b in zip(inside.model.state_dict().items(), plain.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert inside.history == plain.history
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), model.parameters()))  # it trained


# ---------------------------------------------------------------- scale: tiny scores still give their map


class _Scaled(nn.Module):
    def __init__(self, model: nn.Module, factor: float):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.model(x) * self.factor


@pytest.mark.parametrize("factor", [1e-11, 1e-13, 1e-30])
def test_sise_and_rise_on_logits_do_not_depend_on_the_scale_of_the_scores(factor):
    """SISE's maps are min-max normalised, so scaling every logit by a positive factor must not change them. An
    absolute floor of 1e-12 in the normalisation turned the maps of models with tiny logits (a randomly
    initialised EfficientNet's are about 1e-13) into all-zero 'no signal' maps."""
    model, x = conv_net(), images(2, 16)
    scaled = _Scaled(model, factor).eval()
    reference = SISE(model).attribute(x, target=1, score="logit")
    assert float(reference.amax()) == pytest.approx(1.0)
    torch.testing.assert_close(SISE(scaled).attribute(x, target=1, score="logit"), reference, rtol=0, atol=1e-5)
    # RISE's saliency is not normalised: a weighted mean of the scores, so it scales with them
    rise = dict(target=1, n_masks=16, seed=0, apply_softmax=False)
    plain = RISE(model).attribute(x, **rise)
    torch.testing.assert_close(RISE(scaled).attribute(x, **rise) / factor, plain, rtol=1e-5, atol=1e-6)


def test_minmax_normalise_is_relative_and_keeps_empty_maps_at_zero():
    from captum_global.maps import minmax_normalise

    torch.testing.assert_close(minmax_normalise(torch.tensor([[0.0, 1e-30, 2e-30, 4e-30]])),
                               torch.tensor([[0.0, 0.25, 0.5, 1.0]]))
    assert torch.equal(minmax_normalise(torch.zeros(2, 3, 3)), torch.zeros(2, 3, 3))
    assert torch.equal(minmax_normalise(torch.full((1, 3, 3), 1e-30)), torch.zeros(1, 3, 3))
    # round-off around a large value is still no signal
    assert torch.equal(minmax_normalise(torch.tensor([[1e6, 1e6 + 0.0625]])), torch.zeros(1, 2))


# ---------------------------------------------------------------- negative class indices, as Captum's targets


def test_neural_cleanse_takes_a_negative_target_as_counted_from_the_end():
    model, x = conv_net(), images(8, 12)
    options = dict(n_epochs=2, batch_size=4, seed=0)
    _same(NeuralCleanse(model).attribute(x, target=-1, **options), NeuralCleanse(model).attribute(x, target=3, **options))
    with pytest.raises(ValueError, match=r"target -5 is out of range.*-4\.\.-1"):
        NeuralCleanse(model).attribute(x, target=-5, **options)


def test_backdoor_scan_takes_negative_classes_as_counted_from_the_end():
    model, x = conv_net(), images(1, 12)
    options = dict(n_steps=2, batch_size=4, cells=4, seed=0)
    negative = scan_for_backdoor(model, x, classes=[0, -3, -1], **options)
    positive = scan_for_backdoor(model, x, classes=[0, 1, 3], **options)
    assert negative.classes == positive.classes == [0, 1, 3]
    torch.testing.assert_close(negative.statistics["mask_l1"], positive.statistics["mask_l1"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="must not repeat a class, got \\[3\\]"):
        scan_for_backdoor(model, x, classes=[0, 3, -1], **options)
    with pytest.raises(ValueError, match=r"classes \[-5\] out of range"):
        scan_for_backdoor(model, x, classes=[0, 1, -5], **options)


# ---------------------------------------------------------------- AttributionCAM runs as explain() does


def test_attribution_cam_runs_a_training_model_in_eval_mode_and_leaves_model_and_rng_as_found():
    """grad-cam's CAMs switch the model to eval mode for good; AttributionCAM ran a train-mode model as it
    was: BatchNorm statistics moved, dropout drew from the global RNG and the map depended on both."""
    from captum.attr import NoiseTunnel, Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = images(2, 8)
    expected = AttributionCAM(model.eval(), "SISE")(x)
    model.train()
    stats = [t.clone() for t in model[1].buffers()]
    rng = torch.get_rng_state()
    maps = AttributionCAM(model, "SISE")(x)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    assert model.training and model[1].training and model[3].training
    assert all(torch.equal(a, b) for a, b in zip(stats, model[1].buffers()))
    assert torch.equal(rng, torch.get_rng_state())
    # a method drawing from the global RNG: seeded (the same maps twice), the caller's state restored
    smooth = AttributionCAM(model, NoiseTunnel(Saliency(model)), nt_samples=3)
    first = smooth(x)
    np.testing.assert_array_equal(first, smooth(x))
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training
