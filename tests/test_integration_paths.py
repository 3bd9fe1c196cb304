"""Conformance sweep: our methods in the real quantus and pytorch-grad-cam as their docs show, and our figures.

quantus: several real metrics call our ``explain`` (numpy channel-first batches, numpy integer targets, one-
and three-channel images) and score exactly what they score when handed the maps our classes return directly;
every ``explain`` call quantus makes leaves the model and the global random state as found.
grad-cam: ``AttributionCAM`` called as grad-cam's CAMs are (``ClassifierOutputTarget``,
``ClassifierOutputSoftmaxTarget``, ``BinaryClassifierOutputTarget``, ``targets=None``) gives
``attributions_to_cams`` of our class's own maps, feeds ``show_cam_on_image`` and grad-cam's metrics, warns
nothing and leaves no hook, also after an error.
viz: every public figure on 1- and 3-channel, square and non-square images, a batch of 1, 12 classes, all-zero
maps (no signal, no NaN, no warning) and NaN maps (refused, naming the argument); figures stay out of pyplot
and ``save`` writes a PNG that reads back.
"""
import random
import re
import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import nn

from captum_global import viz
from captum_global.attr import RISE, SISE, InputAgnosticSaliency
from captum_global.backdoor import scan_figure
from captum_global.backdoor.result import BackdoorScan
from captum_global.errors import InvalidArgumentError
from captum_global.integrations import AttributionCAM, InputAgnosticWarning, attributions_to_cams, explain

quantus = pytest.importorskip("quantus")
quantus_asserts = pytest.importorskip("quantus.helpers.asserts")
quantus_utils = pytest.importorskip("quantus.helpers.utils")
grad_cam_targets = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
grad_cam_image = pytest.importorskip("pytorch_grad_cam.utils.image")
road = pytest.importorskip("pytorch_grad_cam.metrics.road")
cam_mult = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
ClassifierOutputTarget = grad_cam_targets.ClassifierOutputTarget
ClassifierOutputSoftmaxTarget = grad_cam_targets.ClassifierOutputSoftmaxTarget
BinaryClassifierOutputTarget = grad_cam_targets.BinaryClassifierOutputTarget

OURS = {"SISE": SISE, "RISE": RISE, "InputAgnosticSaliency": InputAgnosticSaliency}
# few masks / steps: the paths are under test, not the maps' quality
FAST = {"SISE": {}, "RISE": {"n_masks": 24, "s": 4}, "InputAgnosticSaliency": {"n_steps": 3, "samples_per_step": 4}}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _net(channels: int, classes: int, seed: int = 0) -> nn.Module:
    """A tiny CNN whose scores depend on where things are (2x2 pooling), with BatchNorm statistics and dropout."""
    with torch.random.fork_rng():  # building it leaves the test's global RNG alone
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                            nn.Dropout(0.5), nn.Linear(32, classes))
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.1, 0.1)
            net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _images(n: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _hooks(model: nn.Module) -> int:
    return sum(len(getattr(m, h)) for m in model.modules() for h in _HOOKS)


def _snapshot(model: nn.Module) -> dict:
    """The model's state and the global random state, as comparable values."""
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "hooks": _hooks(model),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }


def _differences(before: dict, after: dict) -> list:
    """What changed between two snapshots (empty when nothing did)."""
    changed = [name for name, value in before["tensors"].items() if not torch.equal(value, after["tensors"][name])]
    keys = ("training", "requires_grad", "grads", "hooks", "python_rng")
    changed += [key for key in keys if before[key] != after[key]]
    if not torch.equal(before["torch_rng"], after["torch_rng"]):
        changed.append("torch_rng")
    np_before, np_after = before["numpy_rng"], after["numpy_rng"]
    if not (np.array_equal(np_before[1], np_after[1]) and np_before[2:] == np_after[2:]):
        changed.append("numpy_rng")
    return changed


# ================================================================ quantus


