"""Unusual but legitimate inputs and models, on every public class, scan and faithfulness metric.

What Captum users bring: float64 models (explicitly, or under
``torch.set_default_dtype(torch.float64)``), channels-last and strided
inputs, inputs that require grad, grayscale images of odd, non-square
sizes, batches of one, ImageNet-sized heads (1000 classes), in-place
activations, ``nn.DataParallel`` on the CPU, keyword forward arguments,
tuples of inputs and models whose output ignores the input. Each check
compares against an independent reference: the float32 run, the
contiguous input, the unwrapped model, or a value computed by hand.
SISE, RISE and InputAgnosticSaliency on float64 inputs, layouts, in-place
models and DataParallel are in test_attr_dropin / test_captum_conventions;
what is here completes them.
"""
import functools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_global.attr import RISE, SISE, ClassWiseSynthesis, InputAgnosticSaliency
from captum_global.backdoor import neural_cleanse, scan_for_backdoor
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics import deletion_auc, drop_and_increase, insertion_auc

CLASSES = 4
TARGETS = [1, 2, 0, 3]
IAS_FAST = dict(n_steps=2, samples_per_step=2, seed=0)
SCAN_FAST = dict(n_steps=3, cells=4, batch_size=4, check_every=1, seed=0)
NC_FAST = dict(n_epochs=2, batch_size=4, seed=0)
CWS_FAST = dict(iterations=3, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def conv_net(channels: int = 3, classes: int = CLASSES, inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes),
    ).eval()


def images(n: int = 8, channels: int = 3, h: int = 12, w: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, h, w, generator=torch.Generator().manual_seed(seed))


def labelled(x: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, torch.arange(x.shape[0]) % CLASSES)


