"""SISE (captum_global.attr.SISE): Captum contract, paper steps, fusion, grouping, quality."""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation, LayerAttribution, LayerGradientXActivation
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from _sise_nets import Counter, Net, TwoInputNet, images as _x, no_hooks as _clean  # noqa: E402
from captum_global.maps import minmax_normalise
from captum_global.attr import SISE
from captum_global.attr.sise import fuse_layer_maps, hard_gate, soft_gate
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net().eval()


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_range(net, dtype):
    x = _x(dtype=dtype)
    attr = SISE(net.to(dtype)).attribute(x, target=1)
    assert attr.shape == x.shape and attr.dtype == dtype and attr.device == x.device
    assert attr.min() >= 0 and attr.max() <= 1 and math.isclose(float(attr.amax()), 1.0)
    assert torch.equal(attr[:, 0], attr[:, 2])  # one map, broadcast over channels


def test_tuple_in_tuple_out():
    torch.manual_seed(0)
    model = TwoInputNet().eval()
    a, b = _x(seed=2), _x(seed=3)
    attr_a, attr_b = SISE(model, ["block1", "block2"]).attribute((a, b), target=0)
    assert attr_a.shape == a.shape and torch.equal(attr_a, attr_b)
    single = SISE(Net().eval()).attribute((a,), target=0)
    assert isinstance(single, tuple) and len(single) == 1


def test_batch_with_per_example_targets_equals_one_at_a_time(net):
    x, targets = _x(n=3), [2, 0, 1]
    sise = SISE(net)
    batch = sise.attribute(x, target=torch.tensor(targets), perturbations_per_eval=5)
    for i, t in enumerate(targets):
        alone = sise.attribute(x[i : i + 1], target=t, perturbations_per_eval=5)
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


@settings(max_examples=6, deadline=None)
@given(ppe=st.integers(1, 24), fusion=st.sampled_from(["otsu", "soft-otsu", "mean"]),
       threshold=st.sampled_from([None, 0.2, 0.6, -1.0]))
def test_perturbations_per_eval_never_changes_results(ppe, fusion, threshold):
    torch.manual_seed(0)
    model, x = Net().eval(), _x()
    sise = SISE(model)
    kw = dict(target=[0, 2], fusion=fusion, similarity_threshold=threshold)
    ref = sise.attribute(x, perturbations_per_eval=1000, **kw)
    got = sise.attribute(x, perturbations_per_eval=ppe, **kw)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("target, same_as", [((2,), 2), ([(1,), (2,), (0,)], [1, 2, 0]), (-1, 2),
                                             (np.int64(1), 1), (torch.tensor([0, 1, 2]), [0, 1, 2])])
def test_targets_as_captum(net, target, same_as):
    x = _x(n=3)
    sise = SISE(net)
    torch.testing.assert_close(sise.attribute(x, target=target), sise.attribute(x, target=same_as))


@pytest.mark.parametrize("target, error, match", [
    ([2], InvalidArgumentError, "list of 1 entries but there are 3 examples"),
    ("cat", InvalidArgumentTypeError, "target must hold integer"),
    (True, InvalidArgumentTypeError, "target must hold integer"),
    (3, InvalidArgumentError, "out of range"),
    (None, InvalidArgumentError, "target is required"),
])
def test_bad_targets(net, target, error, match):
    with pytest.raises(error, match=match):
        SISE(net).attribute(_x(n=3), target=target)
    assert _clean(net)


# ------------------------------------------------------- paper steps vs Captum


