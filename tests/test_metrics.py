"""Tests of captum_global.metrics: hand-computed values, properties, errors."""
import pytest
import torch
from captum.attr import LayerGradCam, Saliency
from captum.metrics import infidelity
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_global.metrics import (
    ForwardCounter,
    average_drop,
    bbox_accuracy,
    boxes_to_masks,
    deletion_auc,
    drop_and_increase,
    energy_pointing_game,
    flag_anomalies,
    increase_in_confidence,
    insertion_auc,
    mad_anomaly_index,
    miou,
    trigger_energy_share,
)


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()


class PixelSum(torch.nn.Module):
    """Identity-like model: one output, the sum of all input values."""

    def forward(self, x):
        return x.flatten(1).sum(1, keepdim=True)


def masks_strategy():
    """Random [N, 6, 6] masks (non-empty) and positive [N, 6, 6] maps."""
    return st.integers(1, 4).flatmap(lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n * 36, max_size=n * 36),
        st.lists(st.floats(0, 10, allow_nan=False), min_size=n * 36, max_size=n * 36),
        st.just(n),
    ))


def _unpack(data):
    bits, values, n = data
    masks = torch.tensor(bits).view(n, 6, 6)
    masks[:, 0, 0] = True
    return masks, torch.tensor(values, dtype=torch.float32).view(n, 6, 6)


# ---------------------------------------------------------------- localization

def test_ebpg_by_hand():
    attr = torch.zeros(1, 3, 4, 4)
    attr[0, 0, 0, 0] = 3.0          # inside the box, channels are summed
    attr[0, 1, 0, 1] = 1.0          # inside
    attr[0, 2, 3, 3] = 4.0          # outside
    attr[0, 2, 3, 2] = -5.0         # negative evidence is dropped
    box = torch.tensor([[0, 0, 2, 2]])
    assert torch.allclose(energy_pointing_game(attr, box), torch.tensor([0.5]))
    assert torch.allclose(energy_pointing_game(attr, box, sign="absolute"), torch.tensor([4 / 13]))


def test_ebpg_zero_energy_is_zero_and_normalisation_removes_offset():
    assert energy_pointing_game(torch.zeros(2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool)).tolist() == [0, 0]
    attr = torch.ones(1, 4, 4)
    attr[0, 0, 0] = 2.0
    box = torch.tensor([[0, 0, 1, 1]])
    assert energy_pointing_game(attr, box).item() == pytest.approx(1.0)
    assert energy_pointing_game(attr, box, normalize=False).item() == pytest.approx(2 / 17)


def test_bbox_accuracy_by_hand_with_ties():
    attr = torch.arange(16.0).view(1, 4, 4)
    assert bbox_accuracy(attr, torch.tensor([[2, 2, 4, 4]])).item() == pytest.approx(0.5)
    assert bbox_accuracy(attr, torch.tensor([[0, 2, 4, 4]])).item() == pytest.approx(1.0)
    # A constant map: every pixel ties, the expected share is the box's area share.
    assert bbox_accuracy(torch.ones(1, 4, 4), torch.tensor([[0, 0, 2, 2]])).item() == pytest.approx(0.25)
    # Two top pixels tie with a third one outside: k = 2, one sure hit, one
    # remaining slot shared by two tied pixels of which one is inside.
    attr = torch.zeros(1, 4, 4)
    attr[0, 0, 0] = 2.0
    attr[0, 0, 1] = 1.0
    attr[0, 3, 3] = 1.0
    assert bbox_accuracy(attr, torch.tensor([[0, 0, 2, 1]])).item() == pytest.approx((1 + 0.5) / 2)


def test_miou_by_hand_and_threshold():
    attr = torch.zeros(1, 4, 4)
    attr[0, :2, :3] = 1.0
    attr[0, 3, 3] = 0.4
    box = torch.tensor([[0, 0, 2, 2]])
    assert miou(attr, box).item() == pytest.approx(4 / 6)
    assert miou(attr, box, threshold=0.3).item() == pytest.approx(4 / 7)
    assert miou(torch.ones(1, 4, 4), box).item() == 0.0


def test_layer_sized_maps_are_upsampled_to_the_mask():
    low = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # [1, 1, 2, 2]
    mask = boxes_to_masks(torch.tensor([[0, 0, 4, 4]]), 8, 8)
    up = torch.nn.functional.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(energy_pointing_game(low, mask), energy_pointing_game(up, mask))
    assert energy_pointing_game(low, mask).item() > 0.7  # bilinear spreads a little out of the quarter


def test_tuple_and_single_channel_forms_agree():
    torch.manual_seed(0)
    attr = torch.randn(3, 1, 5, 5)
    masks = torch.rand(3, 5, 5) > 0.5
    masks[:, 2, 2] = True
    for metric in (energy_pointing_game, bbox_accuracy, miou):
        ref = metric(attr, masks)
        assert torch.equal(metric((attr,), masks), ref)
        assert torch.equal(metric(attr[:, 0], masks), ref)
        assert torch.equal(metric(attr, masks.float()), ref)