# one entry per scan, synthesis or metric: (model, inputs, attributions) -> a tensor to compare
def _metrics(model, x, attr):
    target = TARGETS * (x.shape[0] // len(TARGETS))
    drop, increase = drop_and_increase(model, x, attr, target=target)
    _, inserted = insertion_auc(model, x, attr, target=target, n_steps=4, return_curve=True)
    _, deleted = deletion_auc(model, x, attr, target=target, n_steps=4, return_curve=True)
    return torch.cat([drop.unsqueeze(1), increase.unsqueeze(1), inserted, deleted], dim=1)


def _scan(model, x, attr):
    scan = scan_for_backdoor(model, x[:1], clean_inputs=x, **SCAN_FAST)
    return torch.cat([scan.trigger_masks.flatten(), scan.trigger_patterns.flatten()])


def _noise_scan(model, x, attr):  # no clean inputs: the scan draws its own smooth noise images
    scan = scan_for_backdoor(model, x[:1], num_noise_samples=8, **SCAN_FAST)
    return torch.cat([scan.trigger_masks.flatten(), scan.trigger_patterns.flatten()])


def _cleanse(model, x, attr):
    scan = neural_cleanse(model, x, **NC_FAST)
    return torch.cat([scan.trigger_masks.flatten(), scan.trigger_patterns.flatten()])


def _classwise(model, x, attr, **options):
    return ClassWiseSynthesis(model).attribute(labelled(x), **CWS_FAST, **options).images


RUNS = {
    "metrics": _metrics,
    "scan": _scan,
    "noise_scan": _noise_scan,
    "neural_cleanse": _cleanse,
    "classwise": _classwise,
    "classwise_spectrum": functools.partial(_classwise, parametrization="spectrum"),
    "classwise_trajectory": lambda model, x, attr: _classwise(
        model, x, attr, mode="trajectory", student_steps=2,
        checkpoints=[model.state_dict(), {k: v + 0.05 for k, v in model.state_dict().items()}]),
}


# ---------------------------------------------------------------- float64


@pytest.mark.parametrize("name", sorted(RUNS))
def test_float64_model_and_inputs_give_float64_results_equal_to_float32(name):
    """ClassWiseSynthesis drew its starting noise in the model's dtype: a float64 model started from other
    noise than the float32 one (images 0.2 apart for the same seed)."""
    model, x, attr = conv_net(), images(), images(seed=2)
    expected = RUNS[name](model, x, attr)
    got = RUNS[name](conv_net().double(), x.double(), attr.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected.double(), rtol=0, atol=1e-5)


ATTRIBUTIONS = {
    "SISE": lambda model, x: SISE(model).attribute(x, target=TARGETS),
    "RISE": lambda model, x: RISE(model).attribute(x, target=TARGETS, n_masks=12),
    "InputAgnosticSaliency": lambda model, x: InputAgnosticSaliency(model).attribute(x, target=TARGETS, **IAS_FAST),
}


@pytest.fixture
def default_float64():
    """torch.set_default_dtype(torch.float64) for the test, as users who work in double precision do."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("name", sorted(ATTRIBUTIONS) + sorted(RUNS))
def test_default_dtype_float64_gives_the_float32_results(name, request):
    """Seeded draws (RISE's masks, the noise samples, the scans' starting stamps, the synthesis' noise)
    followed torch's default dtype, and a float64 draw gives other numbers for the same seed: under
    set_default_dtype(float64) every method gave another result than for the same model in float32, and
    scan_for_backdoor failed ("Index put requires the source and destination dtypes match")."""
    model, x, attr = conv_net(), images(4), images(4, seed=2)
    run = ATTRIBUTIONS[name] if name in ATTRIBUTIONS else functools.partial(RUNS[name], attr=attr)
    expected = run(model, x)
    model64, x64 = conv_net().double(), x.double()
    request.getfixturevalue("default_float64")
    got = run(model64, x64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected.double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(ATTRIBUTIONS))
def test_a_tuple_of_float32_and_float64_inputs_gets_a_map_in_each_dtype(name):
    """RISE returned the float32 map for the float64 input of a mixed tuple."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = conv_net(), conv_net(channels=1)

        def forward(self, x, z):
            return self.a(x) + self.b(z.to(x.dtype))

    model = TwoInputs().eval()
    x, z = images(4, h=11, w=13), images(4, channels=1, h=11, w=13, seed=3)
    run = ATTRIBUTIONS[name]
    if name == "InputAgnosticSaliency":  # "smooth" zeroes pixels below a quantile: round-off may flip one
        run = lambda model, x: InputAgnosticSaliency(model).attribute(x, target=TARGETS, refine="none", **IAS_FAST)
    expected = run(model, (x, z))
    got = run(model, (x, z.double()))
    assert isinstance(got, tuple) and [a.dtype for a in got] == [torch.float32, torch.float64]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- layouts and inputs that require grad


@pytest.mark.parametrize("name", ["metrics", "scan", "neural_cleanse", "classwise"])
def test_channels_last_and_strided_inputs_give_the_contiguous_result(name):
    model, x, attr = conv_net(), images(), images(seed=2)
    expected = RUNS[name](model, x, attr)
    wide = torch.zeros(8, 3, 12, 24)
    wide[..., ::2] = x
    layouts = {
        "channels_last": (x.contiguous(memory_format=torch.channels_last),
                          attr.contiguous(memory_format=torch.channels_last)),
        "transposed": (x.transpose(2, 3).contiguous().transpose(2, 3),
                       attr.transpose(2, 3).contiguous().transpose(2, 3)),
        "strided": (wide[..., ::2], attr),
    }
    for layout, (xv, av) in layouts.items():
        torch.testing.assert_close(RUNS[name](model, xv, av), expected, rtol=0, atol=1e-5, msg=layout)
    # a channels-last model too
    chl = conv_net().to(memory_format=torch.channels_last)
    torch.testing.assert_close(RUNS[name](chl, x, attr), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["metrics", "scan", "neural_cleanse", "classwise"])
def test_inputs_that_require_grad_give_the_same_result_and_keep_their_grad(name):
    model, x, attr = conv_net(), images(), images(seed=2)
    expected = RUNS[name](model, x, attr)
    leaf = x.clone().requires_grad_(True)
    leaf.grad = torch.full_like(x, 3.0)
    attr_leaf = attr.clone().requires_grad_(True)
    got = RUNS[name](model, leaf, attr_leaf * 1.0)  # attributions with a graph, as a Captum method may return
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not got.requires_grad and got.grad_fn is None
    assert leaf.requires_grad and torch.equal(leaf.grad, torch.full_like(x, 3.0))
    assert attr_leaf.requires_grad and attr_leaf.grad is None
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- grayscale, odd sizes, batch of one, 1000 classes


class Window(nn.Module):
    """1000 scores computed from the top-left 10 x 12 pixels of a one-channel image only."""

    def __init__(self, h: int = 29, w: int = 37):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 1000)
        window = torch.zeros(1, 1, h, w)
        window[..., :10, :12] = 1
        self.register_buffer("window", window)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x * self.window)).mean((2, 3)))


