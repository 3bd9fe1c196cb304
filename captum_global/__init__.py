"""captum_global: global and multi-layer visual explanations for Captum.

The public face: attribution classes live in :mod:`captum_global.attr`,
metrics in :mod:`captum_global.metrics`, the built-in reference world
(synthetic images with ground truth, small reference CNNs) in
:mod:`captum_global.world`.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]

from captum_global.attr import InputAgnosticSaliency  # noqa: E402

__all__ += ["InputAgnosticSaliency"]

from captum_global.attr import ClassWiseSynthesis, GradientMatchingSynthesis  # noqa: E402

__all__ += ["ClassWiseSynthesis", "GradientMatchingSynthesis"]

from captum_global.attr import SISE, select_sise_layers  # noqa: E402

__all__ += ["SISE", "select_sise_layers"]
