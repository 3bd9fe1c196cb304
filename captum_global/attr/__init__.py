"""Attribution methods of captum_global, each a Captum ``Attribution``.

- :class:`SISE`: block-wise aggregated, attribution-based input sampling.
- :class:`InputAgnosticSaliency`: what a model attributes to a class with
  no input image.
- :class:`ClassWiseSynthesis` (alias :class:`GradientMatchingSynthesis`):
  a small synthetic set per class that imitates the training run (gradient
  or trajectory matching); results in :class:`ClassWiseResult`.
- :class:`RISE`: randomized input sampling (the perturbation method SISE
  builds on; Captum has none).
- :func:`select_sise_layers`: the layers SISE reads by default.
"""
from captum_global.attr._layers import select_sise_layers
from captum_global.attr.classwise import ClassWiseSynthesis, GradientMatchingSynthesis
from captum_global.attr.classwise_types import ClassGradients, ClassWiseResult
from captum_global.attr.input_agnostic import InputAgnosticSaliency
from captum_global.attr.rise import RISE
from captum_global.attr.sise import SISE

__all__ = [
    "SISE",
    "RISE",
    "select_sise_layers",
    "InputAgnosticSaliency",
    "ClassWiseSynthesis",
    "GradientMatchingSynthesis",
    "ClassWiseResult",
    "ClassGradients",
]
