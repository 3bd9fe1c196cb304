"""Target parsing and selection: one rule for every method, metric and benchmark (private).

The rule is Captum's (``captum._utils.common._select_targets``), checked up
front so that a wrong target fails with a message naming ``target`` instead
of an ``IndexError`` deep in a forward pass:

- ``None``: the model's output is the score (one value per example);
- an int (negative ints count from the end, as in Python), or an integer
  tensor with one element: the same output index for every example;
- a tuple of ints: an index into the output's dimensions after the batch,
  the same for every example (``(2,)`` is class 2);
- a list of ints or of tuples, one per example (``len == N``);
- a 1-D integer tensor with one entry per example.

NumPy integer scalars count as ints and NumPy integer arrays as tensors
(Captum 0.9 refuses both although they are unambiguous; its wrappers,
``NoiseTunnel`` and ``sensitivity_max``, repeat list and tensor targets with
the inputs but not NumPy arrays, so inside them a NumPy array is refused
with that remedy: a list or ``torch.as_tensor(target)``). Refused, with
:class:`~captum_global.errors.InvalidArgumentError` (which is also the
``AssertionError`` Captum raises): bools, floats, strings, float tensors,
a list whose length is not ``N`` (Captum refuses ``[2]`` for three
examples), tensors of any other shape, and indices outside the model's
output. Selection itself goes through Captum's helper (``_compat``), so
the semantics cannot drift from Captum's.
"""
import numbers
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_global._compat import select_targets
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["TargetIndex", "parse_target"]


