"""captum_global: global and multi-layer visual explanations for Captum.

The public face: attribution classes live in :mod:`captum_global.attr`,
metrics in :mod:`captum_global.metrics`, the built-in reference world
(synthetic images with ground truth, small reference CNNs) in
:mod:`captum_global.world`, backdoor scanning in
:mod:`captum_global.backdoor`, figures in :mod:`captum_global.viz`.
"""
from captum_global.attr import (
    SISE,
    ClassGradients,
    ClassWiseResult,
    ClassWiseSynthesis,
    GradientMatchingSynthesis,
    InputAgnosticSaliency,
    select_sise_layers,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SISE",
    "select_sise_layers",
    "InputAgnosticSaliency",
    "ClassWiseSynthesis",
    "GradientMatchingSynthesis",
    "ClassWiseResult",
    "ClassGradients",
]
