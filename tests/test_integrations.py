"""quantus and pytorch-grad-cam adapters, checked with the real tools on the reference world."""
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from torch import nn

from captum_global.attr import SISE, InputAgnosticSaliency
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.integrations import AttributionCAM, InputAgnosticWarning, attributions_to_cams, explain
from captum_global.lineup import LINEUP, last_spatial_layer
from captum_global.world import load_reference_model, make_dataset

quantus = pytest.importorskip("quantus")
grad_cam_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
road = pytest.importorskip("pytorch_grad_cam.metrics.road")
cam_mult = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
ClassifierOutputTarget = grad_cam_targets.ClassifierOutputTarget
ClassifierOutputSoftmaxTarget = grad_cam_targets.ClassifierOutputSoftmaxTarget

IAS_FAST = {"n_steps": 4, "samples_per_step": 4}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    model = load_reference_model("vgg", "clean")
    data = make_dataset(4, seed=123)
    return model, data


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ---------------------------------------------------------------- quantus: the explain function


def test_explain_returns_one_channel_equal_to_the_broadcast_map(world):
    model, data = world
    maps = explain(model, data.images.numpy(), data.labels.numpy(), method="SISE", device="cpu")
    direct = SISE(model).attribute(data.images, target=data.labels)
    assert maps.shape == (4, 1, 64, 64) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[:, 0], direct[:, 0].numpy(), atol=1e-6)
    # the same map three times would make quantus count it three times
    assert torch.equal(direct[:, 0], direct[:, 2])


def test_explain_matches_quantus_own_captum_path(world):
    """quantus.explain runs Captum's Saliency itself and sums channels: same numbers with channel_reduce="sum"."""
    model, data = world
    x, y = data.images.numpy(), data.labels.numpy()
    ours = explain(model, x, y, method="Saliency", channel_reduce="sum", device=torch.device("cpu"))
    theirs = quantus.explain(model, x, y, method="Saliency", device="cpu")
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    mean = explain(model, x, y, method="Saliency")
    np.testing.assert_allclose(mean * 3, ours, rtol=1e-5, atol=1e-7)
    per_channel = explain(model, x, y, method="Saliency", channel_reduce="none")
    assert per_channel.shape == (4, 3, 64, 64)


def test_explain_accepts_names_classes_objects_and_lineup_recipes(world):
    model, data = world
    x, y = data.images[:2].numpy(), data.labels[:2].numpy()
    by_name = explain(model, x, y, method="SISE")
    np.testing.assert_array_equal(by_name, explain(model, x, y, method=SISE))
    np.testing.assert_array_equal(by_name, explain(model, x, y, method=SISE(model)))
    recipe = next(spec for spec in LINEUP if spec.name == "SISE")
    np.testing.assert_allclose(by_name, explain(model, x, y, method=recipe), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="line-up recipe"):
        explain(model, x, y, method=recipe, mu=0.5)


