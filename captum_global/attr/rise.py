"""RISE: randomized input sampling for explanation (Petsiuk, Das & Saenko, BMVC 2018).

The perturbation method SISE builds on, and the baseline the benchmarks
compare SISE with. Captum has no RISE; this one follows the paper's recipe
and defaults:

- draw ``n_masks`` binary ``s x s`` grids (each cell kept with probability
  ``p1``), upsample each bilinearly to ``(s + 1) * ceil(H / s)`` pixels and
  crop an ``H x W`` window at a random shift (so mask edges are not aligned
  with the grid): a smooth mask ``M_i``;
- the saliency of class ``c`` is ``sum_i P_c(I * M_i) M_i / (n_masks * p1)``,
  with ``P_c`` the softmax probability (the raw output with
  ``apply_softmax=False``).

Masks come in fixed chunks drawn from generators seeded by ``seed`` and the
chunk index, so the map does not depend on ``perturbations_per_eval`` and
never needs all ``n_masks`` full-size masks in memory at once. Masked inputs
are scored with the package's chunked scorer: Captum's target rules, the
handling of per-example forward arguments and the refusal of non-finite
model outputs are those of every other method here.

An example whose masked scores are all equal (up to float round-off: a
model that ignores its input, or ``p1=1``) carries no signal: its map is
all zeros rather than the coverage of the masks scaled by the one score.
A model that draws from the global RNG (e.g. MC dropout) draws from a state
seeded by ``seed``; the caller's global random state is restored afterwards.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor

from captum_global._checks import check_bool, check_inputs, check_int, check_model_weights, check_number
from captum_global._compat import TargetType, format_additional_forward_args, format_output, is_tuple
from captum_global._maps import NO_SIGNAL_RTOL
from captum_global._model_state import preserved_model_state
from captum_global._scoring import class_softmax, iter_scores
from captum_global._seeding import check_seed, cuda_devices, draw_uniform, make_generator, seeded_global_rng
from captum_global._targets import parse_target
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["RISE", "rise_masks"]

_CHUNK = 100  # masks drawn per generator; fixed so results never depend on batching
_SEED_SPAN = 2**64  # torch generators take seeds in [0, 2**64)


def rise_masks(n: int, height: int, width: int, s: int = 7, p1: float = 0.5,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` smooth RISE masks ``[n, 1, height, width]`` with values in [0, 1].

    Examples::

        >>> import torch
        >>> from captum_global.attr.rise import rise_masks
        >>> m = rise_masks(3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> m.shape, bool(m.min() >= 0), bool(m.max() <= 1)
        (torch.Size([3, 1, 16, 16]), True, True)
    """
    n = check_int(n, "n", minimum=1)
    s = check_int(s, "s", minimum=1)
    p1 = check_number(p1, "p1", 0.0, 1.0, min_inclusive=False)
    cell_h, cell_w = math.ceil(height / s), math.ceil(width / s)
    grid = (draw_uniform((n, 1, s, s), generator) < p1).float()
    up = F.interpolate(grid, size=((s + 1) * cell_h, (s + 1) * cell_w), mode="bilinear", align_corners=False)
    dy = torch.randint(0, cell_h, (n,), generator=generator)
    dx = torch.randint(0, cell_w, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(height)).view(n, 1, height, 1).expand(n, 1, height, width)
    cols = (dx.view(n, 1) + torch.arange(width)).view(n, 1, 1, width).expand(n, 1, height, width)
    flat = up.flatten(2)
    index = (rows * up.shape[-1] + cols).flatten(2)
    return flat.gather(2, index).view(n, 1, height, width)


