"""Evaluation metrics for attribution maps (ground truth, model truth, backdoor)."""

__all__ = []
