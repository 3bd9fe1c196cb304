"""Contract tests for captum_global.robustness, captum_global.world and captum_global.metrics.

Hand-computed values on tiny maps, images and models; every test runs in
well under a few seconds on one CPU thread.
"""
import numpy as np
import pytest
import torch
from torch import nn

from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError
from captum_global.metrics import bbox_accuracy, deletion_auc, drop_and_increase, insertion_auc, trigger_iou
from captum_global.robustness import (
    GradCAMExplanation,
    GradientExplanation,
    center_of_mass_shift,
    fooling_penalty,
    fooling_statistic,
    fooling_success,
    location_loss,
    manipulate_model,
    rank_correlation,
    top_k_overlap,
    top_k_region,
)
from captum_global.world import (
    Trigger,
    filter_trigger,
    make_dataset,
    patch_trigger,
    sig_trigger,
)
from captum_global.world.data import WorldConfig

torch.set_num_threads(1)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()])


def _assert_same_state(model, before):
    weights, training, grads, hooks = _state(model)
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert (training, grads, hooks) == tuple(before[1:])


# --------------------------------------------------------------------------- robustness measures


def test_paired_statistics_refuse_a_batch_of_one_against_many():
    maps, one = torch.rand(3, 4, 4), torch.rand(1, 4, 4)
    for call in (lambda: center_of_mass_shift(maps, one), lambda: top_k_overlap(maps, one),
                 lambda: rank_correlation(maps, one),
                 lambda: fooling_statistic("center_mass", maps, one),
                 lambda: fooling_statistic("top_k", maps, one),
                 lambda: fooling_penalty("top_k", maps, one),
                 lambda: fooling_penalty("center_mass", maps, one)):
        with pytest.raises(InvalidArgumentError, match="one reference per map"):
            call()
    with pytest.raises(InvalidArgumentError, match=r"same size.*\(3, 4, 4\) and \(3, 2, 2\)"):
        top_k_overlap(maps, torch.rand(3, 2, 2))
    with pytest.raises(InvalidArgumentError, match="maps_second and reference_second"):
        fooling_penalty("active", maps, maps, maps_second=maps, reference_second=one)
    with pytest.raises(InvalidArgumentError, match="maps and maps_second"):
        fooling_penalty("active", maps, maps, maps_second=one, reference_second=one)
    # the paired forms still give the hand values: identical maps do not move
    assert center_of_mass_shift(maps, maps).tolist() == [0.0, 0.0, 0.0]
    assert top_k_overlap(maps, maps, 0.25).tolist() == [1.0, 1.0, 1.0]


def test_region_count_must_match_the_maps_and_a_missing_region_is_named():
    maps = torch.zeros(3, 2, 2)
    maps[:, 0, 0] = 1.0
    with pytest.raises(InvalidArgumentError, match="holds 2 regions but there are 3 maps"):
        location_loss(maps, torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="region is required"):
        fooling_penalty("location", maps)
    # one region per map: map 0 matches its region exactly, map 1 misses by one pixel of four
    regions = torch.zeros(3, 2, 2, dtype=torch.bool)
    regions[0, 0, 0] = True
    regions[1, 0, 0] = regions[1, 1, 1] = True
    regions[2, 1, 1] = True
    assert location_loss(maps, regions).tolist() == [0.0, 0.25, 0.5]


def test_top_k_region_breaks_ties_in_raster_order():
    assert top_k_region(torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]), 0.5).flatten().tolist() == [
        False, True, True, False]
    tied = torch.ones(1, 4, 4)
    tied[0, 0, 0] = 0.0
    assert top_k_region(tied, 0.25).flatten().nonzero().flatten().tolist() == [1, 2, 3, 4]
    # maps without signal select their first k pixels: two of them overlap fully
    assert top_k_region(torch.zeros(1, 4, 4), 0.25).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]
    assert top_k_overlap(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 3.0), 0.25).tolist() == [1.0]


def test_fooling_success_needs_the_statistic_tensor():
    with pytest.raises(InvalidArgumentTypeError, match="statistic must be"):
        fooling_success("location", [0.1])
    assert fooling_success("location", torch.tensor([0.1, 0.2, float("nan")])).tolist() == [True, False, False]
    assert fooling_success("active", torch.tensor([0.5, 0.0, float("nan")])).tolist() == [True, False, False]


