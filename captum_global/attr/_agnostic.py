"""Private building blocks of :class:`InputAgnosticSaliency`.

Kept apart so each piece (sample drawing, the class loss gradient,
projection, refinement) can be tested on its own; the algorithm itself reads
top to bottom in ``input_agnostic.py``.
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._maps import minmax_normalise, to_heatmap

__all__ = [
    "uniform",
    "gaussian",
    "make_samplers",
    "class_loss_gradient",
    "project",
    "refine_smooth",
    "refine_blur",
    "magnitude_map",
    "scale_maps",
]

Sampler = Callable[[int, torch.Generator], Tensor]

# Gaussian noise is centred on the middle of the value range with this
# fraction of its span as standard deviation: about 95% of the draws fall
# inside the range, so little is lost to the clip.
GAUSSIAN_STD_FRACTION = 0.25


def uniform(low: float = 0.0, high: float = 1.0) -> Callable[[int, Tuple[int, ...], torch.Generator], Tensor]:
    """Distribution callable: i.i.d. uniform noise in ``[low, high)``."""
    if not high > low:
        raise ValueError(f"uniform needs high > low, got low={low}, high={high}")

    def draw(n: int, shape: Tuple[int, ...], generator: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand((n,) + tuple(shape), generator=generator)

    return draw


def gaussian(mean: float = 0.5, std: float = 0.25) -> Callable[[int, Tuple[int, ...], torch.Generator], Tensor]:
    """Distribution callable: i.i.d. Gaussian noise ``N(mean, std^2)``."""
    if not std > 0:
        raise ValueError(f"gaussian needs std > 0, got {std}")

    def draw(n: int, shape: Tuple[int, ...], generator: torch.Generator) -> Tensor:
        return mean + std * torch.randn((n,) + tuple(shape), generator=generator)

    return draw


def make_samplers(
    distribution,
    shapes: Sequence[Tuple[int, ...]],
    value_range: Optional[Tuple[float, float]],
    like: Sequence[Tensor],
) -> List[Sampler]:
    """One sampler per input tensor: ``sampler(n, generator) -> [n, *shape]``.

    Samples are always drawn on the CPU from a CPU generator and then moved,
    so a seed gives the same noise on every device.
    """
    low, high = value_range if value_range is not None else (0.0, 1.0)
    if isinstance(distribution, str):
        if distribution == "uniform":
            distribution = uniform(low, high)
        elif distribution == "gaussian":
            distribution = gaussian((low + high) / 2, GAUSSIAN_STD_FRACTION * (high - low))
        else:
            raise ValueError(
                f"distribution must be 'uniform', 'gaussian', a callable "
                f"(n, shape, generator) -> Tensor or a Tensor of samples; got {distribution!r}"
            )
    if isinstance(distribution, Tensor):
        distribution = (distribution,)
    if isinstance(distribution, tuple):
        if len(distribution) != len(shapes) or not all(isinstance(d, Tensor) for d in distribution):
            raise ValueError(
                f"distribution given as samples must be one tensor per input "
                f"({len(shapes)} expected), got {len(distribution)} item(s)"
            )
        samplers = []
        for pool, shape, ref in zip(distribution, shapes, like):
            if pool.dim() < 1 or tuple(pool.shape[1:]) != tuple(shape) or pool.shape[0] == 0:
                raise ValueError(
                    f"distribution samples must have shape [M, {', '.join(map(str, shape))}] "
                    f"with M > 0, got {tuple(pool.shape)}"
                )
            if not torch.isfinite(pool).all():
                raise ValueError("distribution samples contain NaN or infinite values")
            samplers.append(_pool_sampler(pool.detach().to(ref.device, ref.dtype)))
        return samplers
    if callable(distribution):
        return [_callable_sampler(distribution, shape, ref) for shape, ref in zip(shapes, like)]
    raise TypeError(
        f"distribution must be 'uniform', 'gaussian', a callable or a Tensor, "
        f"got {type(distribution).__name__}"
    )


def _pool_sampler(pool: Tensor) -> Sampler:
    def draw(n: int, generator: torch.Generator) -> Tensor:
        # With replacement, so any samples_per_step works with any pool size.
        idx = torch.randint(pool.shape[0], (n,), generator=generator)
        return pool[idx.to(pool.device)]

    return draw


def _callable_sampler(fn: Callable, shape: Tuple[int, ...], ref: Tensor) -> Sampler:
    def draw(n: int, generator: torch.Generator) -> Tensor:
        out = fn(n, tuple(shape), generator)
        if not isinstance(out, Tensor) or tuple(out.shape) != (n,) + tuple(shape):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"distribution callable must return a Tensor of shape {(n,) + tuple(shape)}, got {got}"
            )
        if not torch.isfinite(out).all():
            raise ValueError("distribution callable returned NaN or infinite values")
        return out.to(ref.device, ref.dtype)

    return draw


def class_loss_gradient(
    forward_func: Callable,
    points: Tuple[Tensor, ...],
    targets: Tensor,
    additional_forward_args: Optional[Tuple] = None,
) -> Tuple[Tensor, ...]:
    """Gradient of each point's own cross-entropy towards its target class.

    Row ``i`` of the result is ``d CE(f(points_i), targets_i) / d points_i``
    (the loss is summed over rows, so rows do not share a 1/n factor). In
    Captum's terms this is ``-Saliency(log_softmax o f).attribute(points,
    target=targets, abs=False)``: descending it raises class ``targets_i``.
    """
    points = tuple(p.detach().requires_grad_(True) for p in points)
    args = points if additional_forward_args is None else points + tuple(additional_forward_args)
    with torch.enable_grad():
        logits = forward_func(*args)
        if logits.dim() != 2:
            raise ValueError(
                f"the model must return [batch, classes] scores, got shape {tuple(logits.shape)}"
            )
        loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
        grads = torch.autograd.grad(loss, points)
    return tuple(g.detach() for g in grads)


def project(rho: Tensor, norm: str, radius: float) -> Tensor:
    """Project each class's perturbation (rows of ``rho``) onto the ``norm`` ball."""
    if norm == "linf":
        return rho.clamp(-radius, radius)
    flat = rho.flatten(1)
    length = flat.norm(dim=1, keepdim=True)
    factor = torch.clamp(radius / length.clamp(min=1e-12), max=1.0)
    return (flat * factor).view_as(rho)


