"""The reference world: synthetic shapes with ground truth, poisoning, reference CNNs.

Everything here is deterministic from seeds. Trained weights for
``{vgg, resnet} x {clean, patch, blended}`` ship in ``weights/`` and load
with :func:`load_reference_model`; see ``docs/world.md``.
"""
from captum_global.world.data import (
    CLASS_NAMES,
    ShapesDataset,
    Trigger,
    WorldConfig,
    blended_trigger,
    boxes_to_masks,
    make_dataset,
    make_splits,
    patch_trigger,
    poison_dataset,
    triggered_copy,
)
from captum_global.world.models import (
    ARCHS,
    TORCHVISION_NAMES,
    BasicBlock,
    SmallResNet,
    SmallVGG,
    build_model,
    torchvision_model,
)
# photos.py imports its optional dependencies only when called.
from captum_global.world.photos import (
    efficientnet_lite0,
    imagenet_class_names,
    real_available,
    real_photos,
)
from captum_global.world.training import (
    VARIANTS,
    evaluate,
    load_reference_model,
    reference_record,
    reference_target_class,
    reference_trigger,
    train_reference_model,
)

__all__ = [
    "CLASS_NAMES",
    "ShapesDataset",
    "Trigger",
    "WorldConfig",
    "blended_trigger",
    "boxes_to_masks",
    "make_dataset",
    "make_splits",
    "patch_trigger",
    "poison_dataset",
    "triggered_copy",
    "ARCHS",
    "TORCHVISION_NAMES",
    "BasicBlock",
    "SmallResNet",
    "SmallVGG",
    "build_model",
    "torchvision_model",
    "VARIANTS",
    "evaluate",
    "load_reference_model",
    "reference_record",
    "reference_target_class",
    "reference_trigger",
    "train_reference_model",
    "efficientnet_lite0",
    "imagenet_class_names",
    "real_available",
    "real_photos",
]
