"""Captum's target rules, for code that needs one class index per example.

Tools outside Captum (pytorch-grad-cam's ``ClassifierOutputTarget``,
quantus' ``y_batch``) take one class per example. :func:`target_classes`
turns any target Captum accepts into that list, by the same rules (and with
the same errors) as every method of this package.
"""
from __future__ import annotations

from typing import Any, List

from captum_global._checks import check_int
from captum_global._targets import parse_target

__all__ = ["target_classes"]


def target_classes(target: Any, num_examples: int, num_classes: int) -> List[int]:
    """One class index per example, by Captum's target rules.

    Args:
        target: any classifier target Captum accepts: an int (negative counts
            from the end), a 1-tuple, a list with one entry per example, or
            an integer tensor / NumPy array with one element or one per
            example.
        num_examples (int): the batch size ``N``.
        num_classes (int): the model's number of outputs (resolves negative
            indices and checks the range).

    Returns:
        list of int: ``N`` indices in ``[0, num_classes)``.

    Examples::

        >>> import torch
        >>> from captum_global.targets import target_classes
        >>> target_classes(-1, 3, num_classes=5)
        [4, 4, 4]
        >>> target_classes(torch.tensor([0, 2]), 2, num_classes=5)
        [0, 2]
        >>> target_classes([(1,), (3,)], 2, num_classes=5)
        [1, 3]
    """
    n = check_int(num_examples, "num_examples", minimum=1)
    k = check_int(num_classes, "num_classes", minimum=1)
    return parse_target(target, n).checked((n, k)).classes()
