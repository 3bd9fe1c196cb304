"""Can the explanations be fooled? Adversarial model manipulation as a robustness check.

Heo, Joo and Moon (NeurIPS 2019) showed that a short fine-tuning step with a
penalty on the explanation changes what Grad-CAM or plain gradients show
while the accuracy barely moves. This package turns that into a check:

- :func:`manipulate_model` fine-tunes a *copy* of a model to fool a
  differentiable explanation (location, top-k, centre-of-mass or active
  fooling) and returns a :class:`ManipulationResult`;
- :class:`GradCAMExplanation`, :class:`GradientExplanation` and
  :class:`SoftSISESurrogate` are the explanations it can fool (the last is
  the adaptive attack on SISE, whose own gate is not differentiable);
- the measures (:func:`fooling_statistic`, :func:`fooling_success`,
  :func:`rank_correlation`, ...) say how far any method's maps moved.
"""
from captum_global.robustness.explanations import (
    EXPLANATIONS,
    DifferentiableExplanation,
    GradCAMExplanation,
    GradientExplanation,
    SoftSISESurrogate,
    differentiable_explanation,
)
from captum_global.robustness.manipulation import FOOLINGS, ManipulationResult, fooling_penalty, manipulate_model
from captum_global.robustness.measures import (
    SUCCESS,
    border_region,
    center_of_mass,
    center_of_mass_shift,
    fooling_statistic,
    fooling_success,
    location_loss,
    normalised_maps,
    rank_correlation,
    top_k_mass,
    top_k_overlap,
    top_k_region,
)

__all__ = [
    "manipulate_model",
    "ManipulationResult",
    "FOOLINGS",
    "fooling_penalty",
    "DifferentiableExplanation",
    "GradCAMExplanation",
    "GradientExplanation",
    "SoftSISESurrogate",
    "EXPLANATIONS",
    "differentiable_explanation",
    "SUCCESS",
    "fooling_statistic",
    "fooling_success",
    "rank_correlation",
    "location_loss",
    "border_region",
    "top_k_region",
    "top_k_mass",
    "top_k_overlap",
    "center_of_mass",
    "center_of_mass_shift",
    "normalised_maps",
]
