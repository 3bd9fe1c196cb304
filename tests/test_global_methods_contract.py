"""The global methods under a demanding user: class-wise synthesis, backdoor scans, metrics.

Each test pins one behaviour a demanding user relies on, with hand-computed
values or exact comparisons; the defects found this way are named in the
test docstrings.
"""
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_global.attr import ClassWiseSynthesis
from captum_global.attr.classwise import gradient_distance
from captum_global.backdoor import NeuralCleanse, neural_cleanse, scan_figure, scan_for_backdoor
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.metrics import (
    deletion_auc,
    drop_and_increase,
    energy_pointing_game,
    flag_anomalies,
    insertion_auc,
    mad_anomaly_index,
    miou,
)

torch.set_num_threads(1)


# ---------------------------------------------------------------- fixtures

def _scan_net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


class _Counted(nn.Module):
    """Counts the examples that pass through the wrapped model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.examples = 0

    def forward(self, x):
        self.examples += x.shape[0]
        return self.inner(x)


class _Net(nn.Module):
    """Conv, BatchNorm, Dropout, Linear: 3 classes on 3 x 8 x 8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.d = nn.Dropout(0.3)
        self.l = nn.Linear(16, 3)

    def forward(self, x):
        return self.l(self.d(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.c(x))), 2).flatten(1)))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = _Net()
    x = torch.rand(10, 3, 8, 8)
    y = torch.arange(10) % 3
    return model, x, y


FAST = dict(images_per_class=1, iterations=2)


# ---------------------------------------------------------------- backdoor scans

def test_scan_runs_exactly_n_steps():
    """Defect: n_steps not a multiple of check_every ran whole rounds (n_steps=2 ran 5 steps)."""
    x = torch.rand(8, 3, 12, 12)
    for n_steps, check_every in ((2, 5), (7, 5)):
        model = _Counted(_scan_net())
        scan = scan_for_backdoor(model, x[:1], clean_inputs=x, n_steps=n_steps, check_every=check_every, batch_size=4)
        assert scan.settings["steps_run"] == n_steps
        # 3 classes x 4 inputs per step, then 3 classes x 8 inputs for the attack success
        assert scan.num_evaluations == n_steps * 3 * 4 + 3 * 8
        assert model.examples == 1 + scan.num_evaluations  # + the one example that counts the classes


def test_scan_per_image_runs_exactly_per_image_steps():
    """Defect: per_image_steps was rounded up to whole rounds of check_every too."""
    x = torch.rand(8, 3, 12, 12)
    model = _Counted(_scan_net())
    scan = scan_for_backdoor(model, x[:1], clean_inputs=x, n_steps=5, check_every=5, batch_size=4,
                             per_image=2, per_image_steps=3)
    # shared stamps 5 x 3 x 4, per-image stamps 3 steps x (3 classes x 2 images), 2 predictions, success 3 x 8
    assert scan.num_evaluations == 5 * 3 * 4 + 3 * 3 * 2 + 2 + 3 * 8
    assert model.examples == 1 + scan.num_evaluations


def test_scan_classes_in_every_form_give_one_result():
    x = torch.rand(8, 3, 12, 12)
    model = _scan_net()
    kw = dict(clean_inputs=x, n_steps=2, check_every=1, batch_size=4, seed=4)
    ref = scan_for_backdoor(model, x[:1], classes=[0, 1, 2], **kw)
    for classes in ((0, 1, 2), range(3), torch.tensor([0, 1, 2], dtype=torch.int8), np.arange(3)):
        other = scan_for_backdoor(model, x[:1], classes=classes, **kw)
        assert other.classes == [0, 1, 2]
        assert torch.equal(other.trigger_masks, ref.trigger_masks)
        assert torch.equal(other.statistics["mask_l1"], ref.statistics["mask_l1"])