def test_grad_cam_explanation_equals_captum_with_bilinear_interpolation():
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 3, 8, 8)
    for target in (2, -1, [0, 2], torch.tensor([2, 0]), np.int64(1)):
        ours = GradCAMExplanation("4")(net, x, target).detach()
        captum_target = int(target) if isinstance(target, np.integer) else target
        layer = LayerGradCam(net, net[4]).attribute(x, target=captum_target, relu_attributions=True)
        theirs = LayerAttribution.interpolate(layer, (8, 8), interpolate_mode="bilinear")[:, 0].detach()
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    # the documented comparison names the mode: Captum's default ("nearest") is another map
    nearest = LayerAttribution.interpolate(LayerGradCam(net, net[4]).attribute(x, target=0, relu_attributions=True),
                                           (8, 8))[:, 0]
    assert not torch.allclose(GradCAMExplanation("4")(net, x, 0).detach(), nearest.detach())


def test_manipulate_model_leaves_model_and_rng_untouched_when_a_later_batch_fails():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).train()
    net[0].weight.requires_grad_(False)
    handle = net[2].register_forward_hook(lambda *args: None)
    good = (torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
    bad = (torch.full((4, 3, 8, 8), float("nan")), torch.tensor([0, 1, 0, 1]))
    before, rng = _state(net), torch.get_rng_state()
    with pytest.raises(InvalidArgumentError, match="inputs must be finite"):
        manipulate_model(net, [good, bad], GradientExplanation(), "location", steps=2)
    _assert_same_state(net, before)
    assert torch.equal(rng, torch.get_rng_state())
    with pytest.raises(InvalidArgumentError, match="target 5"):
        manipulate_model(net, [(good[0], torch.tensor([0, 1, 0, 5]))], steps=1)
    _assert_same_state(net, before)
    assert torch.equal(rng, torch.get_rng_state())
    handle.remove()


# --------------------------------------------------------------------------- metrics: maps without signal


def test_bbox_accuracy_scores_a_map_without_signal_at_chance():
    box = torch.tensor([[0, 0, 2, 2]])
    # float32 round-off on a constant map: 1 and 1 + eps, no evidence
    noisy = (torch.ones(1, 4, 4, dtype=torch.float64) + torch.arange(16.).view(1, 4, 4) * 1e-8).float()
    assert len(set(noisy.flatten().tolist())) == 2
    assert bbox_accuracy(torch.ones(1, 4, 4), box).tolist() == [0.25]
    assert bbox_accuracy(noisy, box).tolist() == [0.25]
    # a map with signal is ranked exactly as before (the docstring's hand value)
    assert bbox_accuracy(torch.arange(16.).view(1, 4, 4), torch.tensor([[2, 2, 4, 4]])).tolist() == [0.5]
    assert bbox_accuracy(torch.arange(16.).view(1, 4, 4), box).tolist() == [0.0]


def _sum_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    return model


def test_deletion_and_insertion_rank_a_map_without_signal_in_raster_order():
    model, x = _sum_model(), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    noisy = torch.ones(1, 1, 2, 2) + torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 2, 2) * 1.2e-7
    assert noisy.unique().numel() == 4  # round-off that would rank pixel 3 first
    # raster order: pixels 1, 2, 3, 4 removed in turn -> 10, 9, 7, 4, 0; AUC (5 + 20 + 0) / 4
    for attr in (torch.ones(1, 1, 2, 2), noisy):
        auc, curve = deletion_auc(model, x, attr, target=0, baselines=0, n_steps=4, score="raw", return_curve=True)
        assert curve.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]] and auc.tolist() == [6.25]
        auc, curve = insertion_auc(model, x, attr, target=0, baselines=0, n_steps=4, score="raw", return_curve=True)
        assert curve.tolist() == [[0.0, 1.0, 3.0, 6.0, 10.0]] and auc.tolist() == [3.75]
    # a map with signal still ranks by its values: pixel 4 first -> 10, 6, 3, 1, 0
    _, curve = deletion_auc(model, x, x, target=0, baselines=0, n_steps=4, score="raw", return_curve=True)
    assert curve.tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]


def test_trigger_iou_treats_a_map_without_signal_as_constant():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 2:] = True  # pixels 6, 7, 10, 11
    noisy = (torch.ones(1, 4, 4, dtype=torch.float64) + torch.arange(16.).view(1, 4, 4) * 1e-8).float()
    # round-off puts pixels 6..15 one ulp above the rest: ranking it would take 6, 7, 8, 9 (IoU 1/3);
    # constant: the first 4 raster pixels (row 0), none in the region -> p = 0, IoU 0
    assert trigger_iou(torch.ones(1, 4, 4), region).tolist() == [0.0]
    assert trigger_iou(noisy, region).tolist() == [0.0]
    signal = torch.zeros(1, 4, 4)
    signal[0, 1:3, 2:] = 1.0
    assert trigger_iou(signal, region).tolist() == [1.0]