def _direct(name: str, model: nn.Module, x: torch.Tensor, y) -> torch.Tensor:
    """Our class as a user calls it, with the seed explain() gives a method that takes one (0)."""
    kwargs = dict(FAST[name], **({} if name == "SISE" else {"seed": 0}))
    return OURS[name](model).attribute(x, target=torch.as_tensor(y), **kwargs)


def _direct_explain(model, inputs, targets, method, **_quantus_keywords):
    """An explain_func built on our class directly: one channel of its channel-broadcast map."""
    attributions = _direct(method, model, torch.as_tensor(inputs), targets)
    assert torch.equal(attributions, attributions[:, :1].expand_as(attributions))
    return attributions[:, :1].detach().numpy()


def _recording_explain(calls: list):
    """explain() as quantus's explain_func, noting for every call what it changed and what it returned."""

    def explain_func(model, inputs, targets, **kwargs):
        before = _snapshot(model)
        maps = explain(model, inputs, targets, **kwargs)
        calls.append({"changed": _differences(before, _snapshot(model)), "inputs": inputs, "targets": targets,
                      "maps": maps})
        return maps

    return explain_func


def _metrics(classes: int, masks: np.ndarray) -> list:
    """(label, metric, extra call keywords): each built afresh for each of the two runs compared."""
    return [
        ("FaithfulnessCorrelation", lambda: quantus.FaithfulnessCorrelation(
            nr_runs=4, subset_size=40, perturb_baseline="black", return_aggregate=False, disable_warnings=True), {}),
        ("MaxSensitivity", lambda: quantus.MaxSensitivity(nr_samples=2, lower_bound=0.1, disable_warnings=True), {}),
        ("RandomLogit", lambda: quantus.RandomLogit(num_classes=classes, seed=0, disable_warnings=True), {}),
        ("Sparseness", lambda: quantus.Sparseness(disable_warnings=True), {}),
        ("PointingGame", lambda: quantus.PointingGame(disable_warnings=True), {"s_batch": masks}),
    ]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("method", list(OURS))
def test_quantus_metrics_score_explain_as_they_score_the_maps_our_class_returns(method, channels):
    """quantus's metrics through ``explain`` == through the class's own maps (a_batch, and an explain_func on the
    class for the explanations they recompute); every call leaves model and global RNG as found."""
    model = _net(channels, classes=5)
    x = _images(4, channels, 12, 14, seed=channels).numpy()  # numpy, channel first, non-square: as quantus passes
    y = np.array([0, 3, 1, 4])
    masks = np.zeros((4, 1, 12, 14), dtype=np.float32)
    masks[:, :, 2:8, 3:10] = 1.0
    direct = _direct_explain(model, x, y, method)
    kwargs = {"method": method, **FAST[method]}
    for label, make, extra in _metrics(5, masks):
        calls: list = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputAgnosticWarning)
            np.random.seed(7)  # quantus draws its subsets and noise from NumPy's global RNG
            ours = make()(model=model, x_batch=x, y_batch=y, device="cpu", explain_func=_recording_explain(calls),
                          explain_func_kwargs=kwargs, **extra)
            np.random.seed(7)
            theirs = make()(model=model, x_batch=x, y_batch=y, a_batch=direct, device="cpu",
                            explain_func=_direct_explain, explain_func_kwargs=kwargs, **extra)
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        assert ours.shape == (4,) and np.isfinite(ours).all(), (label, ours)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6, err_msg=label)
        assert calls, f"{label} never called explain_func"
        for call in calls:
            assert call["changed"] == [], (label, call["changed"])
            assert call["maps"].shape == (call["inputs"].shape[0], 1, 12, 14)
        # the first call explains the batch itself: the very maps of the class
        np.testing.assert_allclose(calls[0]["maps"], direct, rtol=1e-6, atol=1e-7, err_msg=label)
    assert _hooks(model) == 0


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("method", list(OURS))
def test_explain_returns_what_quantus_own_checks_expect_for_every_numpy_integer_target(method, channels):
    model = _net(channels, classes=5)
    x = _images(3, channels, 10, 13, seed=5).numpy()
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputAgnosticWarning)
        maps = explain(model, x, np.array([4, 0, 2]), method=method, device="cpu", **FAST[method])
        for dtype in (np.int32, np.uint8, np.int16):
            np.testing.assert_array_equal(explain(model, x, np.array([4, 0, 2], dtype=dtype), method=method,
                                                  **FAST[method]), maps)
    assert _differences(before, _snapshot(model)) == []
    assert type(maps) is np.ndarray and maps.dtype == np.float32 and maps.shape == (3, 1, 10, 13)
    assert np.isfinite(maps).all() and maps.any()
    quantus_asserts.assert_attributions(x_batch=x, a_batch=maps)  # quantus's own checks, as its metrics run them
    assert quantus_utils.expand_attribution_channel(maps, x) is maps
    assert list(quantus_utils.infer_attribution_axes(maps, x)) == [1, 2]  # the spatial axes, also for one channel
    np.testing.assert_allclose(maps, _direct_explain(model, x, np.array([4, 0, 2]), method), rtol=1e-6, atol=1e-7)