def test_one_layer_keep_all_no_fusion_is_score_cam_built_with_captum(net):
    x, target = _x(n=1), 2
    attr, maps = SISE(net, [net.block2]).attribute(
        x, target=target, mu=float("-inf"), fusion="none", score="logit", similarity_threshold=None,
        return_layer_maps=True,
    )
    acts = LayerActivation(net, net.block2).attribute(x)
    up = LayerAttribution.interpolate(acts, (16, 16), interpolate_mode="bilinear")
    expected = torch.zeros(16, 16)
    with torch.no_grad():
        for k in range(up.shape[1]):
            if acts[0, k].max() <= acts[0, k].min():
                continue  # constant maps are dropped
            m = minmax_normalise(up[:, k : k + 1])
            score = net(x * m)[0, target]  # baseline 0: the masked image is m * x
            expected += score * m[0, 0] / m.sum()
    expected = minmax_normalise(expected.unsqueeze(0))[0]
    torch.testing.assert_close(maps["block2"][0, 0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(attr[0, 0], expected, atol=1e-5, rtol=0)


def _reference_sise(model, layers, x, target, score, baseline=0.0):
    """The paper's steps written out with Captum's layer helpers, every mask scored."""
    psi = (lambda out: out.softmax(-1)) if score == "softmax" else (lambda out: out)
    maps = []
    for layer in layers:
        acts = LayerActivation(model, layer).attribute(x)
        grads = LayerGradientXActivation(lambda inp: psi(model(inp)), layer, multiply_by_inputs=False)
        alpha = grads.attribute(x, target=target).sum(dim=(2, 3))[0]
        alive = acts[0].flatten(1).amax(1) > acts[0].flatten(1).amin(1)
        keep = (alpha > 0) & alive
        up = LayerAttribution.interpolate(acts, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        v = torch.zeros(x.shape[-2:], dtype=x.dtype)
        with torch.no_grad():
            for k in keep.nonzero().flatten().tolist():
                m = minmax_normalise(up[:, k : k + 1])
                s = psi(model(baseline + m * (x - baseline)))[0, target]
                v += s * m[0, 0] / m.sum()
        maps.append(minmax_normalise(v.unsqueeze(0))[0])
    return maps


@pytest.mark.parametrize("score", ["logit", "softmax"])
def test_block_maps_equal_hand_computed_paper_steps(net, score):
    """Filter by psi's gradient, masks, psi-weighted area-normalised sums: by hand, per score option."""
    x, target = _x(n=1, seed=4), 1
    _, maps = SISE(net).attribute(x, target=target, score=score, similarity_threshold=None, return_layer_maps=True)
    expected = _reference_sise(net, [net.block1, net.block2], x, target, score)
    for got, want in zip(maps.values(), expected):
        torch.testing.assert_close(got[0, 0], want, atol=1e-5, rtol=0)


def _conv_relu_net(inplace):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()


def test_layer_followed_by_an_inplace_relu_is_read_before_it():
    """Named convolutions followed by ReLU(inplace=True): SISE reads each convolution's own output and
    its gradient (the paper's steps by hand, on the same weights with out-of-place ReLUs), not the
    activations the in-place ReLU wrote over them."""
    x, target = _x(n=1, seed=4), 1
    inplace, plain = _conv_relu_net(True), _conv_relu_net(False)
    _, maps = SISE(inplace, ["0", "3"]).attribute(x, target=target, similarity_threshold=None,
                                                   return_layer_maps=True)
    expected = _reference_sise(plain, [plain[0], plain[3]], x, target, "logit")
    for got, want in zip(maps.values(), expected):
        torch.testing.assert_close(got[0, 0], want, atol=1e-5, rtol=0)
    assert _clean(inplace)


class _TwoMaps(nn.Module):
    """A 1 x 3 image of two channels; an identity 1x1 conv hands them to a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.Linear(6, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.head.weight.copy_(torch.tensor([[3.0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 2, 0]]))

    def forward(self, x):
        return self.head(self.conv(x).flatten(1))


@pytest.mark.parametrize("score, weight", [
    ("logit", lambda z: z[0]),
    ("softmax", lambda z: math.exp(z[0]) / (math.exp(z[0]) + math.exp(z[1]))),
    (lambda out: out.exp(), lambda z: math.exp(z[0])),
])
def test_score_options_by_hand(score, weight):
    """Masks m1 = [1, 1, 0], m2 = [0, 1, 1] (the two channels); logits (3, 2) on x m1, (1, 2) on x m2.

    V = (s1 m1 + s2 m2) / 2 = [s1, s1 + s2, s2] / 2, min-max: [1 - s2 / s1, 1, 0]; so pixel 0 is
    2/3 with logits, 1 - sigmoid(-1) / sigmoid(1) = 0.632 with softmax probabilities, 1 - e^-2 with exp.
    """
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)
    s1, s2 = weight((3.0, 2.0)), weight((1.0, 2.0))
    _, maps = SISE(_TwoMaps().eval(), ["conv"]).attribute(
        x, target=0, score=score, mu=float("-inf"), similarity_threshold=None, return_layer_maps=True)
    torch.testing.assert_close(maps["conv"][0, 0, 0], torch.tensor([1 - s2 / s1, 1.0, 0.0]))


def test_fusion_rules_by_hand():
    torch.manual_seed(0)
    low, mid, high = torch.rand(2, 8, 8), torch.rand(2, 8, 8), torch.rand(2, 8, 8)
    gate_mid, gate_high = hard_gate(mid), hard_gate(high)
    paper = minmax_normalise(((low + mid) * gate_mid + high) * gate_high)
    torch.testing.assert_close(fuse_layer_maps([low, mid, high], "otsu"), paper)
    balanced = minmax_normalise((minmax_normalise((minmax_normalise(low) + mid) * gate_mid) + high) * gate_high)
    torch.testing.assert_close(fuse_layer_maps([low, mid, high], "otsu-normalised"), balanced)
    for fusion in ("otsu", "otsu-normalised"):
        assert (fuse_layer_maps([low, mid, high], fusion)[gate_high == 0] == 0).all()
    soft = soft_gate(high)
    assert ((soft > 0.5) == (gate_high > 0)).float().mean() > 0.8
    torch.testing.assert_close(fuse_layer_maps([low, high], "soft-otsu"), minmax_normalise((low + high) * soft))
    dead = torch.zeros(2, 8, 8)
    for fusion in ("otsu", "otsu-normalised", "soft-otsu"):  # a dead layer erases nothing
        torch.testing.assert_close(fuse_layer_maps([low, dead], fusion), minmax_normalise(low))
    torch.testing.assert_close(fuse_layer_maps([low, high], "none"), minmax_normalise(high))
    torch.testing.assert_close(fuse_layer_maps([low, high], "mean"), minmax_normalise(low + high))


def test_attribution_is_the_fusion_of_the_returned_block_maps(net):
    x = _x(n=2)
    for fusion in ("otsu-normalised", "otsu", "soft-otsu", "mean", "none"):
        attr, maps = SISE(net).attribute(x, target=[0, 1], fusion=fusion, return_layer_maps=True)
        expected = fuse_layer_maps([v[:, 0] for v in maps.values()], fusion)
        torch.testing.assert_close(attr[:, 0], expected)


# ------------------------------------------------------------ grouping


class DuplicateNet(nn.Module):
    """Block 1 has four maps in two exact pairs (duplicated filters): two distinct masks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)
        self.block1 = nn.Identity()

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = self.block1(torch.cat([a, 2 * a], dim=1))  # channel 2 = 2 x channel 0: the same mask
        return self.fc(torch.relu(self.conv2(F.max_pool2d(b, 2))).mean(dim=(2, 3)))


def test_grouping_exact_duplicates_saves_passes_and_changes_nothing():
    model, x = DuplicateNet().eval(), _x(n=2, seed=5)
    counter = Counter(model)
    sise = SISE(model, ["block1"])
    full = sise.attribute(x, target=[0, 1], mu=float("-inf"), similarity_threshold=None)
    passes_full = counter.n
    counter.n = 0
    grouped = sise.attribute(x, target=[0, 1], mu=float("-inf"), similarity_threshold=0.999)
    assert counter.n < passes_full and (passes_full - 2) == 2 * (counter.n - 2)  # one pass per pair
    torch.testing.assert_close(grouped, full, atol=1e-6, rtol=0)


def _max_similarity(model, layers, x):
    """Largest Pearson correlation between two live maps of one layer and example."""
    best = -1.0
    for layer in layers:
        acts = LayerActivation(model, layer).attribute(x)
        for a in acts:
            flat = a.flatten(1)
            flat = flat[flat.amax(1) > flat.amin(1)]
            if len(flat) > 1:
                c = torch.corrcoef(flat.double())
                best = max(best, float((c - 2 * torch.eye(len(flat), dtype=c.dtype)).max()))
    return best


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), ppe=st.integers(1, 16))
def test_grouping_changes_nothing_when_every_mask_is_distinct(seed, ppe):
    torch.manual_seed(seed)
    model, x = Net().eval(), _x(n=2, seed=seed)
    top = _max_similarity(model, [model.block1, model.block2], x)
    threshold = min(1.0, top + 1e-6)
    sise = SISE(model)
    full = sise.attribute(x, target=[0, 2], similarity_threshold=None, perturbations_per_eval=ppe)
    distinct = sise.attribute(x, target=[0, 2], similarity_threshold=threshold, perturbations_per_eval=ppe)
    assert torch.equal(full, distinct)