def test_scan_trigger_mask_forms():
    x = torch.rand(8, 3, 12, 12)
    model = _scan_net()
    region = torch.zeros(12, 12, dtype=torch.bool)
    region[:3, :3] = True
    kw = dict(clean_inputs=x, n_steps=2, check_every=1, batch_size=4)
    ref = scan_for_backdoor(model, x[:1], trigger_mask=region, **kw).localisation
    for form in (region.float(), region.long()):
        got = scan_for_backdoor(model, x[:1], trigger_mask=form, **kw).localisation
        assert torch.equal(got["energy_share"], ref["energy_share"]) and torch.equal(got["iou"], ref["iou"])
    with pytest.raises(InvalidArgumentError, match="trigger_mask"):
        scan_for_backdoor(model, x[:1], trigger_mask=region[None], **kw)
    with pytest.raises(InvalidArgumentError, match="trigger_mask"):
        scan_for_backdoor(model, x[:1], trigger_mask=region.float() * 0.5, **kw)


def test_neural_cleanse_identical_for_identical_seed_and_state_kept():
    x = torch.rand(8, 3, 12, 12)
    model = _scan_net().train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    a = neural_cleanse(model, x, n_epochs=2, batch_size=4, seed=3)
    b = neural_cleanse(model, x, n_epochs=2, batch_size=4, seed=3)
    assert torch.equal(a.trigger_masks, b.trigger_masks) and torch.equal(a.statistics["mask_l1"], b.statistics["mask_l1"])
    # label k of a scan uses seed + k: label 1 of the scan with seed 3 is attribute(target=1, seed=4)
    mask, pattern, l1, success = NeuralCleanse(model).attribute(x, torch.tensor([1]), n_epochs=2, batch_size=4, seed=4)
    assert torch.equal(mask, a.trigger_masks[1]) and torch.equal(pattern, a.trigger_patterns[1])
    assert success == float(a.attack_success[1])
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not model[0].weight.requires_grad and model[4].weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_scan_figure_checks_its_arguments():
    """Defect: an empty planted region, no scans or too few class names crashed with raw errors."""
    x = torch.rand(8, 3, 12, 12)
    scan = scan_for_backdoor(_scan_net(), x[:1], clean_inputs=x, n_steps=1, batch_size=4)
    with pytest.raises(InvalidArgumentError, match="planted"):
        scan_figure({"a": scan}, planted=torch.zeros(12, 12, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="planted"):
        scan_figure({"a": scan}, planted=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="scans"):
        scan_figure({})
    with pytest.raises(InvalidArgumentTypeError, match="scans"):
        scan_figure({"a": "not a scan"})
    with pytest.raises(InvalidArgumentError, match="class_names"):
        scan_figure({"a": scan}, class_names=["only one"])
    planted = torch.zeros(12, 12)
    planted[2:5, 3:7] = 1  # 0/1 numbers are accepted like a bool mask
    fig = scan_figure({"a": scan}, class_names=["a", "b", "c"], planted=planted)
    patch = fig.axes[0].patches[0]
    assert (patch.get_x(), patch.get_y(), patch.get_width(), patch.get_height()) == (2.5, 1.5, 4.0, 3.0)


# ---------------------------------------------------------------- metrics

def test_image_size_accepts_tensor_and_array():
    """Defect: image_size as a 1-D tensor or array of two ints (documented) was refused."""
    cam = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])   # upsampled to 4 x 4: rows 1, .75, .25, 0
    box = torch.tensor([[0, 0, 4, 2]])                    # the top two rows of the 4 x 4 image
    for size in ((4, 4), torch.tensor([4, 4]), np.array([4, 4]), torch.Size([4, 4])):
        assert torch.equal(miou(cam, box, image_size=size), torch.tensor([1.0]))
        # EBPG: energy (minmax map) 1 + .75 of the four row values 1, .75, .25, 0 lies inside
        assert torch.allclose(energy_pointing_game(cam, box, image_size=size), torch.tensor([1.75 / 2.0]))
    with pytest.raises(InvalidArgumentTypeError, match="image_size"):
        miou(cam, box, image_size=torch.tensor([4.0, 4.0]))
    with pytest.raises(InvalidArgumentTypeError, match="image_size"):
        miou(cam, box, image_size=np.array([4.0, 4.0]))
    with pytest.raises(InvalidArgumentError, match="image_size"):
        miou(cam, box, image_size=torch.tensor([4, 4, 4]))


