"""captum_global.targets.target_classes: Captum's target rules as one class per example."""
import numpy as np
import pytest
import torch

from captum_global.errors import InvalidArgumentError
from captum_global.targets import target_classes


@pytest.mark.parametrize("target, expected", [
    (2, [2, 2, 2]), (-1, [4, 4, 4]), (-5, [0, 0, 0]), ((3,), [3, 3, 3]), (np.int64(1), [1, 1, 1]),
    ([0, 4, -2], [0, 4, 3]), ([(1,), (2,), (-1,)], [1, 2, 4]), (torch.tensor(3), [3, 3, 3]),
    (torch.tensor([3]), [3, 3, 3]), (torch.tensor([2, 0, 1]), [2, 0, 1]), (np.array([4, 4, 0]), [4, 4, 0]),
])
def test_every_captum_format_gives_one_class_per_example(target, expected):
    assert target_classes(target, 3, num_classes=5) == expected


@pytest.mark.parametrize("target, match", [
    (5, "out of range"), (-6, "out of range"), ([1, 2], "3 examples"), (torch.tensor([1.0, 2.0, 0.0]), "integer"),
    (1.5, "target"), (True, "target"), (None, "required"), ((1, 2), "index"),
])
def test_what_captum_refuses_is_refused_naming_target(target, match):
    with pytest.raises((InvalidArgumentError, TypeError), match=match):
        target_classes(target, 3, num_classes=5)


def test_sizes_are_checked():
    with pytest.raises(InvalidArgumentError, match="num_examples"):
        target_classes(0, 0, num_classes=5)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        target_classes(0, 2, num_classes=0)