class RISE(PerturbationAttribution):
    r"""Randomized Input Sampling for Explanation.

    Args:
        forward_func (Callable): the model (or any function) returning
            ``[N, classes]`` scores. The module behind it (the module,
            ``model.forward``, a ``functools.partial`` of it or a wrapper
            such as ``ForwardCounter``) runs in eval mode and gets its flags
            back.

    Examples::

        >>> import torch
        >>> from captum_global.attr import RISE
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
        >>> attr = RISE(model).attribute(torch.rand(2, 3, 16, 16), target=[0, 3], n_masks=50)
        >>> attr.shape
        torch.Size([2, 3, 16, 16])
        >>> bool((attr[:, 0] == attr[:, 2]).all())  # one map per example, on every channel
        True
    """

    def __init__(self, forward_func: Callable) -> None:
        if not callable(forward_func):
            raise InvalidArgumentTypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        super().__init__(forward_func)

    @classmethod
    def get_name(cls) -> str:
        return "RISE"

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    @staticmethod
    def masks(height: int, width: int, n_masks: int = 4000, s: int = 7, p1: float = 0.5,
              seed: int = 0) -> Iterator[Tensor]:
        """The masks :meth:`attribute` uses with these settings, chunk by chunk
        (``[m, 1, height, width]``, at most 100 each), in scoring order."""
        n_masks, s, p1, seed = _check_settings(n_masks, s, p1, seed)
        for chunk, start in enumerate(range(0, n_masks, _CHUNK)):
            # modulo 2**64: every seed check_seed accepts (up to 2**63 - 1) gives a valid generator
            generator = make_generator((seed * 1_000_003 + chunk) % _SEED_SPAN)
            yield rise_masks(min(_CHUNK, n_masks - start), height, width, s, p1, generator)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_masks: int = 4000,
        s: int = 7,
        p1: float = 0.5,
        apply_softmax: bool = True,
        seed: int = 0,
        perturbations_per_eval: int = 64,
        show_progress: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, ...]]:
        r"""
        Args:
            inputs (Tensor or tuple of Tensor): image batch ``[N, C, H, W]``;
                a tuple may hold several image tensors with the same
                ``N, H, W``: every mask multiplies all of them, and each gets
                the same map.
            target (int, tuple, list, Tensor): the output to explain, in every
                format Captum accepts.
            additional_forward_args (Any, optional): extra forward arguments;
                tensors whose first dimension is ``N`` follow their example.
            n_masks (int): number of masks. Default: 4000 (the paper's).
            s (int): grid cells per side. Default: 7.
            p1 (float): probability that a cell is kept, in (0, 1]. Default: 0.5.
            apply_softmax (bool): score the softmax probability (the paper)
                or the raw output. Default: True.
            seed (int): the masks' seed (the global RNG is not used).
            perturbations_per_eval (int): masked inputs per model call; never
                changes the result, only speed and memory. Default: 64.
            show_progress (bool): a progress bar over the scoring chunks.

        Returns:
            attributions: input-shaped tensor (a tuple if a tuple came in),
            the RISE map of each example repeated over its channels; all
            zeros for an example whose masked scores are all equal (no signal).
        """
        was_tuple = is_tuple(inputs)
        xs = tuple(x.detach() for x in check_inputs(inputs, image_batch=True, floating=True))
        n, _, h, w = xs[0].shape
        for i, x in enumerate(xs[1:], start=1):
            if x.shape[0] != n or tuple(x.shape[-2:]) != (h, w):
                raise InvalidArgumentError(
                    f"inputs[{i}] has shape {tuple(x.shape)}: every input of the tuple needs the batch size "
                    f"{n} and the image size {(h, w)} of inputs[0]")
        n_masks, s, p1, seed = _check_settings(n_masks, s, p1, seed)
        apply_softmax = check_bool(apply_softmax, "apply_softmax")
        chunk_size = check_int(perturbations_per_eval, "perturbations_per_eval", minimum=1)
        show_progress = check_bool(show_progress, "show_progress")
        targets = parse_target(target, n)
        args = format_additional_forward_args(additional_forward_args)
        transform = (lambda out: class_softmax(out, "apply_softmax=True", "apply_softmax=False")) if apply_softmax else None
        check_model_weights(self.forward_func)
        device, dtype = xs[0].device, xs[0].dtype
        saliency = torch.zeros(n, 1, h, w, device=device, dtype=dtype)
        low = torch.full((n,), float("inf"), device=device, dtype=dtype)
        high = torch.full((n,), -float("inf"), device=device, dtype=dtype)
        with preserved_model_state(self.forward_func), seeded_global_rng(seed, cuda_devices(self.forward_func, *xs)):
            for masks in self.masks(h, w, n_masks, s, p1, seed):
                masks = masks.to(device, dtype)

                # Flat index over (mask, example) pairs, example fastest.
                def build(flat: Tensor) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor]:
                    flat = flat.to(device)
                    mask_index, example = flat // n, flat % n
                    return tuple(x[example] * masks[mask_index] for x in xs), example, mask_index

                for chunk in iter_scores(self.forward_func, masks.shape[0] * n, build, targets, args, transform,
                                         chunk_size=chunk_size, chunk_argument="perturbations_per_eval",
                                         what="RISE", show_progress=show_progress):
                    scores = chunk.scores.to(dtype)
                    saliency.index_add_(0, chunk.examples, scores.view(-1, 1, 1, 1) * masks[chunk.payload])
                    low.scatter_reduce_(0, chunk.examples, scores, "amin")
                    high.scatter_reduce_(0, chunk.examples, scores, "amax")
        saliency = saliency / (n_masks * p1)
        # scores that never move carry no signal: a zero map, not the masks' coverage
        still = (high - low) <= NO_SIGNAL_RTOL * torch.maximum(high.abs(), low.abs())
        saliency = torch.where(still.view(-1, 1, 1, 1), torch.zeros_like(saliency), saliency)
        # each input's map in its own dtype (a tuple may mix float32 and float64 inputs)
        return format_output(was_tuple, tuple(saliency.to(x.dtype).expand_as(x).clone() for x in xs))



def _check_settings(n_masks: Any, s: Any, p1: Any, seed: Any) -> Tuple[int, int, float, int]:
    return (check_int(n_masks, "n_masks", minimum=1), check_int(s, "s", minimum=1),
            check_number(p1, "p1", 0.0, 1.0, min_inclusive=False), check_seed(seed, allow_none=False))
