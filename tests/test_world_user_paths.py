"""The reference world from a user's angle: what docs/use/world.md and the docstrings promise.

Complements test_world.py, test_triggers.py, test_zoo.py and
test_robustness_world_metrics_contract.py; every expectation is computed by
hand here (counts, pixels, the documented initialisation, the shipped file).
"""
import re
from pathlib import Path

import pytest
import torch

from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError
from captum_global.world import (
    CLASS_NAMES,
    blended_trigger,
    build_model,
    filter_trigger,
    flip_labels,
    make_dataset,
    patch_trigger,
    poison_dataset,
    sig_trigger,
    triggered_copy,
    zoo_entry,
)

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "captum_global" / "world" / "weights"
FIELDS = ("images", "labels", "true_labels", "boxes", "object_masks", "poisoned", "trigger_masks")


@pytest.fixture(scope="module")
def fifty():
    return make_dataset(50, seed=2)  # 10 images per class


def _snapshot(ds):
    return {f: getattr(ds, f).clone() for f in FIELDS}


def _unchanged(ds, snap):
    return all(torch.equal(getattr(ds, f), snap[f]) for f in FIELDS)


# --------------------------------------------------------------------------- data


def test_make_dataset_ignores_and_restores_the_global_rng():
    torch.manual_seed(1)
    a = make_dataset(12, seed=9, image_size=24)
    torch.manual_seed(2)
    torch.rand(100)  # a different global stream position
    state = torch.get_rng_state()
    b = make_dataset(12, seed=9, image_size=24)
    assert torch.equal(torch.get_rng_state(), state)  # left as found
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
    assert sorted(torch.bincount(a.labels, minlength=5).tolist()) == [2, 2, 2, 3, 3]