def test_explain_layer_methods_default_to_the_lineup_grad_cam_layer(world):
    model, data = world
    x, y = data.images[:2], data.labels[:2]
    maps = explain(model, x.numpy(), y.numpy(), method="LayerGradCam")
    layer = last_spatial_layer(model, x)
    expected = LayerAttribution.interpolate(LayerGradCam(model, layer).attribute(x, target=y), (64, 64), "bilinear")
    np.testing.assert_allclose(maps, expected.detach().numpy(), rtol=1e-5, atol=1e-6)
    named = explain(model, x.numpy(), y.numpy(), method="LayerGradCam", layer="features.block3")
    expected = LayerAttribution.interpolate(
        LayerGradCam(model, model.features.block3).attribute(x, target=y), (64, 64), "bilinear"
    )
    np.testing.assert_allclose(named, expected.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_explain_targets_in_every_form(world):
    model, data = world
    x = data.images[:3].numpy()
    per_example = explain(model, x, np.array([2, 2, 2]), method="Saliency")
    for same in ([2, 2, 2], 2, np.int64(2), torch.tensor([2, 2, 2]), np.array([2])):
        np.testing.assert_array_equal(explain(model, x, same, method="Saliency"), per_example)
    with pytest.raises(InvalidArgumentError, match="targets has 2 entries for 3 inputs"):
        explain(model, x, [1, 2], method="Saliency")
    with pytest.raises(InvalidArgumentTypeError, match="integer class indices"):
        explain(model, x, np.array([1.0, 2.0, 0.0]), method="Saliency")


def test_explain_refuses_bad_methods_and_options(world):
    model, data = world
    x, y = data.images[:1].numpy(), data.labels[:1].numpy()
    with pytest.raises(InvalidArgumentError, match="'Nope' is not an attribution class"):
        explain(model, x, y, method="Nope")
    with pytest.raises(InvalidArgumentTypeError, match="method must be"):
        explain(model, x, y, method=42)
    with pytest.raises(InvalidArgumentError, match="channel_reduce"):
        explain(model, x, y, method="Saliency", channel_reduce="max")
    with pytest.raises(InvalidArgumentError, match="Saliency reads no layer"):
        explain(model, x, y, method="Saliency", layer="features.block3")
    with pytest.raises(InvalidArgumentError, match=r"\[N, C, H, W\]"):
        explain(model, x[0], y, method="Saliency")


def test_explain_seeds_stochastic_methods_so_repeats_agree(world):
    model, data = world
    x, y = data.images[:2].numpy(), data.labels[:2].numpy()
    with pytest.warns(InputAgnosticWarning, match="perfect 0 by construction"):
        first = explain(model, x, y, method="InputAgnosticSaliency", **IAS_FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputAgnosticWarning)
        again = explain(model, x, y, method="InputAgnosticSaliency", **IAS_FAST)
        other_seed = explain(model, x, y, method="InputAgnosticSaliency", seed=1, **IAS_FAST)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    direct = InputAgnosticSaliency(model).attribute(data.images[:2], target=data.labels[:2], seed=0, **IAS_FAST)
    np.testing.assert_allclose(first[:, 0], direct[:, 0].numpy(), atol=1e-6)


def test_explain_warns_for_input_agnostic_methods_also_inside_noise_tunnel(world):
    model, data = world
    x, y = data.images[:1].numpy(), data.labels[:1].numpy()
    with pytest.warns(InputAgnosticWarning):
        explain(model, x, y, method=NoiseTunnel(InputAgnosticSaliency(model)), nt_samples=1, stdevs=0.0, **IAS_FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputAgnosticWarning)
        explain(model, x, y, method="SISE")  # no warning for a method that reads its input


# ---------------------------------------------------------------- quantus: real metrics


def test_quantus_robustness_is_zero_for_input_agnostic_saliency_only(world):
    """The documented caveat, measured: MaxSensitivity is exactly 0 for InputAgnosticSaliency."""
    model, data = world
    x, y = data.images[:2].numpy(), data.labels[:2].numpy()
    metric = quantus.MaxSensitivity(nr_samples=2, lower_bound=0.1, disable_warnings=True)
    with pytest.warns(InputAgnosticWarning):
        ias = metric(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain,
                     explain_func_kwargs={"method": "InputAgnosticSaliency", **IAS_FAST})
    sal = metric(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain,
                 explain_func_kwargs={"method": "Saliency"})
    assert ias == [0.0, 0.0]
    assert min(sal) > 0.05


def test_quantus_faithfulness_pixel_flipping_ranks_sise_above_its_inverse(world):
    """Removing SISE's most relevant pixels first hurts the class score sooner than removing its least relevant.

    The area under each curve is taken with ``np.trapezoid``: quantus 0.6's own
    ``return_auc_per_sample`` calls ``np.trapz``, which NumPy 2.4 removed.
    """
    model, data = world
    x, y = data.images.numpy(), data.labels.numpy()

    def inverted(model, inputs, targets, **kwargs):
        return 1.0 - explain(model, inputs, targets, method="SISE", **kwargs)

    metric = quantus.PixelFlipping(features_in_step=256, perturb_baseline="black", abs=False, normalise=False,
                                   disable_warnings=True)
    sise = metric(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain,
                  explain_func_kwargs={"method": "SISE"})
    inverse = metric(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=inverted)
    assert np.shape(sise) == (4, 3 * 64 * 64 // 256)  # quantus flips channel elements of the broadcast map
    assert np.trapezoid(sise, axis=1).mean() < np.trapezoid(inverse, axis=1).mean()


def test_quantus_localisation_is_the_hand_computed_mass_inside_the_object(world):
    """AttributionLocalisation on our one-channel map equals sum(map * mask) / sum(map) computed by hand."""
    model, data = world
    x, y = data.images.numpy(), data.labels.numpy()
    masks = data.object_masks.numpy()[:, None].astype(np.float32)
    metric = quantus.AttributionLocalisation(disable_warnings=True)
    scores = metric(model=model, x_batch=x, y_batch=y, s_batch=masks, device="cpu", explain_func=explain,
                    explain_func_kwargs={"method": "SISE"})
    maps = SISE(model).attribute(data.images, target=data.labels)[:, :1].numpy()
    expected = (maps * masks).sum(axis=(1, 2, 3)) / maps.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(scores, expected, rtol=1e-4)
    # and the evidence sits on the objects: more mass inside than the objects' share of the image
    assert np.mean(scores) > 2 * masks.mean()


def test_quantus_randomisation_rebinds_an_object_to_the_randomised_model(world):
    """MPRT hands re-initialised model copies to explain_func: an object must follow them, as a name does."""
    model, data = world
    x, y = data.images[:2].numpy(), data.labels[:2].numpy()

    def run(method):
        metric = quantus.MPRT(return_last_correlation=True, seed=0, disable_warnings=True)
        return metric(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain,
                      explain_func_kwargs={"method": method})

    by_object = run(Saliency(model))
    np.testing.assert_allclose(by_object, run("Saliency"), atol=1e-6)
    # an explainer stuck on the original model would correlate perfectly (1.0)
    assert max(by_object) < 0.9
    sise_object = run(SISE(model, layers=["features.block3", "features.block4"]))
    assert max(sise_object) < 0.9
    assert _hooks(model) == 0


def test_explain_rebinds_nested_objects_and_their_layers_to_another_model(world):
    """A NoiseTunnel over a layer method, built on one model, explains a re-initialised copy as if built on it."""
    import copy

    model, data = world
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x, y = data.images[:2].numpy(), data.labels[:2].numpy()
    kw = dict(nt_samples=2, stdevs=0.0)
    built_on_model = NoiseTunnel(LayerGradCam(model, model.features.block4))
    built_on_other = NoiseTunnel(LayerGradCam(other, other.features.block4))
    rebound = explain(other, x, y, method=built_on_model, **kw)
    np.testing.assert_allclose(rebound, explain(other, x, y, method=built_on_other, **kw), atol=1e-6)
    assert not np.allclose(rebound, explain(model, x, y, method=built_on_model, **kw))
    assert built_on_model.attribution_method.layer is model.features.block4  # the user's object is untouched


def test_quantus_random_logit_runs_on_sise(world):
    model, data = world
    metric = quantus.RandomLogit(num_classes=5, seed=0, disable_warnings=True)
    scores = metric(model=model, x_batch=data.images[:2].numpy(), y_batch=data.labels[:2].numpy(), device="cpu",
                    explain_func=explain, explain_func_kwargs={"method": "SISE"})
    assert len(scores) == 2 and all(-1.0 <= s <= 1.0 for s in scores)


# ---------------------------------------------------------------- pytorch-grad-cam


def test_attribution_cam_is_sise_in_grad_cam_shape(world):
    model, data = world
    targets = [ClassifierOutputTarget(int(c)) for c in data.labels]
    with AttributionCAM(model=model, method="SISE") as cam:
        cams = cam(input_tensor=data.images, targets=targets)
    direct = SISE(model).attribute(data.images, target=data.labels)[:, 0]
    assert cams.shape == (4, 64, 64) and cams.dtype == np.float32
    np.testing.assert_allclose(cams, direct.numpy(), atol=1e-6)  # SISE maps are already in [0, 1]
    assert _hooks(model) == 0


def test_attribution_cam_without_targets_explains_the_top_class(world):
    model, data = world
    top = model(data.images).argmax(dim=1)
    cam = AttributionCAM(model, "Saliency")
    np.testing.assert_array_equal(
        cam(data.images[:2]), cam(data.images[:2], targets=[ClassifierOutputTarget(int(c)) for c in top[:2]])
    )


def test_attribution_cam_accepts_any_target_callable(world):
    """A softmax target is the softmax score: SISE with score="softmax", Saliency of a softmax model."""
    model, data = world
    x, labels = data.images[:2], [int(c) for c in data.labels[:2]]
    targets = [ClassifierOutputSoftmaxTarget(c) for c in labels]
    cams = AttributionCAM(model, "SISE")(x, targets)
    expected = SISE(model).attribute(x, target=labels, score="softmax")
    np.testing.assert_allclose(cams, attributions_to_cams(expected), atol=1e-6)
    cams = AttributionCAM(model, "Saliency")(x, targets)
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1))
    expected = Saliency(softmax_model).attribute(x.clone().requires_grad_(), target=labels)
    np.testing.assert_allclose(cams, attributions_to_cams(expected), rtol=1e-4, atol=1e-6)
    assert _hooks(model) == 0


