"""Attribution methods of captum_global, each a Captum ``Attribution``."""

from captum_global.attr.input_agnostic import InputAgnosticSaliency

__all__ = []
__all__ += ["InputAgnosticSaliency"]

from captum_global.attr.classwise import (  # noqa: E402
    ClassWiseResult,
    ClassWiseSynthesis,
    GradientMatchingSynthesis,
)

__all__ += ["ClassWiseSynthesis", "GradientMatchingSynthesis", "ClassWiseResult"]

from captum_global.attr._layers import select_sise_layers  # noqa: E402
from captum_global.attr.sise import SISE  # noqa: E402

__all__ += ["SISE", "select_sise_layers"]