def test_mad_refuses_non_real_and_empty_values():
    """Defect: complex values were silently cut to their real part, bools read as 0/1,
    and a batch of zero rows crashed inside torch.quantile."""
    for bad in (torch.tensor([1.0, 2.0, 3.0], dtype=torch.complex64), torch.tensor([True, False, True])):
        with pytest.raises(InvalidArgumentTypeError, match="values"):
            mad_anomaly_index(bad)
        with pytest.raises(InvalidArgumentTypeError, match="values"):
            flag_anomalies(bad)
    with pytest.raises(InvalidArgumentError, match="values"):
        mad_anomaly_index(torch.zeros(0, 4))


def test_mad_and_flags_by_hand():
    # median 3, |v - 3| = 2, 1, 0, 7 -> MAD 1.5 -> scale 1.4826 * 1.5
    index = mad_anomaly_index(torch.tensor([1.0, 2.0, 4.0, 10.0]))
    assert torch.allclose(index, torch.tensor([2.0, 1.0, 1.0, 7.0]) / (1.4826 * 1.5))
    # integer statistics are numbers too
    assert torch.equal(mad_anomaly_index(torch.tensor([1, 2, 4, 10])), index)
    # indices 0.899, 0.450, 0.450, 3.148: the low side holds 1 and 2
    flags = flag_anomalies(torch.tensor([1.0, 2.0, 4.0, 10.0]), threshold=0.4, direction="low")
    assert flags.tolist() == [True, True, False, False]
    flags = flag_anomalies(torch.tensor([1.0, 2.0, 4.0, 10.0]), threshold=0.5, direction="both")
    assert flags.tolist() == [True, False, False, True]


def test_flag_side_uses_the_index_precision():
    """Defect: flag_anomalies judged the side on a float32 median while the index of
    float64 values is computed in float64, so differences below float32's
    resolution were never on the low side."""
    v = torch.tensor([1.0, 1.0 + 1e-10, 1.0 + 2e-10, 1.0 + 3e-10, 100.0], dtype=torch.float64)
    # median 1 + 2e-10, |v - median| = 2e-10, 1e-10, 0, 1e-10, ~99 -> MAD 1e-10
    index = mad_anomaly_index(v)
    assert index.dtype == torch.float64
    assert torch.allclose(index[:4], torch.tensor([2.0, 1.0, 0.0, 1.0], dtype=torch.float64) / 1.4826)
    assert flag_anomalies(v, threshold=1.0, direction="low").tolist() == [True, False, False, False, False]
    assert flag_anomalies(v, threshold=1.0, direction="both").tolist() == [True, False, False, False, True]


class _Sum(nn.Module):
    """Raw scores (sum of pixels, minus the sum)."""

    def forward(self, x):
        total = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([total, -total], 1)


def test_curves_by_hand_and_target_dtypes():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    auc, curve = deletion_auc(_Sum(), x, x, target=0, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]] and torch.allclose(auc, torch.tensor([15.0 / 4]))
    auc, curve = insertion_auc(_Sum(), x, x, target=0, n_steps=3, score="raw", baselines=0, return_curve=True)
    # round(k * 4 / 3) = 0, 1, 3, 4 pixels inserted
    assert curve.tolist() == [[0.0, 4.0, 9.0, 10.0]] and torch.allclose(auc, torch.tensor([(0 / 2 + 4 + 9 + 10 / 2) / 3]))
    for target in (torch.tensor([0], dtype=torch.int32), torch.tensor([0], dtype=torch.uint8), torch.tensor(0),
                   np.int64(0), np.array([0]), [0]):
        assert torch.equal(deletion_auc(_Sum(), x, x, target=target, n_steps=4, score="raw"), torch.tensor([3.75]))
    drop, increase = drop_and_increase(_Sum(), x, x, target=0, score="raw")
    # map minmax [0, 1/3, 2/3, 1] times x: 0 + 2/3 + 2 + 4 = 20/3 against 10
    assert torch.allclose(drop, torch.tensor([100 * (10 - 20 / 3) / 10])) and increase.tolist() == [0.0]