@settings(max_examples=25, deadline=None)
@given(masks_strategy(), st.floats(0.01, 100))
def test_ground_truth_properties(data, scale):
    masks, values = _unpack(data)
    perfect = masks.float()
    assert torch.allclose(energy_pointing_game(perfect, masks), torch.ones(masks.shape[0]))
    assert torch.allclose(bbox_accuracy(perfect, masks), torch.ones(masks.shape[0]))
    ebpg = energy_pointing_game(values, masks)
    assert ((ebpg >= 0) & (ebpg <= 1 + 1e-6)).all()
    for metric in (energy_pointing_game, bbox_accuracy, miou):
        ref = metric(values, masks)
        assert torch.allclose(metric(values * scale, masks), ref, atol=1e-5)
        perm = torch.randperm(masks.shape[0])
        assert torch.allclose(metric(values[perm], masks[perm]), ref[perm])


# ---------------------------------------------------------------- faithfulness

def test_insertion_and_deletion_by_hand():
    x = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2)
    model = PixelSum()
    # insertion from 0: curve 0, 4, 7, 9, 10 -> (30 - 5) / 4
    auc, curve = insertion_auc(model, x, x, baselines=0, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[0, 4, 7, 9, 10]]
    assert auc.item() == pytest.approx(6.25)
    # deletion: 10, 6, 3, 1, 0 -> (20 - 5) / 4
    assert deletion_auc(model, x, x, n_steps=4, score="raw").item() == pytest.approx(3.75)
    # two steps of two pixels: 0, 7, 10 -> (17 - 5) / 2
    assert insertion_auc(model, x, x, baselines=0, n_steps=2, score="raw").item() == pytest.approx(6.0)


def test_drop_and_increase_by_hand():
    x = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).view(1, 1, 2, 2)
    attr = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 1, 2, 2)  # normalised map keeps the top row
    drop, inc = drop_and_increase(PixelSum(), x, attr, score="raw")
    assert drop.item() == pytest.approx(100 * 3 / 10)
    assert inc.item() == 0.0
    neg = lambda t: 20 - t.flatten(1).sum(1, keepdim=True)  # noqa: E731  (score rises as the input shrinks)
    drop, inc = drop_and_increase(neg, x, attr, score="raw")
    assert drop.item() == 0.0 and inc.item() == 100.0


def test_deletion_of_perfect_map_below_its_reverse_on_linear_model():
    torch.manual_seed(1)
    weights = torch.randn(2, 1 * 6 * 6)
    model = lambda t: t.flatten(1) @ weights.T  # noqa: E731
    x = torch.rand(3, 1, 6, 6)
    contribution = (x.flatten(1) * weights[0]).view(3, 1, 6, 6)  # exact attribution for class 0
    perfect = deletion_auc(model, x, contribution, target=0, score="raw", n_steps=12)
    reverse = deletion_auc(model, x, -contribution, target=0, score="raw", n_steps=12)
    assert (perfect < reverse).all()
    assert (insertion_auc(model, x, contribution, target=0, score="raw", baselines=0, n_steps=12)
            > insertion_auc(model, x, -contribution, target=0, score="raw", baselines=0, n_steps=12)).all()


@settings(max_examples=5, deadline=None)
@given(st.integers(1, 40), st.integers(0, 1000))
def test_batch_size_never_changes_results(batch_size, seed):
    model = tiny_cnn()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, 8, 8, generator=g)
    attr = torch.randn(3, 1, 4, 4, generator=g)
    target = [0, 2, 1]
    for fn in (insertion_auc, deletion_auc):
        ref = fn(model, x, attr, target=target, n_steps=6)
        assert torch.allclose(fn(model, x, attr, target=target, n_steps=6, batch_size=batch_size), ref, atol=1e-6)
    ref = average_drop(model, x, attr, target=target)
    assert torch.allclose(average_drop(model, x, attr, target=target, batch_size=batch_size), ref, atol=1e-4)


def test_batch_permutation_permutes_faithfulness_results():
    model = tiny_cnn()
    torch.manual_seed(2)
    x, attr, target = torch.rand(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    perm = torch.tensor([2, 0, 3, 1])
    for fn in (insertion_auc, deletion_auc, average_drop, increase_in_confidence):
        ref = fn(model, x, attr, target=target)
        assert torch.allclose(fn(model, x[perm], attr[perm], target=target[perm]), ref[perm], atol=1e-6)


def test_evaluation_counts_are_as_documented():
    model = ForwardCounter(tiny_cnn())
    x, attr = torch.rand(5, 3, 8, 8), torch.rand(5, 1, 8, 8)
    drop_and_increase(model, x, attr, target=1, batch_size=3)
    assert model.n_examples == 2 * 5 and model.n_calls == 4
    model.reset()
    insertion_auc(model, x, attr, target=1, n_steps=7, batch_size=16)
    assert model.n_examples == 5 * 8


def test_additional_forward_args_follow_their_example():
    class Scaled(torch.nn.Module):
        def forward(self, x, scale):
            return x.flatten(1).sum(1, keepdim=True) * scale.view(-1, 1)

    x = torch.rand(3, 1, 4, 4)
    scale = torch.tensor([1.0, 2.0, 3.0])
    ref = deletion_auc(PixelSum(), x, x, score="raw", n_steps=4)
    got = deletion_auc(Scaled(), x, x, additional_forward_args=(scale,), score="raw", n_steps=4, batch_size=4)
    assert torch.allclose(got, ref * scale)


def test_blur_baseline_keeps_shape_and_softmax_auc_in_unit_interval():
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8)
    auc = insertion_auc(model, x, torch.rand(2, 8, 8), target=0, n_steps=5)
    assert auc.shape == (2,) and ((auc >= 0) & (auc <= 1)).all()


