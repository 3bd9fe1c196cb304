"""The reference world: synthetic shapes with ground truth, poisoning, reference CNNs.

Everything here is deterministic from seeds. The reference zoo (clean,
backdoored, noisy-label and adversarially trained models of both
architectures, with their training trajectories) ships in ``weights/``;
see :func:`reference_zoo` and :func:`load_reference_model`.
"""
from captum_global.world.data import (
    CLASS_NAMES,
    ShapesDataset,
    WorldConfig,
    boxes_to_masks,
    make_dataset,
    make_splits,
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
    KINDS,
    VARIANTS,
    evaluate,
    label_noise_effect,
    pgd_attack,
    predict,
    reference_target_class,
    reference_trigger,
    robust_accuracy,
    settings_hash,
    train_reference_model,
    training_settings,
)
from captum_global.world.triggers import (
    TRIGGER_KINDS,
    Trigger,
    blended_trigger,
    filter_trigger,
    flip_labels,
    make_trigger,
    patch_trigger,
    poison_dataset,
    sig_trigger,
    triggered_copy,
)
from captum_global.world.zoo import (
    ZooEntry,
    load_reference_model,
    load_reference_trajectory,
    reference_record,
    reference_zoo,
    zoo_entry,
)

__all__ = [
    "CLASS_NAMES",
    "ShapesDataset",
    "WorldConfig",
    "boxes_to_masks",
    "make_dataset",
    "make_splits",
    "ARCHS",
    "TORCHVISION_NAMES",
    "BasicBlock",
    "SmallResNet",
    "SmallVGG",
    "build_model",
    "torchvision_model",
    "efficientnet_lite0",
    "imagenet_class_names",
    "real_available",
    "real_photos",
    "KINDS",
    "VARIANTS",
    "evaluate",
    "label_noise_effect",
    "pgd_attack",
    "predict",
    "reference_target_class",
    "reference_trigger",
    "robust_accuracy",
    "settings_hash",
    "train_reference_model",
    "training_settings",
    "TRIGGER_KINDS",
    "Trigger",
    "blended_trigger",
    "filter_trigger",
    "flip_labels",
    "make_trigger",
    "patch_trigger",
    "poison_dataset",
    "sig_trigger",
    "triggered_copy",
    "ZooEntry",
    "load_reference_model",
    "load_reference_trajectory",
    "reference_record",
    "reference_zoo",
    "zoo_entry",
]