# ---------------------------------------------------------------- class-wise synthesis

def test_matching_distance_checks_images_against_the_targets(setup):
    """Defect: images of another input shape were scored silently (the model pools),
    and a wrong number of images per class under clusters raised IndexError."""
    model, x, y = setup
    method = ClassWiseSynthesis(model)
    rg = method.real_class_gradients(TensorDataset(x, y))
    with pytest.raises(InvalidArgumentError, match="images"):
        method.matching_distance(torch.rand(3, 1, 3, 4, 4), rg)
    with pytest.raises(InvalidArgumentError, match="images"):
        method.matching_distance(torch.rand(2, 1, 3, 8, 8), rg)
    with pytest.raises(InvalidArgumentError, match="distance"):
        method.matching_distance(torch.rand(3, 1, 3, 8, 8), rg, distance="l1")
    with pytest.raises(InvalidArgumentTypeError, match="per_checkpoint"):
        method.matching_distance(torch.rand(3, 1, 3, 8, 8), rg, per_checkpoint=1)
    with pytest.raises(InvalidArgumentTypeError, match="real_gradients"):
        method.matching_distance(torch.rand(3, 1, 3, 8, 8), {"classes": (0, 1, 2)})
    clustered = method.real_class_gradients(TensorDataset(x, y), clusters=2)
    with pytest.raises(InvalidArgumentError, match="group"):
        method.matching_distance(torch.rand(3, 3, 3, 8, 8), clustered)
    result = method.attribute(clustered, match="clusters", images_per_class=2, iterations=2)
    assert torch.equal(method.matching_distance(result.images, clustered, per_checkpoint=True), result.distances)


def test_gradient_distance_by_hand():
    a = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([5.0, 5.0])]   # 1-D tensors count for nothing
    b = [torch.tensor([[2.0, 0.0], [1.0, 0.0]]), torch.tensor([0.0, 1.0])]
    assert float(gradient_distance(a, b, "cosine")) == pytest.approx(0.0 + 1.0)
    assert float(gradient_distance(a, b, "mse")) == pytest.approx(1.0 + 1.0 + 1.0)


def test_checkpoint_callable_errors_are_not_relabelled(setup):
    """Defect: a TypeError raised inside the caller's checkpoint function was reported
    as 'it must take no argument'."""
    model, x, y = setup
    data = TensorDataset(x, y)

    def broken():
        return [model.state_dict(), None + 1]

    with pytest.raises(TypeError, match="NoneType") as info:
        ClassWiseSynthesis(model).attribute(data, checkpoints=broken, **FAST)
    assert not isinstance(info.value, InvalidArgumentTypeError)
    with pytest.raises(InvalidArgumentTypeError, match="checkpoints.*no argument"):
        ClassWiseSynthesis(model).attribute(data, checkpoints=lambda step: [model.state_dict()], **FAST)


def test_result_trajectory_is_a_snapshot(setup):
    """Defect: result.trajectory (and ClassGradients.points) shared storage with the
    model's live weights, so training the model afterwards rewrote the result."""
    model, x, y = setup
    data = TensorDataset(x, y)
    before = model.l.weight.detach().clone()
    results = [ClassWiseSynthesis(model).attribute(data, checkpoints=ckpt, **FAST)
               for ckpt in (None, model.state_dict(), model, [model.state_dict()])]
    with torch.no_grad():
        model.l.weight.add_(1.0)  # the caller trains on
    for result in results:
        assert torch.equal(result.trajectory[0]["l.weight"], before)
        result.trajectory[0]["l.weight"].zero_()  # and a caller editing the result leaves the model alone
    assert torch.equal(model.l.weight, before + 1.0)