def test_masks_are_the_drawn_shapes_pixel_by_pixel():
    ds = make_dataset(40, seed=11)
    seen = set()
    for i in range(len(ds)):
        label, mask, image = int(ds.labels[i]), ds.object_masks[i], ds.images[i]
        x0, y0, x1, y1 = ds.boxes[i].tolist()
        inside = image[:, mask]
        # the object is painted last, in one flat colour: every mask pixel holds it
        assert torch.equal(inside, inside[:, :1].expand_as(inside))
        # and nothing outside the mask around the object is painted in it
        ring = torch.zeros_like(mask)
        ring[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = True
        ring &= ~mask
        assert not (image[:, ring] == inside[:, :1]).all(0).any()
        box = mask[y0:y1, x0:x1]
        fill = box.float().mean().item()
        h, w = box.shape
        name = CLASS_NAMES[label]
        seen.add(name)
        if name == "square":
            assert box.all() and abs(h - w) <= 1
        elif name == "disk":  # pi / 4 of the box, corners empty, centre full
            assert abs(fill - torch.pi / 4) < 0.08 and not box[0, 0] and box[h // 2, w // 2]
        elif name == "ring":  # pi / 4 * (1 - 0.55 ** 2) of the box, hole in the centre
            assert abs(fill - torch.pi / 4 * (1 - 0.55 ** 2)) < 0.08 and not box[h // 2, w // 2]
        elif name == "cross":  # two arms of a third of the extent: 5 / 9 of the box
            assert abs(fill - 5 / 9) < 0.08 and box[h // 2, :].all() and box[:, w // 2].all()
            assert not box[0, 0] and not box[-1, -1]
        elif name == "triangle":  # apex on top, base at the bottom: half the box
            assert abs(fill - 0.5) < 0.08 and box[-1].sum() > 0.8 * w and box[0].sum() <= 3
    assert seen == set(CLASS_NAMES)


# --------------------------------------------------------------------------- triggers

SIZED = {  # factories built for 32 px images, as documented (image_size argument)
    "patch": lambda: patch_trigger(size=4, location="top-right", image_size=32),
    "blended": lambda: blended_trigger(size=10, location="center", image_size=32),
    "sig": lambda: sig_trigger(frequency=3, image_size=32),
    "filter": lambda: filter_trigger(strength=0.6, image_size=32),
}


@pytest.mark.parametrize("kind", sorted(SIZED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_apply_on_a_batch_equals_image_by_image_and_leaves_the_input(kind, dtype):
    trig = SIZED[kind]()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=dtype)
    before = images.clone()
    out = trig.apply(images)
    assert torch.equal(images, before) and out.dtype == dtype and out.shape == images.shape
    assert out.data_ptr() != images.data_ptr()
    one_by_one = torch.stack([trig.apply(image) for image in images])
    assert torch.equal(out, one_by_one)
    assert torch.equal(images, before)
    region = trig.mask(32, 32)
    assert torch.equal(out[..., ~region], images[..., ~region])
    if kind in ("patch", "blended"):  # random pixels: every region pixel changes
        assert torch.equal((out != images).any(1).all(0), region)
        assert torch.equal((out != images).any(1).any(0), region)
        y0, x0, h, w = trig.region
        expected = (1 - trig.alpha) * images[..., y0:y0 + h, x0:x0 + w] + trig.alpha * trig.pattern.to(dtype)
        torch.testing.assert_close(out[..., y0:y0 + h, x0:x0 + w], expected, rtol=0, atol=1e-12)
    else:
        assert region.all()


def test_patch_and_blended_fit_larger_images_where_their_region_fits():
    images = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(0))
    for trig in (patch_trigger(), blended_trigger()):
        out, mask = trig.apply(images), trig.mask(96, 80)
        assert mask.shape == (96, 80) and torch.equal((out != images).any(1).all(0), mask)


@pytest.mark.parametrize("factory", [sig_trigger, filter_trigger])
def test_whole_image_triggers_refuse_images_of_another_size(factory):
    # documented region: the whole image. Built for 64 px, it must not stamp
    # only the top-left 64 x 64 of a 96 px image and call that the whole image.
    trig = factory()
    for size in (32, 96):
        with pytest.raises(InvalidArgumentError, match=f"{size}x{size}"):
            trig.apply(torch.rand(3, size, size))
        with pytest.raises(InvalidArgumentError, match=f"{size}x{size}"):
            trig.mask(size, size)
    assert factory(image_size=96).mask(96, 96).all()


@pytest.mark.parametrize("call, argument", [
    (lambda: patch_trigger(seed=1.5), "seed"),
    (lambda: patch_trigger(seed=None), "seed"),
    (lambda: patch_trigger(image_size=2.0), "image_size"),
    (lambda: blended_trigger(seed="2"), "seed"),
    (lambda: blended_trigger(size=True), "size"),
    (lambda: blended_trigger(size=2.0), "size"),
    (lambda: blended_trigger(alpha="0.5"), "alpha"),
    (lambda: blended_trigger(alpha=1.5), "alpha"),
    (lambda: sig_trigger(amplitude=0.0), "amplitude"),
    (lambda: sig_trigger(amplitude=float("nan")), "amplitude"),
    (lambda: sig_trigger(frequency="6"), "frequency"),
    (lambda: filter_trigger(strength=2.0), "strength"),
    (lambda: filter_trigger(strength=None), "strength"),
])
def test_trigger_factories_name_the_bad_argument(call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b") as info:
        call()
    assert isinstance(info.value, (InvalidArgumentError, InvalidArgumentTypeError))


# --------------------------------------------------------------------------- poisoning and label noise


def test_poison_dataset_counts_by_hand_and_leaves_its_input(fifty):
    snap = _snapshot(fifty)
    trig = patch_trigger()
    # 40 non-target images; round(0.3125 * 40) = round(12.5) = 12 (Python rounds half to even)
    p = poison_dataset(fifty, trig, target_class=1, rate=0.3125, seed=3)
    assert _unchanged(fifty, snap)
    assert int(p.poisoned.sum()) == 12 and (fifty.true_labels[p.poisoned] != 1).all()
    changed = (p.images != fifty.images).flatten(1).any(1)
    assert torch.equal(changed, p.poisoned)  # exactly the poisoned images were stamped
    assert torch.equal(p.labels != fifty.labels, p.poisoned) and (p.labels[p.poisoned] == 1).all()
    again = poison_dataset(fifty, trig, target_class=1, rate=0.3125, seed=3)
    assert all(torch.equal(getattr(p, f), getattr(again, f)) for f in FIELDS)
    other = poison_dataset(fifty, trig, target_class=1, rate=0.3125, seed=4)
    assert not torch.equal(other.poisoned, p.poisoned) and int(other.poisoned.sum()) == 12
    assert int(poison_dataset(fifty, trig, 1, rate=1.0).poisoned.sum()) == 40
    # stamping the poisoned copy's images in place must not reach the user's dataset
    p.images.zero_()
    p.labels.fill_(0)
    assert _unchanged(fifty, snap)


def test_flip_labels_counts_by_hand_and_leaves_its_input(fifty):
    snap = _snapshot(fifty)
    # 10 images of class 3; round(0.25 * 10) = round(2.5) = 2
    noisy = flip_labels(fifty, source=3, dest=0, share=0.25, seed=5)
    assert _unchanged(fifty, snap)
    flipped = noisy.labels != noisy.true_labels
    assert int(flipped.sum()) == 2 and torch.equal(flipped, noisy.labels != fifty.labels)
    assert (fifty.labels[flipped] == 3).all() and (noisy.labels[flipped] == 0).all()
    assert torch.equal(flip_labels(fifty, 3, 0, 0.25, seed=5).labels, noisy.labels)
    assert int((flip_labels(fifty, 3, 0, 0.35).labels != fifty.labels).sum()) == 4  # round(3.5)
    noisy.labels.fill_(4)
    assert _unchanged(fifty, snap)


def test_triggered_copy_leaves_its_input(fifty):
    snap = _snapshot(fifty)
    t = triggered_copy(fifty, sig_trigger())
    assert _unchanged(fifty, snap) and torch.equal(t.images, sig_trigger().apply(fifty.images))


@pytest.mark.parametrize("call, argument", [
    (lambda ds: poison_dataset(ds, None), "trigger"),
    (lambda ds: poison_dataset(ds, "patch"), "trigger"),
    (lambda ds: poison_dataset(ds.images, patch_trigger()), "ds"),
    (lambda ds: triggered_copy(ds, None), "trigger"),
    (lambda ds: triggered_copy([ds], patch_trigger()), "ds"),
    (lambda ds: flip_labels(None, 0, 1, 0.5), "ds"),
    (lambda ds: poison_dataset(ds, patch_trigger(), target_class=5), "target_class"),
    (lambda ds: poison_dataset(ds, patch_trigger(), rate=-0.1), "rate"),
    (lambda ds: flip_labels(ds, 0, 1.0, 0.5), "dest"),
])
def test_poisoning_names_the_bad_argument(fifty, call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        call(fifty)


# --------------------------------------------------------------------------- zoo


def _documented_accuracy(name):
    table = (ROOT / "docs" / "measurements" / "world.md").read_text()
    row = re.search(rf"^\| {name} \|.*$", table, re.M).group(0).split("|")
    return float(row[6].split()[0]) / 100


@pytest.mark.parametrize("name", ["vgg_patch", "resnet_clean_s1"])
def test_zoo_loads_in_eval_mode_with_its_documented_accuracy_and_fresh_storage(name):
    entry = zoo_entry(name)
    a, b = entry.load(), entry.load()
    assert not any(m.training for m in a.modules())
    assert entry.record()["clean_test_accuracy"] == pytest.approx(_documented_accuracy(name), abs=0.0005)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not {v.data_ptr() for v in sa.values()} & {v.data_ptr() for v in sb.values()}
    with torch.no_grad():  # a user's accidental in-place edit stays in that one model
        next(a.parameters()).add_(1.0)
    fresh = entry.load().state_dict()
    assert all(torch.equal(fresh[k], sb[k]) for k in sb)
    record = entry.record()
    record["clean_test_accuracy"] = -1.0
    assert entry.record()["clean_test_accuracy"] > 0.9


def test_trajectory_starts_at_the_documented_initialisation_and_ends_at_the_shipped_file():
    from safetensors.torch import load_file

    entry = zoo_entry("vgg_sig_s2")
    state = torch.get_rng_state()
    points = entry.trajectory()
    assert torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng():  # "the global RNG seeded, the model built, exactly as training starts"
        torch.manual_seed(entry.seed)
        init = build_model(entry.arch).state_dict()
    assert init.keys() == points[0].keys() and all(torch.equal(init[k], points[0][k]) for k in init)
    shipped = load_file(str(WEIGHTS / f"{entry.name}.safetensors"))
    assert shipped.keys() == points[-1].keys()
    assert all(torch.equal(shipped[k], points[-1][k]) for k in shipped)
    points[-1]["fc.weight"].zero_()  # mutating a returned point does not reach later loads
    assert torch.equal(entry.load().state_dict()["fc.weight"], shipped["fc.weight"])
    assert torch.equal(entry.trajectory()[-1]["fc.weight"], shipped["fc.weight"])
