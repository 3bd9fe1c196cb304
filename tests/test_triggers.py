"""Tests of the reference world's triggers, poisoning and label noise (hand-computed pixels)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_global.world import (
    TRIGGER_KINDS,
    Trigger,
    blended_trigger,
    filter_trigger,
    flip_labels,
    make_dataset,
    make_trigger,
    patch_trigger,
    poison_dataset,
    sig_trigger,
    triggered_copy,
)


@pytest.fixture(scope="module")
def small():
    return make_dataset(200, seed=3)


def _grey(value, size=8, n=None):
    shape = (3, size, size) if n is None else (n, 3, size, size)
    return torch.full(shape, float(value))


def test_patch_stamps_its_pattern_and_nothing_else():
    pattern = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(3, 2, 2).clone()
    trig = Trigger("patch", pattern, (1, 2, 2, 2))
    out = trig.apply(_grey(0.5))
    assert out[0, 1, 2] == 1 and out[0, 1, 3] == 0 and out[0, 2, 2] == 0 and out[0, 2, 3] == 1
    out[:, 1:3, 2:4] = 0.5
    assert torch.equal(out, _grey(0.5))
    mask = trig.mask(8, 8)
    assert mask.sum() == 4 and mask[1:3, 2:4].all()


def test_blended_mixes_with_alpha():
    trig = Trigger("blended", torch.full((3, 2, 3), 0.8), (0, 0, 2, 3), alpha=0.25)
    out = trig.apply(_grey(0.4, n=2))
    assert torch.allclose(out[:, :, :2, :3], torch.full((2, 3, 2, 3), 0.75 * 0.4 + 0.25 * 0.8))
    assert (out[:, :, 2:, :] == 0.4).all() and (out[:, :, :, 3:] == 0.4).all()


def test_sig_adds_a_sinusoid_over_the_whole_image():
    trig = sig_trigger(amplitude=0.1, frequency=2, image_size=8)
    out = trig.apply(_grey(0.5))
    row = [0.5, 0.6, 0.5, 0.4, 0.5, 0.6, 0.5, 0.4]  # 0.5 + 0.1 sin(2 pi 2 j / 8)
    assert torch.allclose(out, torch.tensor(row).expand(3, 8, 8), atol=1e-6)
    clipped = trig.apply(_grey(0.95))[0, 0, :4]
    assert torch.allclose(clipped, torch.tensor([0.95, 1.0, 0.95, 0.85]), atol=1e-6)
    horizontal = sig_trigger(amplitude=0.1, frequency=2, image_size=8, orientation="horizontal")
    assert torch.allclose(horizontal.apply(_grey(0.5))[1, :, 5], torch.tensor(row), atol=1e-6)
    assert trig.mask(8, 8).all()
    with pytest.raises(ValueError, match="orientation"):
        sig_trigger(orientation="diagonal")


def test_filter_applies_the_colour_matrix_to_every_pixel():
    image = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 4, 4).clone()
    sepia = filter_trigger(image_size=4)
    expected = torch.tensor([0.393 * 0.2 + 0.769 * 0.4 + 0.189 * 0.6,
                             0.349 * 0.2 + 0.686 * 0.4 + 0.168 * 0.6,
                             0.272 * 0.2 + 0.534 * 0.4 + 0.131 * 0.6])
    assert torch.allclose(sepia.apply(image), expected.view(3, 1, 1).expand(3, 4, 4), atol=1e-6)
    half = filter_trigger(strength=0.5, image_size=4).apply(image)[:, 2, 3]
    assert torch.allclose(half, 0.5 * torch.tensor([0.2, 0.4, 0.6]) + 0.5 * expected, atol=1e-6)
    white = sepia.apply(torch.ones(3, 4, 4))[:, 0, 0]  # red and green clip at 1
    assert torch.allclose(white, torch.tensor([1.0, 1.0, 0.937]), atol=1e-6)
    swap = filter_trigger(matrix=[[0, 1, 0], [1, 0, 0], [0, 0, 1]], image_size=4).apply(image)
    assert torch.allclose(swap[:, 0, 0], torch.tensor([0.4, 0.2, 0.6]))
    assert sepia.mask(4, 4).all() and sepia.pattern is None


@pytest.mark.parametrize("kind", TRIGGER_KINDS)
def test_each_kind_changes_only_its_mask(small, kind):
    trig = make_trigger({"kind": kind})
    images = small.images[:16]
    out = trig.apply(images)
    mask = trig.mask(64, 64)
    changed = (out != images).any(1).any(0)
    assert changed.any() and not (changed & ~mask).any()
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(trig.apply(images[3]), out[3])
    assert torch.equal(images, small.images[:16])  # input untouched
    whole = kind in ("sig", "filter")
    assert bool(mask.all()) == whole
    if whole:  # a whole-image trigger changes most pixels of every image
        assert (out != images).any(1).float().mean() > 0.5


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(TRIGGER_KINDS), seed=st.integers(0, 1000), size=st.sampled_from([16, 32]))
def test_apply_stays_in_range_and_in_its_region(kind, seed, size):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, size, size, generator=g)
    params = {"patch": {"size": 4, "location": "center"}, "blended": {"size": 8},
              "sig": {}, "filter": {"strength": 0.7}}[kind]
    trig = make_trigger({"kind": kind, **params}, image_size=size)
    out = trig.apply(images)
    assert 0 <= out.min() and out.max() <= 1
    outside = ~trig.mask(size, size)
    assert torch.equal(out[..., outside], images[..., outside])


def test_factories_place_the_original_triggers():
    p, b = patch_trigger(), blended_trigger()
    assert p.kind == "patch" and p.alpha == 1.0 and set(p.pattern.unique().tolist()) == {0.0, 1.0}
    assert p.region == (57, 57, 6, 6)
    assert b.kind == "blended" and b.alpha == 0.25 and b.region == (0, 0, 24, 24)
    assert patch_trigger(size=8, location="center").region == (28, 28, 8, 8)
    assert patch_trigger(size=8, location="bottom-left").region == (55, 1, 8, 8)
    assert blended_trigger(size=64, alpha=0.1).mask(64, 64).all()  # Chen et al.'s whole-image blend
    assert make_trigger({"kind": "sig", "amplitude": 0.05}).alpha == 0.05


def test_trigger_errors():
    with pytest.raises(ValueError, match="location"):
        patch_trigger(location="middle")
    with pytest.raises(ValueError, match="kind"):
        Trigger("stripes", torch.zeros(3, 2, 2), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="kind"):
        make_trigger({"kind": "warp"})
    with pytest.raises(ValueError, match="pattern"):
        Trigger("patch", torch.zeros(3, 2, 3), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="matrix"):
        Trigger("filter", None, (0, 0, 4, 4))
    with pytest.raises(ValueError, match="alpha"):
        Trigger("blended", torch.zeros(3, 2, 2), (0, 0, 2, 2), alpha=0.0)
    with pytest.raises(ValueError, match="fit"):
        patch_trigger().apply(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_poisoning_rate_and_flips(small, rate):
    trig = patch_trigger()
    p = poison_dataset(small, trig, target_class=2, rate=rate, seed=0)
    non_target = small.true_labels != 2
    assert int(p.poisoned.sum()) == round(rate * int(non_target.sum()))
    assert not (p.poisoned & ~non_target).any()
    assert (p.labels[p.poisoned] == 2).all()
    assert torch.equal(p.labels[~p.poisoned], small.labels[~p.poisoned])
    assert torch.equal(p.true_labels, small.true_labels)
    assert torch.equal(p.images[~p.poisoned], small.images[~p.poisoned])
    assert torch.equal(p.images[p.poisoned], trig.apply(small.images[p.poisoned]))
    assert torch.equal(p.trigger_masks.any((1, 2)), p.poisoned)
    assert (p.trigger_masks[p.poisoned] == trig.mask(64, 64)).all()
    assert not small.poisoned.any()  # original untouched


def test_poisoning_with_a_whole_image_trigger(small):
    p = poison_dataset(small, sig_trigger(), target_class=1, rate=0.2, seed=4)
    assert int(p.poisoned.sum()) == 32 and p.trigger_masks[p.poisoned].all()
    again = poison_dataset(small, sig_trigger(), target_class=1, rate=0.2, seed=4)
    assert torch.equal(p.poisoned, again.poisoned)
    assert not torch.equal(p.poisoned, poison_dataset(small, sig_trigger(), 1, 0.2, seed=5).poisoned)


def test_triggered_copy(small):
    trig = blended_trigger()
    t = triggered_copy(small.subset(range(10)), trig)
    assert t.poisoned.all() and torch.equal(t.labels, small.true_labels[:10])
    assert torch.equal(t.images, trig.apply(small.images[:10]))
    assert t.trigger_masks.all(0).sum() == 24 * 24


@pytest.mark.parametrize("share,expected", [(0.35, 14), (0.4, 16), (1.0, 40), (0.0, 0)])
def test_flip_labels_exact_share(small, share, expected):
    noisy = flip_labels(small, source=2, dest=4, share=share, seed=0)
    flipped = noisy.labels != noisy.true_labels
    assert int(flipped.sum()) == expected  # 40 images of class 2
    assert (noisy.true_labels[flipped] == 2).all() and (noisy.labels[flipped] == 4).all()
    assert torch.equal(noisy.labels[~flipped], small.labels[~flipped])
    assert torch.equal(noisy.images, small.images) and not noisy.poisoned.any()
    assert torch.equal(flip_labels(small, 2, 4, share, seed=0).labels, noisy.labels)


def test_flip_labels_seed_and_errors(small):
    a = flip_labels(small, 0, 1, 0.5, seed=0).labels
    assert not torch.equal(a, flip_labels(small, 0, 1, 0.5, seed=1).labels)
    with pytest.raises(ValueError, match="differ"):
        flip_labels(small, 1, 1, 0.5)
    with pytest.raises(ValueError, match="dest"):
        flip_labels(small, 1, 7, 0.5)
    with pytest.raises(ValueError, match="share"):
        flip_labels(small, 1, 2, 1.5)