def test_state_dict_checkpoint_equals_no_checkpoint(setup):
    model, x, y = setup
    model.bn.num_batches_tracked.fill_(5)  # a trained model (an untracked one gets population statistics)
    data = TensorDataset(x, y)
    a = ClassWiseSynthesis(model).attribute(data, **FAST)
    b = ClassWiseSynthesis(model).attribute(data, checkpoints=model.state_dict(), **FAST)
    assert torch.equal(a.images, b.images) and torch.equal(a.distances, b.distances)
    assert a.note.startswith("no trajectory") and b.note.startswith("one checkpoint")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_file_is_never_unpickled(setup, tmp_path):
    model, x, y = setup
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(InvalidArgumentError, match="checkpoints.*could not be loaded safely"):
        ClassWiseSynthesis(model).attribute(TensorDataset(x, y), checkpoints=str(path), **FAST)
    assert not marker.exists()


def test_labels_of_every_integer_dtype_and_bool_refused(setup):
    """Defect: bool labels were read as classes 0 and 1."""
    model, x, y = setup
    method = ClassWiseSynthesis(model)
    ref = method.attribute(TensorDataset(x, y), **FAST)
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        assert torch.equal(method.attribute(TensorDataset(x, y.to(dtype)), **FAST).images, ref.images)
    with pytest.raises(InvalidArgumentError, match="data must yield integer class labels.*bool"):
        method.attribute(TensorDataset(x, (y > 0)), **FAST)


def test_loaders_and_batch_sizes_agree(setup):
    model, x, y = setup
    method = ClassWiseSynthesis(model.train())
    data = TensorDataset(x, y)
    ref = method.attribute(data, real_examples=2, **FAST)
    for other in (method.attribute(data, batch_size=3, real_examples=2, **FAST),
                  method.attribute(DataLoader(data, batch_size=3), **FAST),             # final batch of 1
                  method.attribute(DataLoader(data, batch_size=4, shuffle=True), **FAST)):
        assert torch.allclose(other.images, ref.images, atol=1e-6)
    # the kept real examples of a Dataset do not depend on batch_size
    again = method.attribute(data, batch_size=3, real_examples=2, **FAST)
    assert all(torch.equal(again.real_examples[c], ref.real_examples[c]) for c in ref.classes)
    # BatchNorm and Dropout of a model in train mode: run in eval mode, flags restored
    assert model.training and model.bn.training and model.d.training


def test_options_the_mode_never_reads_are_refused_not_ignored(setup):
    model, x, y = setup
    data = TensorDataset(x, y)
    method = ClassWiseSynthesis(model)
    two_points = [model.state_dict(), {k: v + 0.1 if v.is_floating_point() else v
                                       for k, v in model.state_dict().items()}]
    for option, value in [("student_steps", 3), ("checkpoint_gap", 2), ("student_batch", 4), ("step_scale", 0.5),
                          ("learn_step_scale", False), ("momentum", 0.9)]:  # momentum: Adam is the default optimiser
        with pytest.raises(InvalidArgumentError, match=rf"{option}=.* has no effect here"):
            method.attribute(data, **FAST, **{option: value})
    for option, value in [("optimizer", "sgd"), ("momentum", 0.9), ("checkpoints_per_iteration", 1)]:
        with pytest.raises(InvalidArgumentError, match=rf"{option}=.* has no effect here: only .*mode='gradient'"):
            method.attribute(data, **FAST, mode="trajectory", checkpoints=two_points, **{option: value})
    # an option at its default, or read by the mode, is accepted, and the defaults change nothing
    plain = method.attribute(data, **FAST)
    spelled = method.attribute(data, **FAST, student_steps=10, checkpoint_gap=1, momentum=0.5)
    assert torch.equal(plain.images, spelled.images)
    method.attribute(data, **FAST, optimizer="sgd", momentum=0.9)
    method.attribute(data, **FAST, mode="trajectory", checkpoints=two_points, student_steps=2, step_scale=0.5)