def test_grouped_map_is_hand_computed(net):
    """similarity_threshold=-1: one scored mask per layer, every kept mask weighted by its score."""
    x, target = _x(n=1, seed=6), 2
    counter = Counter(net)
    _, maps = SISE(net, [net.block2]).attribute(
        x, target=target, score="logit", mu=float("-inf"), similarity_threshold=-1.0, return_layer_maps=True)
    assert counter.n == 1 + 1  # gradient pass + one representative
    acts = LayerActivation(net, net.block2).attribute(x)
    grads = LayerGradientXActivation(net, net.block2, multiply_by_inputs=False).attribute(x, target=target)
    alpha = grads.sum(dim=(2, 3))[0]
    live = [k for k in range(acts.shape[1]) if acts[0, k].max() > acts[0, k].min()]
    first = max(live, key=lambda k: (float(alpha[k]), -k))  # largest alpha, ties to the lower channel
    up = LayerAttribution.interpolate(acts, (16, 16), interpolate_mode="bilinear")
    with torch.no_grad():
        score = net(x * minmax_normalise(up[:, first : first + 1]))[0, target]
    v = sum(score * minmax_normalise(up[:, k : k + 1])[0, 0] / minmax_normalise(up[:, k : k + 1]).sum() for k in live)
    torch.testing.assert_close(maps["block2"][0, 0], minmax_normalise(v.unsqueeze(0))[0], atol=1e-5, rtol=0)