def gray(n: int = 1, seed: int = 1) -> torch.Tensor:
    return images(n, channels=1, h=29, w=37, seed=seed)


def test_rise_on_one_grayscale_odd_sized_image_of_a_1000_class_model_is_its_formula():
    """sum_i P_999(x M_i) M_i / (n_masks p1), the softmax over all 1000 classes, on a 1 x 29 x 37 image."""
    model, x = Window().eval(), gray()
    got = RISE(model).attribute(x, target=999, n_masks=20, seed=3, perturbations_per_eval=7)
    masks = torch.cat(list(RISE.masks(29, 37, n_masks=20, seed=3)))
    with torch.no_grad():
        probs = model(x * masks).softmax(1)[:, 999]
    expected = (probs.view(-1, 1, 1, 1) * masks).sum(0, keepdim=True) / (20 * 0.5)
    assert got.shape == (1, 1, 29, 37)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)


def test_input_agnostic_saliency_on_a_non_square_image_marks_only_what_the_model_reads():
    """The model reads rows 0-9 and columns 0-11 of a 29 x 37 image: without refinement the map is the
    perturbation's magnitude, which has no gradient, hence no value, anywhere else (a transposed or
    resized map would show)."""
    maps = InputAgnosticSaliency(Window().eval()).attribute(gray(2), target=[999, 5], refine="none", scale="max",
                                                            **IAS_FAST)
    assert maps.shape == (2, 1, 29, 37)
    outside = torch.ones(29, 37, dtype=torch.bool)
    outside[:10, :12] = False
    assert torch.equal(maps[:, 0][:, outside], torch.zeros_like(maps[:, 0][:, outside]))
    assert bool((maps[:, 0, :10, :12].flatten(1).amax(1) == 1).all())


def test_sise_on_grayscale_odd_sized_images_is_per_example_and_flat_where_the_model_sees_nothing():
    """The model's convolution sees zeros outside rows 0-9 and columns 0-11 (plus its one-pixel halo): its
    maps, hence every mask and the map, are constant there, and only there (a transposed map would not be)."""
    model, x = Window().eval(), gray(2)
    batch = SISE(model).attribute(x, target=[999, 5])
    alone = SISE(model).attribute(x[1:], target=5)
    assert batch.shape == (2, 1, 29, 37) and alone.shape == (1, 1, 29, 37)
    torch.testing.assert_close(alone, batch[1:], rtol=0, atol=1e-6)
    assert float(batch.min()) >= 0 and torch.equal(batch.flatten(1).amax(1), torch.ones(2))
    seen = torch.zeros(29, 37, dtype=torch.bool)
    seen[:11, :13] = True
    for example in batch[:, 0]:
        assert example[~seen].unique().numel() == 1
        assert example[:10, :12].unique().numel() > 100