def test_metric_batch_size_and_per_example_forward_args_never_change_results():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = _sum_model()[1]

        def forward(self, x, scale):
            return self.linear(x.flatten(1)) * scale.view(-1, 1)

    model, x = Scaled(), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[4.0, 3.0], [2.0, 1.0]]]])
    scale = torch.tensor([1.0, 2.0])
    results = [deletion_auc(model, x, x, target=t, baselines=0, n_steps=4, score="raw", batch_size=b,
                            additional_forward_args=scale, return_curve=True)[1]
               for b in (1, 3, 64) for t in (0, -2, [0, 0], torch.tensor([0, 0]), (0,))]
    expected = torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0], [20.0, 12.0, 6.0, 2.0, 0.0]])
    assert all(torch.equal(r, expected) for r in results)


def test_drop_and_increase_raise_on_nan_output_and_restore_the_model():
    class NaNOnZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.bn, self.drop = nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)

        def forward(self, x):
            out = self.drop(self.bn(self.linear(x.flatten(1))))
            return torch.where((x.flatten(1) == 0).any(1, keepdim=True), torch.full_like(out, float("nan")), out)

    model = NaNOnZero().train()
    model.linear.weight.requires_grad_(False)
    before = _state(model)
    x = torch.rand(2, 1, 2, 2) + 0.1
    with pytest.raises(NonFiniteOutputError, match=r"drop_and_increase.*example\(s\) \[0, 1\]"):
        drop_and_increase(model, x, torch.rand(2, 1, 2, 2), target=0)
    _assert_same_state(model, before)


# --------------------------------------------------------------------------- world: data


def test_make_dataset_refuses_bad_arguments_by_name():
    cases = [
        (dict(n=2.5, seed=0), InvalidArgumentTypeError, "n must be an int"),
        (dict(n=True, seed=0), InvalidArgumentTypeError, "n must be an int"),
        (dict(n=0, seed=0), InvalidArgumentError, "n must be >= 1"),
        (dict(n=2, seed=1.7), InvalidArgumentTypeError, "seed must be an int"),
        (dict(n=2, seed=None), InvalidArgumentTypeError, "seed must be an int"),
        (dict(n=2, seed=2**62), InvalidArgumentError, "seed must lie in"),
        (dict(n=2, seed=0, image_size=16.0), InvalidArgumentTypeError, "image_size must be an int"),
        (dict(n=2, seed=0, image_size=15), InvalidArgumentError, "image_size must be >= 16"),
        (dict(n=2, seed=0, config=WorldConfig(num_classes=6)), InvalidArgumentError,
         "config.num_classes must be <= 5"),
        (dict(n=2, seed=0, config=WorldConfig(num_classes=1)), InvalidArgumentError,
         "config.num_classes must be >= 2"),
        (dict(n=2, seed=0, config={"image_size": 16}), InvalidArgumentTypeError, "config must be a WorldConfig"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            make_dataset(**kwargs)
        assert issubclass(error, ValueError)  # callers that caught ValueError still do


def test_make_dataset_is_bit_identical_and_leaves_the_global_rng_alone():
    rng = torch.get_rng_state()
    a = make_dataset(7, seed=5, image_size=17)
    b = make_dataset(7, seed=np.int64(5), image_size=np.int64(17))
    assert torch.equal(rng, torch.get_rng_state())
    for field in ("images", "labels", "boxes", "object_masks"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert a.images.shape == (7, 3, 17, 17) and a.images.dtype == torch.float32
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    assert sorted(torch.bincount(a.labels, minlength=5).tolist()) == [1, 1, 1, 2, 2]
    # boxes are the tight boxes of non-empty masks, with exclusive ends
    for mask, (x0, y0, x1, y1) in zip(a.object_masks, a.boxes.tolist()):
        ys, xs = mask.nonzero(as_tuple=True)
        assert (x0, y0, x1, y1) == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    assert make_dataset(2, seed=-1, image_size=16).images.shape == (2, 3, 16, 16)  # negative seeds still work
    assert not torch.equal(make_dataset(2, seed=6, image_size=16).images, make_dataset(2, seed=5, image_size=16).images)


# --------------------------------------------------------------------------- world: triggers


def test_trigger_kinds_stamp_hand_computed_values():
    image = torch.full((3, 4, 4), 0.5)
    grid = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(3, 2, 2).clone()
    patch = Trigger("patch", grid, (1, 1, 2, 2), 1.0).apply(image)
    expected = torch.full((3, 4, 4), 0.5)
    expected[:, 1:3, 1:3] = grid
    assert torch.equal(patch, expected)
    blended = Trigger("blended", torch.ones(3, 2, 2), (0, 2, 2, 2), 0.25).apply(image)
    expected = torch.full((3, 4, 4), 0.5)
    expected[:, 0:2, 2:4] = 0.625  # 0.75 * 0.5 + 0.25 * 1
    assert torch.equal(blended, expected)
    # sig: 0.7 + 0.5 * sin(2 pi j / 4) = 0.7, 1.2 -> 1 (clamped), 0.7, 0.2 along the columns
    sig = sig_trigger(amplitude=0.5, frequency=1, image_size=4).apply(torch.full((1, 3, 4, 4), 0.7))
    torch.testing.assert_close(sig[0, :, 2], torch.tensor([0.7, 1.0, 0.7, 0.2]).expand(3, 4), rtol=0, atol=1e-6)
    # filter at strength 0.5: half the pixel, half the clamped sepia pixel
    pixel = torch.tensor([0.2, 0.4, 0.6])
    sepia = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]]) @ pixel
    filtered = filter_trigger(strength=0.5, image_size=2).apply(pixel.view(3, 1, 1).expand(3, 2, 2))
    torch.testing.assert_close(filtered[:, 1, 0], 0.5 * pixel + 0.5 * sepia.clamp(0, 1), rtol=0, atol=1e-6)
    assert not torch.equal(image, patch) and torch.equal(image, torch.full((3, 4, 4), 0.5))  # input untouched