def test_default_scores_at_most_a_quarter_of_the_masks_on_redundant_layers():
    world = pytest.importorskip("captum_global.world")
    model = world.load_reference_model("resnet", "clean")
    x = world.make_dataset(2, seed=20261123).images
    y = model(x).argmax(1)
    counter = Counter(model)
    SISE(model).attribute(x, target=y, similarity_threshold=None, perturbations_per_eval=128)
    every = counter.n - 2
    counter.n = 0
    SISE(model).attribute(x, target=y, perturbations_per_eval=128)
    assert counter.n - 2 <= 0.3 * every


# ------------------------------------------------------------ quality


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_default_keeps_the_quality_of_every_mask_at_a_fraction_of_the_passes(arch):
    """The documented default against the paper's settings and Grad-CAM, 6 held-out images.

    Measured on 16 benchmark images (docs/measurements/sise.md): the default scores about a quarter of
    the masks or fewer and is no worse than the paper's settings by more than 0.01 on EBPG, insertion and
    deletion. On 6 images the margins are wider (0.04), the pass count must stay under 30%, and SISE must
    put more of its map on the object (EBPG against the object mask) than Grad-CAM on the last block.
    """
    world = pytest.importorskip("captum_global.world")
    from captum.attr import LayerGradCam

    from captum_global.lineup import SISE_PAPER_SETTINGS
    from captum_global.metrics import deletion_auc, energy_pointing_game, insertion_auc

    model = world.load_reference_model(arch, "clean")
    data = world.make_dataset(6, seed=20261125)
    x, y, masks = data.images, data.labels, data.object_masks
    counter = Counter(model)
    sise = SISE(model)
    default = sise.attribute(x, target=y, perturbations_per_eval=128)
    passes = counter.n
    counter.n = 0
    paper = sise.attribute(x, target=y, perturbations_per_eval=128, **SISE_PAPER_SETTINGS)
    assert passes - 6 <= 0.3 * (counter.n - 6)
    last = dict(model.named_modules())[sise.selected_layers(x)[-1]]
    gc = LayerAttribution.interpolate(LayerGradCam(model, last).attribute(x, target=y, relu_attributions=True),
                                      (64, 64), "bilinear")
    ebpg = {name: energy_pointing_game(a, masks).mean().item() for name, a in
            (("default", default), ("paper", paper), ("gradcam", gc))}
    assert ebpg["default"] > ebpg["gradcam"] and ebpg["default"] >= ebpg["paper"] - 0.04
    assert ebpg["default"] > {"vgg": 0.3, "resnet": 0.2}[arch]
    ins, ins_paper = (insertion_auc(model, x, a, y, n_steps=16).mean().item() for a in (default, paper))
    dele, dele_paper = (deletion_auc(model, x, a, y, n_steps=16).mean().item() for a in (default, paper))
    assert ins >= ins_paper - 0.04 and dele <= dele_paper + 0.04, (ins, ins_paper, dele, dele_paper)