def test_faithfulness_metrics_on_a_grayscale_odd_sized_image_of_a_1000_class_model_are_hand_computed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(29 * 37, 1000)).eval()
    x, attr = gray(), gray(seed=2)
    w, b = model[1].weight[999].detach(), model[1].bias[999].detach()
    # deletion, raw score: step k zeroes the round(k * 29 * 37 / 4) pixels with the largest attribution
    _, curve = deletion_auc(model, x, attr, target=999, n_steps=4, score="raw", return_curve=True)
    order = torch.sort(attr.flatten(), descending=True, stable=True).indices
    expected = []
    for k in range(5):
        kept = x.flatten().clone()
        kept[order[:round(k * 29 * 37 / 4)]] = 0
        expected.append(float(kept @ w + b))
    torch.testing.assert_close(curve[0], torch.tensor(expected), rtol=0, atol=1e-5)
    # Average Drop with the softmax over the 1000 classes: the input times its min-max normalised map
    drop, increase = drop_and_increase(model, x, attr, target=999)
    a = attr.flatten()
    explained = x.flatten() * (a - a.min()) / (a.max() - a.min())
    with torch.no_grad():
        y = model(x).softmax(1)[0, 999]
        o = model(explained.view(1, 1, 29, 37)).softmax(1)[0, 999]
    torch.testing.assert_close(drop, (100 * (y - o).clamp(min=0) / y).view(1), rtol=1e-5, atol=1e-6)
    assert float(increase) == (100.0 if o > y else 0.0)


def test_scans_on_grayscale_odd_sized_images_of_a_1000_class_model_report_what_their_stamps_do():
    """The attack success each scan reports is the share of its inputs that (1 - m) x + m p sends to the class."""
    model, x = Window().eval(), gray(8)
    with torch.no_grad():
        common = int(model(x).argmax(1).mode().values)  # the class the model gives most of them: reachable
    classes = sorted([common] + [c for c in (0, 1, 999) if c != common][:2])
    for scan in (scan_for_backdoor(model, x[:1], classes=classes, clean_inputs=x, **SCAN_FAST),
                 neural_cleanse(model, x, classes=classes, **NC_FAST)):
        assert scan.classes == classes
        assert scan.trigger_masks.shape == (3, 29, 37) and scan.trigger_patterns.shape == (3, 1, 29, 37)
        assert float(scan.trigger_masks.min()) >= 0 and float(scan.trigger_masks.max()) <= 1
        with torch.no_grad():
            for k, c in enumerate(classes):
                m, p = scan.trigger_masks[k], scan.trigger_patterns[k]
                share = float((model((1 - m) * x + m * p).argmax(1) == c).float().mean())
                assert float(scan.attack_success[k]) == pytest.approx(share), (scan.method, c)
        assert float(scan.attack_success.max()) > 0  # the common class is reached: not a vacuous check


def test_classwise_synthesis_on_grayscale_odd_sized_images_of_a_1000_class_model():
    model, x = Window().eval(), gray(8)
    data = TensorDataset(x, torch.tensor([0, 999] * 4))
    result = ClassWiseSynthesis(model).attribute(data, classes=[0, 999], images_per_class=2, **CWS_FAST)
    assert result.images.shape == (2, 2, 1, 29, 37) and list(result.classes) == [0, 999]
    with torch.no_grad():
        probs = model(result.images.flatten(0, 1)).softmax(1).view(2, 2, 1000)
    torch.testing.assert_close(result.confidence, torch.stack([probs[0, :, 0], probs[1, :, 999]]), rtol=1e-5, atol=0)
    assert torch.equal(result.predictions, probs.argmax(-1))
    # without classes= every class is wanted: the error names a few of the 998 without examples, not all
    with pytest.raises(InvalidArgumentError) as error:
        ClassWiseSynthesis(model).attribute(data, **CWS_FAST)
    message = str(error.value)
    assert "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...] (998 of 1000) have no examples" in message
    assert "classes=" in message and len(message) < 300