def test_attribution_cam_removes_its_hook_when_a_target_callable_fails(world):
    model, data = world

    def broken(row):
        return row  # five scores, not one

    with pytest.raises(InvalidArgumentError, match="one score per output row"):
        AttributionCAM(model, "Saliency")(data.images[:1], [broken])
    assert _hooks(model) == 0
    with pytest.raises(InvalidArgumentError, match="ClassifierOutputTarget"):
        AttributionCAM(model, "InputAgnosticSaliency")(data.images[:1], [ClassifierOutputSoftmaxTarget(0)])


def test_attribution_cam_target_layers_and_refusals(world):
    model, data = world
    x, t = data.images[:1], [ClassifierOutputTarget(1)]
    layers = [model.features.block3, model.features.block4]
    cams = AttributionCAM(model, "SISE", target_layers=layers)(x, t)
    np.testing.assert_allclose(cams, attributions_to_cams(SISE(model, layers=layers).attribute(x, target=1)), atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="reads no layer"):
        AttributionCAM(model, "Saliency", target_layers=layers)
    with pytest.raises(InvalidArgumentError, match="NoiseTunnel"):
        AttributionCAM(model, "SISE")(x, t, aug_smooth=True)
    with pytest.raises(InvalidArgumentError, match="targets has 2 entries for 1 images"):
        AttributionCAM(model, "SISE")(x, t * 2)