# ---------------------------------------------------------------- composing with Captum

def test_metrics_accept_captum_attributions():
    model = tiny_cnn()
    torch.manual_seed(3)
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([0, 1])
    boxes = torch.tensor([[0, 0, 4, 4], [2, 2, 8, 8]])
    sal = Saliency(model).attribute(x, target=target)
    cam = LayerGradCam(model, model[3]).attribute(x, target=target, relu_attributions=True)  # [2, 1, 4, 4]
    assert cam.shape == (2, 1, 4, 4)
    for attr in (sal, cam):
        for metric in (energy_pointing_game, bbox_accuracy, miou):
            out = metric(attr, boxes)
            assert out.shape == (2,) and ((out >= 0) & (out <= 1)).all()
        assert insertion_auc(model, x, attr, target=target, n_steps=4).shape == (2,)
        assert deletion_auc(model, x, attr, target=target, n_steps=4).shape == (2,)
        assert average_drop(model, x, attr, target=target).shape == (2,)
    # Captum's own infidelity takes the same input-shaped attribution unchanged.
    perturb = lambda inp: (torch.randn_like(inp) * 0.01, inp - torch.randn_like(inp) * 0.01)  # noqa: E731
    assert infidelity(model, perturb, x, sal, target=target, n_perturb_samples=2).shape == (2,)


# ---------------------------------------------------------------- backdoor

def test_trigger_energy_share_is_ebpg_with_the_trigger():
    attr = torch.rand(3, 1, 8, 8)
    trigger = torch.zeros(8, 8, dtype=torch.bool)
    trigger[5:, 5:] = True
    assert torch.equal(trigger_energy_share(attr, trigger), energy_pointing_game(attr, trigger.expand(3, 8, 8)))


def test_mad_anomaly_index_by_hand_and_flags():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 40.0])
    # median 3, |v - 3| = 2, 1, 0, 1, 37, MAD 1
    assert torch.allclose(mad_anomaly_index(v), torch.tensor([2, 1, 0, 1, 37]) / 1.4826)
    assert flag_anomalies(v).tolist() == [False, False, False, False, True]
    assert not flag_anomalies(v, direction="low").any()
    low = torch.tensor([30.0, 28.0, 3.0, 31.0, 29.0, 30.5])
    assert flag_anomalies(low, direction="low").tolist() == [False, False, True, False, False, False]
    # MAD = 0 guard: mean absolute deviation, and all-equal gives zeros
    v = torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0])
    assert torch.allclose(mad_anomaly_index(v)[-1], torch.tensor(9 / (1.8 * (torch.pi / 2) ** 0.5)))
    assert mad_anomaly_index(torch.ones(4)).tolist() == [0, 0, 0, 0]


# ---------------------------------------------------------------- errors

def test_errors_name_the_argument():
    x, box = torch.rand(2, 3, 4, 4), torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2]])
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="attributions"):
        energy_pointing_game(bad, box)
    with pytest.raises(ValueError, match="masks"):
        bbox_accuracy(x, box[:1])
    with pytest.raises(ValueError, match="masks"):
        miou(x, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks"):
        bbox_accuracy(x, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attributions"):
        energy_pointing_game(torch.rand(2, 2, 3, 4, 4), box)
    with pytest.raises(ValueError, match="inputs"):
        deletion_auc(tiny_cnn(), bad, x, target=0)
    with pytest.raises(ValueError, match="target"):
        deletion_auc(tiny_cnn(), x, x, target=7, n_steps=2)
    with pytest.raises(ValueError, match="attributions"):
        insertion_auc(tiny_cnn(), x, x[:1], target=0, n_steps=2)
    with pytest.raises(ValueError, match="baselines"):
        deletion_auc(tiny_cnn(), x, x, target=0, baselines=torch.zeros(5, 4, 4))
    with pytest.raises(ValueError, match="batch_size"):
        average_drop(tiny_cnn(), x, x, target=0, batch_size=0)
    with pytest.raises(ValueError, match="values"):
        mad_anomaly_index(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="sign"):
        energy_pointing_game(x, box, sign="all")
