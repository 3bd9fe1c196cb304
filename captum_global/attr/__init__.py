"""Attribution methods of captum_global, each a Captum ``Attribution``."""

__all__ = []
