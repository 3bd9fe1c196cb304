"""Evaluation metrics for attribution maps (ground truth, model truth, backdoor).

Tensors in, one value per example out. The model-truth metrics evaluate the
model in eval mode and hand it back exactly as it came; every bad argument
raises :class:`~captum_global.errors.InvalidArgumentError` naming it, and a
NaN or infinite model output raises
:class:`~captum_global.errors.NonFiniteOutputError`. See ``docs/use/metrics.md``.
"""
from captum_global.metrics._forward import ForwardCounter
from captum_global.metrics.backdoor import flag_anomalies, mad_anomaly_index, trigger_energy_share, trigger_iou
from captum_global.metrics.faithfulness import (
    average_drop,
    deletion_auc,
    drop_and_increase,
    increase_in_confidence,
    insertion_auc,
)
from captum_global.metrics.localization import bbox_accuracy, boxes_to_masks, energy_pointing_game, miou

__all__ = [
    "energy_pointing_game",
    "bbox_accuracy",
    "miou",
    "boxes_to_masks",
    "drop_and_increase",
    "average_drop",
    "increase_in_confidence",
    "insertion_auc",
    "deletion_auc",
    "trigger_energy_share",
    "trigger_iou",
    "mad_anomaly_index",
    "flag_anomalies",
    "ForwardCounter",
]