def test_trigger_refuses_images_it_cannot_stamp_and_regions_that_do_not_fit():
    trigger = patch_trigger(size=2, image_size=8)
    with pytest.raises(InvalidArgumentError, match=r"images must have shape \[3, H, W\]"):
        trigger.apply(torch.rand(2, 8, 8))
    with pytest.raises(InvalidArgumentTypeError, match="images must be floating point"):
        trigger.apply(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(InvalidArgumentTypeError, match="images must be a tensor"):
        trigger.apply(np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(InvalidArgumentError, match="does not fit 32x32"):
        patch_trigger().apply(torch.rand(3, 32, 32))
    with pytest.raises(InvalidArgumentError, match="does not fit 32x32"):
        patch_trigger().mask(32, 32)  # refused, not an empty or cut mask
    assert int(patch_trigger().mask(64, 64).sum()) == 36
    with pytest.raises(InvalidArgumentError, match="size must be an int >= 2"):
        patch_trigger(size=1, image_size=8)


def test_trigger_follows_the_images_device():
    # the pattern and colour matrix live on the CPU; the stamp is made on the images' device
    for trigger in (patch_trigger(size=2, image_size=8), sig_trigger(image_size=8), filter_trigger(image_size=8)):
        out = trigger.apply(torch.empty(2, 3, 8, 8, device="meta"))
        assert out.device.type == "meta" and out.shape == (2, 3, 8, 8)


def test_zoo_loads_without_unpickling(monkeypatch):
    from captum_global.world import zoo_entry

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be used for the zoo's files")

    monkeypatch.setattr(torch, "load", refuse)
    model = zoo_entry("vgg_clean").load()
    assert not model.training and model(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_make_trigger_takes_the_image_size_from_its_settings():
    from captum_global.world.triggers import make_trigger

    sig = make_trigger({"kind": "sig", "image_size": 32, "amplitude": 0.08, "frequency": 4.0})
    assert sig.apply(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert make_trigger({"kind": "patch", "size": 4, "location": "top-left", "image_size": 32}).region == (1, 1, 4, 4)
    assert make_trigger({"kind": "patch", "size": 4, "location": "bottom-right"}, image_size=32).region == (27, 27, 4, 4)


def test_robust_accuracy_refuses_an_empty_evaluation_and_pgd_follows_the_images_device():
    from captum_global.world import build_model, make_dataset
    from captum_global.world.training import pgd_attack, robust_accuracy

    torch.manual_seed(0)
    model, test = build_model("vgg"), make_dataset(4, seed=3)
    with pytest.raises(InvalidArgumentError, match="n must be"):
        robust_accuracy(model, test, 0.03, 1, 0.01, n=0)
    # zero steps: the random start alone, drawn from the seed on the CPU whatever the device, in [0, 1]
    x = torch.full((2, 3, 64, 64), 0.5, dtype=torch.float64)
    start = pgd_attack(model.double(), x, torch.tensor([0, 1]), epsilon=0.03, steps=0, step_size=0.01, seed=5)
    expected = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1).double() * 0.03
    assert start.dtype == torch.float64
    torch.testing.assert_close(start, expected, rtol=0, atol=1e-7)