def _gaussian_kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    half = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-half, half + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of each channel of ``[K, C, H, W]`` (reflect padding)."""
    k = _gaussian_kernel(sigma, maps.dtype, maps.device)
    r = k.numel() // 2
    c = maps.shape[1]
    flat = maps.reshape(-1, 1, *maps.shape[2:])
    mode = "reflect" if min(maps.shape[2:]) > r else "replicate"
    flat = F.pad(flat, (r, r, r, r), mode=mode)
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    return flat.view(-1, c, *maps.shape[2:])


def _check_image(rho: Tensor, name: str) -> None:
    if rho.dim() != 4:
        raise ValueError(
            f"refine={name!r} needs image inputs [N, C, H, W], got per-example shape "
            f"{tuple(rho.shape[1:])}; use refine='none'"
        )


def refine_smooth(rho: Tensor, sigma: float, suppress: float) -> Tensor:
    """Keep the pixels of ``[K, C, H, W]`` perturbations where the smoothed magnitude is strong.

    The per-pixel magnitude ``sum_c |rho_c|`` is blurred (Gaussian, std
    ``sigma`` px, kernel radius ``ceil(3 sigma)``, reflect padding); pixels
    whose blurred magnitude is below the ``suppress`` quantile of their own
    map are set to zero in every channel. The kept pixels keep their raw
    signed values: blurring ``rho`` itself removes the fine structure the
    model reads (see :func:`refine_blur`).
    """
    _check_image(rho, "smooth")
    if suppress <= 0:
        return rho
    mag = rho.abs().sum(dim=1, keepdim=True)
    if sigma > 0:
        mag = _blur(mag, sigma)
    mag = mag[:, 0]
    cut = torch.quantile(mag.flatten(1).float(), suppress, dim=1).to(mag.dtype)
    return rho * (mag >= cut.view(-1, 1, 1)).unsqueeze(1)


def refine_blur(rho: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of every channel of the signed perturbations (smooth to the eye)."""
    _check_image(rho, "blur")
    return _blur(rho, sigma) if sigma > 0 else rho


def magnitude_map(rho: Tensor) -> Tensor:
    """Per-pixel magnitude: ``sum_c |rho_c|`` broadcast back to every channel.

    For non-image perturbations (rank other than ``[K, C, H, W]``) the
    element-wise absolute value.
    """
    if rho.dim() != 4:
        return rho.abs()
    return to_heatmap(rho.abs(), sign="positive").unsqueeze(1).expand_as(rho).contiguous()


def scale_maps(maps: Tensor, scale: str) -> Tensor:
    """Map non-negative maps to a displayable range, per class."""
    if scale == "minmax":
        return minmax_normalise(maps)
    if scale == "max":
        top = maps.flatten(1).max(dim=1).values.clamp(min=1e-12)
        return maps / top.view(-1, *([1] * (maps.dim() - 1)))
    return maps