def test_quantus_scores_a_captum_method_through_explain_as_through_its_own_explain_and_warns_nothing():
    """Saliency by name with channel_reduce="sum" is quantus.explain's own Saliency: the same scores, and no
    Captum "did not already require gradients" warning at each of the calls quantus makes."""
    model = _net(3, classes=5)
    x, y = _images(3, 3, 12, 14, seed=9).numpy(), np.array([2, 0, 4])
    scores = []
    for explain_func, kwargs in [(explain, {"method": "Saliency", "channel_reduce": "sum"}),
                                 (quantus.explain, {"method": "Saliency"})]:
        np.random.seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            scores.append(quantus.MaxSensitivity(nr_samples=3, lower_bound=0.1, disable_warnings=True)(
                model=model, x_batch=x, y_batch=y, device="cpu", explain_func=explain_func,
                explain_func_kwargs=kwargs))
    assert np.isfinite(scores[0]).all() and min(scores[0]) > 0
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)


# ================================================================ pytorch-grad-cam


CAM_METHODS = ["SISE", "RISE", "InputAgnosticSaliency", "Saliency", "LayerGradCam"]


def _cam(model: nn.Module, name: str) -> AttributionCAM:
    if name == "LayerGradCam":
        return AttributionCAM(model=model, method=name, target_layers=[model[3]])
    if name == "InputAgnosticSaliency":
        return AttributionCAM(model=model, method=name, seed=0, **FAST[name])
    return AttributionCAM(model=model, method=name, **FAST.get(name, {}))


def _direct_cams(name: str, model: nn.Module, x: torch.Tensor, target, scored=None, **kwargs) -> np.ndarray:
    """attributions_to_cams of the class's own maps; ``scored`` is the model whose output is the explained score
    (for Captum's methods and RISE), defaulting to ``model``."""
    scored = model if scored is None else scored
    if name == "SISE":
        attributions = SISE(model).attribute(x, target=target, **kwargs)
    elif name == "RISE":
        attributions = RISE(scored).attribute(x, target=target, **FAST[name], **kwargs)
    elif name == "InputAgnosticSaliency":
        attributions = InputAgnosticSaliency(model).attribute(x, target=target, seed=0, **FAST[name])
    elif name == "Saliency":
        attributions = Saliency(scored).attribute(x.clone().requires_grad_(), target=target)
    else:
        layer_maps = LayerGradCam(scored, model[3]).attribute(x, target=target)
        attributions = LayerAttribution.interpolate(layer_maps, tuple(x.shape[-2:]), "bilinear")
    return attributions_to_cams(attributions.detach())