# ---------------------------------------------------------------- in-place models, DataParallel, keyword arguments


class InPlace(nn.Module):
    """conv_net's weights, with ``x.relu_()`` on the input and ``relu_()`` after the first convolution."""

    def __init__(self, in_place: bool = True):
        super().__init__()
        self.net, self.in_place = conv_net(), in_place

    def forward(self, x):
        x = x.relu_() if self.in_place else x.relu()
        h = self.net[0](x)
        h = h.relu_() if self.in_place else h.relu()
        return self.net[2:](h)


@pytest.mark.parametrize("name", ["metrics", "scan", "neural_cleanse", "classwise", "classwise_trajectory"])
def test_models_working_in_place_give_the_out_of_place_result_and_leave_the_inputs_alone(name):
    x, attr = images() - 0.5, images(seed=2)  # negative values, which x.relu_() would overwrite
    kept = x.clone()
    expected = RUNS[name](InPlace(in_place=False).eval(), x, attr)
    got = RUNS[name](InPlace().eval(), x, attr)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(x, kept)


ON_CPU = pytest.mark.skipif(torch.cuda.is_available(), reason="nn.DataParallel of a CPU model needs no visible GPU")


@ON_CPU
@pytest.mark.parametrize("name", ["metrics", "scan", "neural_cleanse", "classwise", "classwise_trajectory"])
def test_data_parallel_model_gives_the_plain_model_s_result(name):
    """ClassWiseSynthesis failed on nn.DataParallel: "The stateless API can't be used with nn.DataParallel"."""
    model, x, attr = conv_net(), images(), images(seed=2)
    expected = RUNS[name](model, x, attr)
    wrapped = nn.DataParallel(model).train()
    torch.testing.assert_close(RUNS[name](wrapped, x, attr), expected, rtol=0, atol=0)
    assert all(m.training for m in wrapped.modules())  # run in eval mode, flags given back


@ON_CPU
def test_classwise_synthesis_of_data_parallel_takes_checkpoints_saved_from_it():
    model, x = conv_net(), images()
    trajectory = [model.state_dict(), {k: v + 0.05 for k, v in model.state_dict().items()}]
    options = dict(mode="trajectory", student_steps=2, **CWS_FAST)
    expected = ClassWiseSynthesis(model).attribute(labelled(x), checkpoints=trajectory, **options)
    wrapped = nn.DataParallel(model)
    saved = [{"module." + k: v for k, v in sd.items()} for sd in trajectory]  # wrapped.state_dict() names
    got = ClassWiseSynthesis(wrapped).attribute(labelled(x), checkpoints=saved, **options)
    torch.testing.assert_close(got.images, expected.images, rtol=0, atol=0)
    torch.testing.assert_close(got.distances, expected.distances, rtol=0, atol=0)