def _as_index(value: Any, argument: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise InvalidArgumentTypeError(
            f"{argument} must hold integer indices (int, tuple of ints, list or integer tensor), "
            f"got {type(value).__name__} {value!r}"
        )
    return int(value)


def _as_tuple(value: Any, argument: str) -> Tuple[int, ...]:
    if isinstance(value, tuple):
        if len(value) == 0:
            raise InvalidArgumentError(f"{argument} must not be an empty tuple")
        return tuple(_as_index(v, argument) for v in value)
    return (_as_index(value, argument),)


@dataclass(frozen=True)
class TargetIndex:
    """A parsed target: one index row per example, or no target at all.

    Attributes:
        index: ``[N, k]`` long tensor on the CPU (``k`` indexed output
            dimensions after the batch; ``k = 1`` for a classifier), or
            ``None`` when no target was given.
        num_examples: ``N``.
        argument: the argument name used in error messages.
    """

    index: Optional[Tensor]
    num_examples: int
    argument: str = "target"

    def checked(self, output_shape: Tuple[int, ...]) -> "TargetIndex":
        """The same target with negative indices resolved and every index checked
        against a model output of shape ``[B, *output_shape[1:]]``."""
        shape = tuple(output_shape)[1:]
        if self.index is None:
            if shape not in ((), (1,)):
                raise InvalidArgumentError(
                    f"{self.argument} is required: the model returns {shape} values per example; "
                    f"pass the class (or output index) to explain"
                )
            return self
        k = self.index.shape[1]
        if k != len(shape):
            raise InvalidArgumentError(
                f"{self.argument} must index one value per example: it gives {k} index(es) but the model "
                f"output has {len(shape)} dimension(s) after the batch, of sizes {shape}"
            )
        sizes = torch.tensor(shape, dtype=torch.long)
        low, high = -sizes, sizes - 1
        bad = (self.index < low) | (self.index > high)
        if bool(bad.any()):
            row = int(bad.any(dim=1).nonzero()[0])
            value = self.index[row].tolist()
            value = value[0] if k == 1 else tuple(value)
            valid = f"0..{shape[0] - 1} (or -{shape[0]}..-1)" if k == 1 else f"indices within {shape}"
            where = f" (example {row})" if self.num_examples > 1 else ""
            raise InvalidArgumentError(
                f"{self.argument} {value!r}{where} is out of range: the model has {shape} outputs, "
                f"valid values are {valid}"
            )
        return TargetIndex(torch.remainder(self.index, sizes), self.num_examples, self.argument)

    def classes(self) -> List[int]:
        """One class per example (for ``[N, classes]`` outputs; call :meth:`checked` first)."""
        if self.index is None or self.index.shape[1] != 1:
            raise InvalidArgumentError(f"{self.argument} must give one class index per example")
        return [int(c) for c in self.index[:, 0]]

    def take(self, rows: Tensor) -> "TargetIndex":
        """The targets of the examples ``rows`` (a ``[B]`` index of examples, repeats allowed)."""
        if self.index is None:
            return TargetIndex(None, int(rows.numel()), self.argument)
        return TargetIndex(self.index[rows.reshape(-1).cpu()], int(rows.numel()), self.argument)

    def select(self, output: Tensor, rows: Optional[Tensor] = None) -> Tensor:
        """The ``[B]`` target scores of ``output`` (``[B, ...]``), row ``i`` belonging to example ``rows[i]``.

        ``rows`` defaults to ``0..N-1``. Selection is Captum's.
        """
        targets = self if rows is None else self.take(rows)
        if output.shape[0] != targets.num_examples:
            raise InvalidArgumentError(
                f"the model returned {output.shape[0]} rows for {targets.num_examples} inputs; "
                "forward_func must keep the batch dimension"
            )
        checked = targets.checked(tuple(output.shape))
        if checked.index is None:
            return output.reshape(output.shape[0])
        if checked.index.shape[1] == 1:
            captum_target: Any = checked.index[:, 0].to(output.device)
        else:
            captum_target = [tuple(int(v) for v in row) for row in checked.index]
        return select_targets(output, captum_target).reshape(output.shape[0])


def parse_target(target: Any, num_examples: int, argument: str = "target") -> TargetIndex:
    """Parse any target format Captum accepts into a :class:`TargetIndex` for ``num_examples``."""
    n = int(num_examples)
    if target is None:
        return TargetIndex(None, n, argument)
    from_numpy = isinstance(target, np.ndarray)
    if isinstance(target, np.ndarray):
        if not np.issubdtype(target.dtype, np.integer):
            raise InvalidArgumentTypeError(f"{argument} must hold integer class indices, got dtype {target.dtype}")
        target = torch.from_numpy(np.ascontiguousarray(target))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise InvalidArgumentTypeError(
                f"{argument} must be an integer tensor of class indices, got dtype {target.dtype}"
            )
        if target.numel() == 1:  # any shape, as Captum (tensor([[2]]) is class 2 for every example)
            return TargetIndex(torch.full((n, 1), int(target.reshape(-1)[0]), dtype=torch.long), n, argument)
        if target.dim() != 1:
            raise InvalidArgumentError(
                f"{argument} given as a tensor must have one element or shape [N] (one index per example), "
                f"got shape {tuple(target.shape)}"
            )
        if target.numel() != n:
            # Captum's wrappers (NoiseTunnel, sensitivity_max) repeat list and tensor targets with the inputs
            # but pass a NumPy array (which Captum refuses) through unchanged: say so
            what = "is a NumPy array of" if from_numpy else "has"
            hint = ("; Captum's wrappers (NoiseTunnel, sensitivity_max) repeat list and tensor targets with the "
                    "inputs but not NumPy arrays: pass a list or torch.as_tensor(target)") if from_numpy else ""
            raise InvalidArgumentError(
                f"{argument} {what} {target.numel()} entries but there are {n} examples: give one per example{hint}"
            )
        return TargetIndex(target.detach().cpu().long().reshape(n, 1), n, argument)
    if isinstance(target, list):
        if len(target) != n:
            raise InvalidArgumentError(
                f"{argument} is a list of {len(target)} entries but there are {n} examples: a list gives one "
                "target per example (use an int for one class for all)"
            )
        rows = [_as_tuple(t, argument) for t in target]
        if len({len(r) for r in rows}) != 1:
            raise InvalidArgumentError(f"{argument} entries must all index the same number of dimensions")
        return TargetIndex(torch.tensor(rows, dtype=torch.long).reshape(n, len(rows[0])), n, argument)
    if isinstance(target, tuple):
        row = _as_tuple(target, argument)
        return TargetIndex(torch.tensor([row] * n, dtype=torch.long).reshape(n, len(row)), n, argument)
    row = _as_tuple(target, argument)
    return TargetIndex(torch.tensor([row] * n, dtype=torch.long).reshape(n, 1), n, argument)