def test_attributions_to_cams_scaling_and_no_signal():
    attr = torch.tensor([[[1.0, 3.0], [-2.0, 5.0]]]).unsqueeze(0).expand(1, 3, 2, 2)
    np.testing.assert_allclose(attributions_to_cams(attr), [[[0.2, 0.6], [0.0, 1.0]]], rtol=1e-6)
    np.testing.assert_allclose(attributions_to_cams(attr, relu=False), [[[3 / 7, 5 / 7], [0.0, 1.0]]], rtol=1e-6)
    np.testing.assert_allclose(attributions_to_cams(attr, normalise=False), [[[1.0, 3.0], [0.0, 5.0]]])
    flat = torch.full((2, 1, 4, 4), 0.7) + 1e-9 * torch.rand(2, 1, 4, 4)
    assert not attributions_to_cams(flat).any()  # no signal stays zero, never stretched noise


def test_grad_cam_confidence_change_on_our_maps_is_the_hand_computed_score_change(world):
    model, data = world
    x, labels = data.images, [int(c) for c in data.labels]
    targets = [ClassifierOutputTarget(c) for c in labels]
    cams = AttributionCAM(model, "SISE")(x, targets)
    scores = cam_mult.CamMultImageConfidenceChange()(x, cams, targets, model)
    with torch.no_grad():
        before = model(x)[range(4), labels]
        after = model(x * torch.from_numpy(cams)[:, None])[range(4), labels]
    np.testing.assert_allclose(np.asarray(scores).ravel(), (after - before).numpy(), rtol=1e-4, atol=1e-4)


def test_grad_cam_road_prefers_sise_maps_to_their_inverse(world):
    model, data = world
    x = data.images[:2]
    targets = [ClassifierOutputTarget(int(c)) for c in data.labels[:2]]
    cams = AttributionCAM(model, "SISE")(x, targets)
    metric = road.ROADCombined(percentiles=[20, 80])
    assert np.mean(metric(x, cams, targets, model)) > np.mean(metric(x, 1.0 - cams, targets, model)) + 1.0


def test_captum_sensitivity_max_is_zero_for_input_agnostic_saliency_with_a_fixed_seed(world):
    """What docs/use/integrations.md says of Captum's robustness metric, measured."""
    from captum.metrics import sensitivity_max

    model, data = world
    ias = InputAgnosticSaliency(model)
    x, t = data.images[:2], data.labels[:2]
    assert torch.equal(sensitivity_max(ias.attribute, x, target=t, n_perturb_samples=2, seed=0, **IAS_FAST),
                       torch.zeros(2))
    assert bool((sensitivity_max(Saliency(model).attribute, x, target=t, n_perturb_samples=2) > 0).all())


def test_use_page_examples_run():
    """The Python examples of docs/use/integrations.md run as printed."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "use" / "integrations.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) == 2
    for block in blocks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block, str(page), "exec"), {})