def _call_cam(cam: AttributionCAM, model: nn.Module, x: torch.Tensor, targets) -> np.ndarray:
    """One call as grad-cam's docs write it: no warning, nothing left on the model, RNG as found."""
    before = _snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cams = cam(input_tensor=x, targets=targets)
    assert _differences(before, _snapshot(model)) == []
    assert isinstance(cams, np.ndarray) and cams.dtype == np.float32 and cams.shape == (x.shape[0], *x.shape[-2:])
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0
    return cams


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", CAM_METHODS)
def test_attribution_cam_with_class_targets_feeds_grad_cam_overlay_and_metrics(name, channels):
    model = _net(channels, classes=5)
    x = _images(2, channels, 12, 14, seed=11)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    with _cam(model, name) as cam:
        cams = _call_cam(cam, model, x, targets)
    np.testing.assert_allclose(cams, _direct_cams(name, model, x, [1, 4]), rtol=1e-5, atol=1e-6)
    assert cams.max() == 1.0
    for i in range(2):
        overlay = grad_cam_image.show_cam_on_image(x[i].permute(1, 2, 0).numpy(), cams[i], use_rgb=True)
        assert overlay.shape == (12, 14, 3) and overlay.dtype == np.uint8
    change = cam_mult.CamMultImageConfidenceChange()(x, cams, targets, model)
    with torch.no_grad():
        before, after = model(x)[[0, 1], [1, 4]], model(x * torch.from_numpy(cams)[:, None])[[0, 1], [1, 4]]
    np.testing.assert_allclose(np.ravel(change), (after - before).numpy(), rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():  # grad-cam's own imputer trips NumPy 2's __array_wrap__ deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        road_scores = road.ROADMostRelevantFirst(percentile=50)(x, cams, targets, model)
    assert np.shape(road_scores) == (2,) and np.isfinite(road_scores).all()
    assert _hooks(model) == 0


@pytest.mark.parametrize("name", CAM_METHODS)
def test_attribution_cam_without_targets_explains_each_images_top_class(name):
    model = _net(3, classes=5)
    x = _images(3, 3, 12, 12, seed=3)
    with torch.no_grad():
        top = model(x).argmax(dim=1)
    cams = _call_cam(_cam(model, name), model, x, None)
    np.testing.assert_allclose(cams, _direct_cams(name, model, x, top), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SISE", "RISE", "Saliency", "LayerGradCam"])
def test_attribution_cam_softmax_targets_explain_the_class_probability(name):
    """ClassifierOutputSoftmaxTarget(k) is the probability of k: SISE's score="softmax", RISE's default
    apply_softmax=True, Captum's methods on the model followed by a softmax."""
    model = _net(3, classes=5)
    x = _images(2, 3, 12, 14, seed=4)
    cams = _call_cam(_cam(model, name), model, x, [ClassifierOutputSoftmaxTarget(2), ClassifierOutputSoftmaxTarget(0)])
    softmax_model = nn.Sequential(model, nn.Softmax(dim=1))
    if name == "SISE":
        expected = _direct_cams(name, model, x, [2, 0], score="softmax")
    elif name == "RISE":  # its own default softmax over the model's classes: the same probability
        expected = _direct_cams(name, model, x, [2, 0])
        np.testing.assert_allclose(_direct_cams(name, model, x, [2, 0], scored=softmax_model, apply_softmax=False),
                                   expected, rtol=1e-5, atol=1e-6)
    else:
        expected = _direct_cams(name, model, x, [2, 0], scored=softmax_model)
    np.testing.assert_allclose(cams, expected, rtol=1e-4, atol=1e-5)


class _Signed(nn.Module):
    def __init__(self, sign: float) -> None:
        super().__init__()
        self.sign = sign

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.sign * scores


@pytest.mark.parametrize("name", ["SISE", "RISE", "Saliency", "LayerGradCam"])
def test_attribution_cam_binary_targets_explain_the_signed_logit_of_a_one_logit_model(name):
    """BinaryClassifierOutputTarget(1) is the logit, (0) its negative: one image each."""
    model = _net(3, classes=1)
    x = _images(2, 3, 12, 14, seed=6)
    cams = _call_cam(_cam(model, name), model, x, [BinaryClassifierOutputTarget(1), BinaryClassifierOutputTarget(0)])
    for i, sign in enumerate((1.0, -1.0)):
        extra = {"score": (lambda s: s) if sign > 0 else (lambda s: -s)} if name == "SISE" else {}
        if name == "RISE":
            extra = {"apply_softmax": False}
        expected = _direct_cams(name, model, x[i:i + 1], 0, scored=nn.Sequential(model, _Signed(sign)), **extra)
        np.testing.assert_allclose(cams[i:i + 1], expected, rtol=1e-4, atol=1e-5, err_msg=f"image {i}")
    assert cams.any()  # (RISE: the logit is negative on both images, so only the negated one has evidence)


def test_attribution_cam_removes_its_hook_and_restores_state_when_a_target_or_method_fails():
    model = _net(3, classes=5)
    x = _images(2, 3, 12, 12, seed=8)

    def failing(row):
        raise ValueError("this target fails")

    for cam, targets, error, message in [
        (AttributionCAM(model, "SISE"), [ClassifierOutputTarget(0), failing], ValueError, "this target fails"),
        (AttributionCAM(model, "Saliency"), [failing, failing], ValueError, "this target fails"),
        # an explicit softmax over the one hooked score is the method's own refusal, not a leftover hook
        (AttributionCAM(model, "RISE", apply_softmax=True, **FAST["RISE"]), [ClassifierOutputSoftmaxTarget(1)] * 2,
         InvalidArgumentError, "apply_softmax=True needs at least two classes"),
        (AttributionCAM(model, "SISE"), [ClassifierOutputTarget(9)] * 2, InvalidArgumentError, "targets"),
    ]:
        before = _snapshot(model)
        with pytest.raises(error, match=message):
            cam(input_tensor=x, targets=targets)
        assert _differences(before, _snapshot(model)) == []
        assert model[-1]._forward_hooks == {} and model._forward_hooks == {} and _hooks(model) == 0
    # and the model still explains normally afterwards
    assert _call_cam(AttributionCAM(model, "SISE"), model, x, [ClassifierOutputSoftmaxTarget(0)] * 2).max() == 1.0


# ================================================================ viz


SHAPES = [(1, 12, 12), (3, 12, 12), (3, 10, 16), (1, 9, 14)]
KINDS = ("rand", "zero")


def _scan(classes: int, channels: int, height: int, width: int, zero: bool = False) -> BackdoorScan:
    g = torch.Generator().manual_seed(classes)
    masks = torch.zeros(classes, height, width) if zero else torch.rand(classes, height, width, generator=g)
    patterns = torch.zeros(classes, channels, height, width) if zero else torch.rand(
        classes, channels, height, width, generator=g)
    return BackdoorScan(method="input-agnostic scan", classes=list(range(classes)),
                        statistics={"mask_l1": masks.flatten(1).sum(1)}, anomaly_index=torch.linspace(0, 3, classes),
                        flagged=[classes - 1], threshold=2.0, maps=patterns.clone(), trigger_masks=masks,
                        trigger_patterns=patterns, attack_success=torch.zeros(classes))


def _image_arrays(fig):
    return [(ax, im) for ax in fig.axes for im in ax.get_images()]


def _check_saved(fig, tmp_path, label: str) -> None:
    import matplotlib.image

    path = tmp_path / f"{label}.png"
    viz.save(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(str(path))
    assert abs(pixels.shape[0] - fig.get_figheight() * 110) <= 1
    assert abs(pixels.shape[1] - fig.get_figwidth() * 110) <= 1
    assert np.isfinite(pixels).all() and pixels.std() > 0


def _assert_grey_on_a_fixed_scale(im) -> None:
    """A one-channel image drawn as a grey image in [0, 1], not in false colour stretched to its own range."""
    assert im.get_array().ndim == 2 and im.get_cmap().name == "gray" and im.get_clim() == (0.0, 1.0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_figure_on_every_image_shape_one_image_and_twelve_classes(shape, tmp_path):
    import matplotlib.pyplot as plt

    channels, height, width = shape
    g = torch.Generator().manual_seed(height * width)
    image = torch.rand(1, channels, height, width, generator=g) * 0.5 + 0.25  # a batch of 1, mid-range values
    layer_map = torch.rand(1, 1, height // 3, width // 3, generator=g)  # a layer method's [N, 1, h, w] map
    sets = torch.rand(12, 1, channels, height, width, generator=g)
    names = [f"class {i}" for i in range(12)]
    region = torch.zeros(height, width, dtype=torch.bool)
    region[2:5, 3:7] = True
    before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning while building or drawing (saving draws)
        figures = {
            "gallery": viz.explanation_gallery(
                image, {"rand": torch.rand(1, channels, height, width, generator=g),
                        "zero": torch.zeros(1, channels, height, width), "layer": layer_map},
                boxes=torch.tensor([[1, 1, 5, 6]]), row_titles=["one"], scores={"rand": {"EBPG": [0.5]}}, title="t"),
            "class_maps": viz.class_map_grid({"rand": torch.rand(12, channels, height, width, generator=g),
                                              "zero": torch.zeros(12, channels, height, width)}, names,
                                             highlight=region, title="t"),
            "sets": viz.synthetic_set_grid(sets, names, title="t"),
            "classwise": viz.classwise_sets_figure(sets, names, real_examples=sets.flip(0),
                                                   confidence=torch.rand(12, 1, generator=g),
                                                   highlight=region, initial_images=sets * 0.5, title="t " * 80),
            "classwise_zero": viz.classwise_sets_figure(torch.zeros_like(sets), names,
                                                        initial_images=torch.zeros_like(sets), stretch=True),
            "scan": scan_figure({"rand": _scan(12, channels, height, width), "zero": _scan(3, channels, height, width,
                                                                                             zero=True)},
                                class_names=names, planted=region, title="t"),
        }
        for label, fig in figures.items():
            _check_saved(fig, tmp_path, label)
    assert plt.get_fignums() == before

    gallery = figures["gallery"]
    assert len(gallery.axes) == 4
    assert [ax.get_title() for ax in gallery.axes[1:]] == ["rand\nEBPG 0.50", "zero\n(empty map)", "layer"]
    for ax, im in _image_arrays(gallery):  # every panel drawn at the image's size, nothing NaN
        array = np.ma.getdata(im.get_array())
        assert array.shape[:2] == (height, width) and np.isfinite(array).all(), ax.get_title()
    if channels == 1:  # the input and the empty map's plain image
        for ax in (gallery.axes[0], gallery.axes[2]):
            _assert_grey_on_a_fixed_scale(ax.get_images()[0])

    class_maps = figures["class_maps"]
    assert len(class_maps.axes) == 24
    for i, (ax, im) in enumerate(_image_arrays(class_maps)):
        array = np.ma.getdata(im.get_array())
        assert array.shape == (height, width) and np.isfinite(array).all()
        if i >= 12:  # the all-zero maps: no signal, drawn as zeros, never stretched noise
            assert not array.any()
        else:
            assert array.min() == 0.0 and array.max() == 1.0

    assert len(figures["sets"].axes) == 12
    assert len(figures["classwise"].axes) == 12 * 5  # synthetic, gap, change, gap, real
    for label in ("sets", "classwise", "classwise_zero"):
        for ax, im in _image_arrays(figures[label]):
            array = np.ma.getdata(im.get_array())
            assert array.shape[:2] == (height, width) and np.isfinite(array).all()
            if channels == 1 and ax.get_title() != "|change|" and im.get_cmap().name != "inferno":
                _assert_grey_on_a_fixed_scale(im)
    zero_arrays = [np.ma.getdata(im.get_array()) for _, im in _image_arrays(figures["classwise_zero"])]
    assert all(not a.any() for a in zero_arrays)

    scan = figures["scan"]
    assert len(scan.axes) == 2 * 12
    panels = [ax.get_images() for ax in scan.axes]
    assert all(len(p) == 1 for p in panels[:12] + panels[12:15]) and all(not p for p in panels[15:])
    for images in panels[:15]:
        im = images[0]
        assert im.get_clim() == (0.0, 1.0) and np.isfinite(np.ma.getdata(im.get_array())).all()
    for images in panels[12:15]:  # no trigger at all: the plain mid-grey canvas, not black
        np.testing.assert_array_equal(np.ma.getdata(images[0].get_array()), 0.5)
    assert "FLAGGED" in scan.axes[11].get_title() and scan.axes[11].title.get_color() == "red"


def _nan(shape, at=0):
    value = torch.rand(*shape)
    value.view(-1)[at] = float("nan")
    return value


@pytest.mark.parametrize("argument, draw", [
    ("images", lambda: viz.explanation_gallery(_nan((1, 3, 8, 8)), {"m": torch.rand(1, 3, 8, 8)})),
    ("attributions['m']", lambda: viz.explanation_gallery(torch.rand(1, 1, 8, 8), {"m": _nan((1, 1, 8, 8), 5)})),
    ("attributions['m']", lambda: viz.explanation_gallery(torch.rand(1, 3, 8, 8), {"m": _nan((1, 1, 4, 4))})),
    ("maps_by_model['a']", lambda: viz.class_map_grid({"a": _nan((12, 1, 8, 10), 700)}, list("abcdefghijkl"))),
    ("images_by_class", lambda: viz.synthetic_set_grid(_nan((12, 1, 3, 8, 8), 100), list("abcdefghijkl"))),
    ("images_by_class", lambda: viz.classwise_sets_figure(_nan((2, 1, 1, 8, 8)), ["a", "b"], stretch=True)),
    ("initial_images", lambda: viz.classwise_sets_figure(torch.rand(2, 1, 3, 8, 8), ["a", "b"],
                                                         initial_images=_nan((2, 1, 3, 8, 8), 9))),
    ("real_examples", lambda: viz.classwise_sets_figure(torch.rand(2, 1, 3, 8, 8), ["a", "b"],
                                                        real_examples=_nan((2, 2, 3, 8, 8), 9))),
    ("confidence", lambda: viz.classwise_sets_figure(torch.rand(2, 1, 3, 8, 8), ["a", "b"], confidence=_nan((2, 1)))),
    ("scans['s'].trigger_masks", lambda: scan_figure({"s": _with(_scan(2, 1, 8, 8), trigger_masks=_nan((2, 8, 8)))})),
    ("scans['s'].trigger_patterns",
     lambda: scan_figure({"s": _with(_scan(2, 3, 8, 8), trigger_patterns=_nan((2, 3, 8, 8), 40))})),
])
def test_nan_maps_and_images_are_refused_naming_the_argument(argument, draw):
    """A NaN would blank its panel (and, through a shared scale, its row): refused before anything is drawn."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    with pytest.raises(InvalidArgumentError, match=re.escape(argument) + " must be finite"):
        draw()
    assert plt.get_fignums() == before


def _with(scan: BackdoorScan, **changes) -> BackdoorScan:
    for key, value in changes.items():
        setattr(scan, key, value)
    return scan


@pytest.mark.parametrize("draw", [
    lambda: viz.synthetic_set_grid(torch.rand(3, 1, 3, 8, 8), ["a", "b"]),
    lambda: viz.classwise_sets_figure(torch.rand(3, 1, 1, 8, 8), ["a", "b"]),
    lambda: viz.classwise_sets_figure(torch.rand(3, 1, 1, 8, 8), "abc"),
])
def test_a_missing_row_caption_is_refused_naming_class_names(draw):
    with pytest.raises(InvalidArgumentError, match="class_names"):
        draw()


def test_gallery_draws_an_image_of_two_channels_as_their_mean_in_grey():
    # imshow draws only one, three or four channels: any count other than three is shown as the mean, in grey
    image = torch.zeros(1, 2, 6, 6)
    image[0, 0] = 0.8
    image[0, 1, :, :3] = 0.4
    fig = viz.explanation_gallery(image, {"m": torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))})
    shown = fig.axes[0].get_images()[0]
    _assert_grey_on_a_fixed_scale(shown)
    expected = np.full((6, 6), 0.4)
    expected[:, :3] = 0.6   # (0.8 + 0.4) / 2 on the left, (0.8 + 0) / 2 on the right
    assert np.allclose(shown.get_array(), expected)


def test_class_map_grid_without_any_model_is_refused_naming_the_argument():
    with pytest.raises(InvalidArgumentError, match="maps_by_model holds no model"):
        viz.class_map_grid({}, ["a", "b"])
