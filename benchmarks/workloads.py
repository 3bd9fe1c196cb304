"""The images and models a benchmark run explains.

- ``vgg``, ``resnet``: the reference world's clean models on its synthetic
  shapes test images (``make_dataset`` with the test seed), target = the
  true class, ground truth = the object's pixel mask. All metrics apply.
- ``efficientnet``: the real ImageNet EfficientNet-Lite0 on the real photos
  that ``captum_global.world`` ships, target = the model's top-1 class. No
  ground truth: only the model-truth metrics (Drop/Increase, insertion,
  deletion) are computed.
- ``photos``: the same model on the real-photo check set
  (``captum_global.world.photos.photo_set``: every photo scikit-image and
  scikit-learn ship, in two views, 42 images); model-truth metrics only.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from captum_global.contract import check_int
from captum_global.errors import InvalidArgumentError

__all__ = ["Workload", "load_workload", "MODEL_CHOICES"]

MODEL_CHOICES = ("vgg", "resnet", "efficientnet", "photos")
_TEST_SEED_OFFSET = 1_000_003  # the world's test split seed offset (see WorldConfig)


@dataclass
class Workload:
    """One model with the images it explains.

    Attributes:
        name: model key (``vgg``, ``resnet``, ``efficientnet`` or custom).
        model: the network in eval mode.
        images: ``[N, C, H, W]`` inputs, in the model's input space.
        targets: ``[N]`` classes to explain.
        masks: ``[N, H, W]`` bool ground truth, or None.
        facts: notes for the result files (data set, accuracy, ...).
    """

    name: str
    model: nn.Module
    images: Tensor
    targets: Tensor
    masks: Optional[Tensor] = None
    facts: Dict[str, object] = field(default_factory=dict)


def _top1(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def load_workload(name: str, n_images: int, seed: int = 0) -> Workload:
    """Build the workload ``name`` with (at most) ``n_images`` images."""
    n_images = check_int(n_images, "n_images", minimum=1)
    if name in ("vgg", "resnet"):
        from captum_global.world import WorldConfig, make_dataset
        from captum_global.world.training import load_reference_model

        config = WorldConfig()
        ds = make_dataset(n_images, config.seed + _TEST_SEED_OFFSET + seed, config=config)
        model = load_reference_model(name, "clean")
        accuracy = (_top1(model, ds.images) == ds.labels).float().mean().item()
        return Workload(name, model, ds.images, ds.labels, ds.object_masks,
                        {"data": f"shapes test images (seed {config.seed + _TEST_SEED_OFFSET + seed})",
                         "image_size": config.image_size, "target": "true class",
                         "accuracy_on_these_images": round(accuracy, 4)})
    if name == "photos":
        from captum_global.world.photos import efficientnet_lite0, photo_set, real_available

        if not real_available():
            raise RuntimeError("real photos or EfficientNet-Lite0 weights are not available on this machine")
        images, labels = photo_set()
        images, labels = images[:n_images], labels[:n_images]
        model = efficientnet_lite0().eval()
        return Workload(name, model, images, _top1(model, images), None,
                        {"data": f"photo_set(): {len(labels)} views of the photos scikit-image and scikit-learn ship",
                         "image_size": int(images.shape[-1]), "target": "model's top-1 class"})
    if name == "efficientnet":
        try:
            from captum_global.world.photos import efficientnet_lite0, real_available, real_photos
        except ImportError as e:
            raise RuntimeError(f"efficientnet needs captum_global.world.photos: {e}") from None
        if not real_available():
            raise RuntimeError("real photos or EfficientNet-Lite0 weights are not available on this machine")
        images, names = real_photos()  # [0, 1] images; the model normalises inside
        images, names = images[:n_images], names[:n_images]
        model = efficientnet_lite0().eval()
        return Workload(name, model, images, _top1(model, images), None,
                        {"data": f"real photos from skimage.data: {', '.join(names)}",
                         "image_size": int(images.shape[-1]), "target": "model's top-1 class"})
    raise InvalidArgumentError(f"models must be among {MODEL_CHOICES}, got {name!r}")


def load_workloads(names: List[str], n_images: int) -> List[Workload]:
    return [load_workload(n, n_images) for n in names]