class KeywordModel(nn.Module):
    """A forward with a keyword argument and a keyword-only one."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x, scale=1.0, *, shift=0.0):
        return self.net(x) * scale + shift


class Baked(nn.Module):
    """The reference: the same model with the argument values written in."""

    def __init__(self, model, scale, shift):
        super().__init__()
        self.model, self.scale, self.shift = model, scale, shift

    def forward(self, x):
        return self.model(x, self.scale, shift=self.shift)


KEYWORD_RUNS = {
    "RISE": lambda f, x, args: RISE(f).attribute(x, target=TARGETS, additional_forward_args=args, n_masks=12),
    "InputAgnosticSaliency": lambda f, x, args: InputAgnosticSaliency(f).attribute(
        x, target=TARGETS, additional_forward_args=args, **IAS_FAST),
    "metrics": lambda f, x, args: torch.stack([
        drop_and_increase(f, x, x, target=TARGETS, additional_forward_args=args)[0],
        insertion_auc(f, x, x, target=TARGETS, additional_forward_args=args, n_steps=4),
        deletion_auc(f, x, x, target=TARGETS, additional_forward_args=args, n_steps=4)]),
}


@pytest.mark.parametrize("name", sorted(KEYWORD_RUNS))
def test_keyword_forward_arguments_through_functools_partial(name):
    """Captum passes additional_forward_args positionally; a keyword-only argument goes in with
    functools.partial. The module behind the partial runs in eval mode and gets its flags back."""
    model, x = KeywordModel().train(), images(4)
    expected = KEYWORD_RUNS[name](Baked(model, 2.0, 0.5), x, None)
    assert model.training  # the reference run left the flags as found too
    got = KEYWORD_RUNS[name](functools.partial(model, shift=0.5), x, (2.0,))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert model.training and model.net.training
    assert not torch.allclose(KEYWORD_RUNS[name](functools.partial(model, shift=-3.0), x, (-1.0,)), expected)


def test_sise_takes_keyword_arguments_positionally_and_names_a_partial():
    model, x = KeywordModel().eval(), images(4)
    expected = SISE(Baked(model, 2.0, 0.0)).attribute(x, target=TARGETS)
    got = SISE(model).attribute(x, target=TARGETS, additional_forward_args=(2.0,))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(InvalidArgumentTypeError, match="forward_func must be an nn.Module.*got partial"):
        SISE(functools.partial(model, shift=0.5))


# ---------------------------------------------------------------- tuples of inputs


def test_functions_of_one_input_name_the_argument_a_tuple_was_given_for():
    model, x = conv_net(), images(4)
    for call, argument in [
        (lambda: drop_and_increase(model, (x, x), x, target=TARGETS), "inputs"),
        (lambda: insertion_auc(model, x, (x, x), target=TARGETS), "attributions"),
        (lambda: deletion_auc(model, (x, x), x, target=TARGETS), "inputs"),
    ]:
        with pytest.raises(InvalidArgumentError, match=f"^{argument} must be one tensor or a 1-tuple, got a 2-tuple"):
            call()
    for call, argument in [
        (lambda: scan_for_backdoor(model, (x[:1],), clean_inputs=x), "example_input"),
        (lambda: scan_for_backdoor(model, x[:1], clean_inputs=(x,)), "clean_inputs"),
        (lambda: neural_cleanse(model, (x,)), "clean_inputs"),
    ]:
        with pytest.raises(InvalidArgumentTypeError, match=f"^{argument} must be a torch.Tensor, got tuple"):
            call()
    # a 1-tuple is Captum's form of one input: the tensor's result
    torch.testing.assert_close(deletion_auc(model, (x,), (x,), target=TARGETS, n_steps=4),
                               deletion_auc(model, x, x, target=TARGETS, n_steps=4), rtol=0, atol=0)


# ---------------------------------------------------------------- models whose output ignores the input


class Constant(nn.Module):
    """Runs its layers, but its output does not depend on the input (connected: zero gradients)."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x, *more):
        return (self.net(x) + sum(z.mean() for z in more)) * 0 + torch.tensor([0.5, 1.0, -2.0, 3.0])


@pytest.mark.parametrize("name", sorted(ATTRIBUTIONS))
def test_a_tuple_of_inputs_to_a_constant_model_gets_a_tuple_of_zero_maps(name):
    x, z = images(4, h=11, w=13), images(4, channels=4, h=11, w=13, seed=3)
    got = ATTRIBUTIONS[name](Constant().eval(), (x, z))
    assert isinstance(got, tuple) and len(got) == 2
    assert torch.equal(got[0], torch.zeros_like(x)) and torch.equal(got[1], torch.zeros_like(z))


def test_faithfulness_metrics_of_a_constant_model_are_its_constant_probability():
    """No drop, no increase, and flat insertion / deletion curves at the softmax of the constant logits."""
    x, attr = images(4), images(4, seed=2)
    drop, increase = drop_and_increase(Constant().eval(), x, attr, target=TARGETS)
    assert torch.equal(drop, torch.zeros(4)) and torch.equal(increase, torch.zeros(4))
    probs = torch.tensor([0.5, 1.0, -2.0, 3.0]).softmax(0)[TARGETS]
    for metric in (insertion_auc, deletion_auc):
        auc, curve = metric(Constant().eval(), x, attr, target=TARGETS, n_steps=4, return_curve=True)
        torch.testing.assert_close(curve, probs.view(4, 1).expand(4, 5), rtol=0, atol=1e-7)
        torch.testing.assert_close(auc, probs, rtol=0, atol=1e-7)


class IgnoresInput(nn.Module):
    """Uses its weights, on zeros: no path from the input to the output."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x):
        return self.net(torch.zeros_like(x))


class UsesNoWeight(nn.Module):
    """Runs its layers but returns a constant: no weight reaches the output."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()

    def forward(self, x):
        self.net(x)
        return torch.tensor([0.5, 1.0, -2.0, 3.0]).expand(x.shape[0], CLASSES)


@pytest.mark.parametrize("mode", ["gradient", "trajectory"])
@pytest.mark.parametrize("model", [Constant, IgnoresInput], ids=["constant", "ignores_input"])
def test_classwise_synthesis_of_a_model_that_ignores_its_input_leaves_the_set_where_it_started(model, mode):
    """No gradient reaches the synthetic inputs: they stay exactly at their start (no signal). A model
    without a path from the input to the output failed in autograd ("does not require grad")."""
    net = model().eval()
    options = dict(mode=mode)
    if mode == "trajectory":
        moved = {k: v + 0.05 for k, v in net.state_dict().items()}
        options.update(student_steps=2, checkpoints=[net.state_dict(), moved])
    result = ClassWiseSynthesis(net).attribute(labelled(images()), **CWS_FAST, **options)
    assert torch.equal(result.images, result.initial_images)


def test_classwise_synthesis_refuses_a_model_whose_output_uses_none_of_its_weights():
    """It failed deep in autograd ("element 0 of tensors does not require grad")."""
    with pytest.raises(InvalidArgumentError, match="^model: its output depends on none of the matched weights"):
        ClassWiseSynthesis(UsesNoWeight().eval()).attribute(labelled(images()), **CWS_FAST)


class WithAuxiliaryHead(nn.Module):
    """conv_net and a head that only runs in training mode (Inception's and GoogLeNet's aux_logits)."""

    def __init__(self):
        super().__init__()
        self.net = conv_net()
        self.aux = nn.Linear(8, CLASSES)

    def forward(self, x):
        out = self.net(x)
        return (out, self.aux(self.net[:-1](x))) if self.training else out


@pytest.mark.parametrize("mode", ["gradient", "trajectory"])
def test_classwise_synthesis_leaves_out_weights_the_forward_pass_never_reaches(mode):
    """A weight the model does not use in eval mode has no gradient to match: it failed ("appears to not
    have been used in the graph"). Now the result is the one of the model without that head."""
    model, plain, x = WithAuxiliaryHead().eval(), conv_net(), images()
    options = dict(mode=mode)
    if mode == "trajectory":
        options.update(student_steps=2)
        got = ClassWiseSynthesis(model).attribute(labelled(x), checkpoints=[
            model.state_dict(), {k: v + 0.05 for k, v in model.state_dict().items()}], **CWS_FAST, **options)
        expected = ClassWiseSynthesis(plain).attribute(labelled(x), checkpoints=[
            plain.state_dict(), {k: v + 0.05 for k, v in plain.state_dict().items()}], **CWS_FAST, **options)
    else:
        got = ClassWiseSynthesis(model).attribute(labelled(x), **CWS_FAST, **options)
        expected = ClassWiseSynthesis(plain).attribute(labelled(x), **CWS_FAST, **options)
    torch.testing.assert_close(got.images, expected.images, rtol=0, atol=0)
    torch.testing.assert_close(got.distances, expected.distances, rtol=0, atol=0)
    assert not model.training
