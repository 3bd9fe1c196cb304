"""Private building blocks of :class:`InputAgnosticSaliency`.

Kept apart so each piece (sample drawing, the class loss gradient,
projection, refinement) can be tested on its own; the algorithm itself reads
top to bottom in ``input_agnostic.py``.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_global._checks import check_finite_output, check_model_output
from captum_global._maps import NO_SIGNAL_RTOL, minmax_normalise, to_heatmap
from captum_global._seeding import draw_normal, draw_uniform
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError

__all__ = [
    "uniform",
    "gaussian",
    "smooth",
    "make_samplers",
    "class_loss_gradient",
    "optimise_perturbations",
    "project",
    "refine_smooth",
    "refine_blur",
    "apply_refine",
    "magnitude_map",
    "map_of",
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
        return low + (high - low) * draw_uniform((n,) + tuple(shape), generator)

    return draw


def gaussian(mean: float = 0.5, std: float = 0.25) -> Callable[[int, Tuple[int, ...], torch.Generator], Tensor]:
    """Distribution callable: i.i.d. Gaussian noise ``N(mean, std^2)``."""
    if not std > 0:
        raise ValueError(f"gaussian needs std > 0, got {std}")

    def draw(n: int, shape: Tuple[int, ...], generator: torch.Generator) -> Tensor:
        return mean + std * draw_normal((n,) + tuple(shape), generator)

    return draw


# Smooth noise is drawn on a grid this many times coarser than the image
# and upsampled bilinearly: blobs of about the size of an object part.
SMOOTH_CELL = 8


def smooth(low: float = 0.0, high: float = 1.0, cell: int = SMOOTH_CELL):
    """Distribution callable: uniform noise on a ``cell``-times coarser grid, bilinearly upsampled.

    Image-shaped samples ``[n, C, H, W]`` only; other shapes fall back to
    i.i.d. uniform noise.
    """
    if not high > low:
        raise ValueError(f"smooth needs high > low, got low={low}, high={high}")

    def draw(n: int, shape: Tuple[int, ...], generator: torch.Generator) -> Tensor:
        if len(shape) != 3:
            return low + (high - low) * draw_uniform((n,) + tuple(shape), generator)
        c, h, w = shape
        coarse = draw_uniform((n, c, max(1, math.ceil(h / cell)) + 1, max(1, math.ceil(w / cell)) + 1), generator)
        grid = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        return low + (high - low) * grid

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
        elif distribution == "smooth":
            distribution = smooth(low, high)
        else:
            raise InvalidArgumentError(
                f"distribution must be 'smooth', 'uniform', 'gaussian', a callable "
                f"(n, shape, generator) -> Tensor or a Tensor of samples; got {distribution!r}"
            )
    if isinstance(distribution, Tensor):
        distribution = (distribution,)
    if isinstance(distribution, tuple):
        if len(distribution) != len(shapes) or not all(isinstance(d, Tensor) for d in distribution):
            raise InvalidArgumentError(
                f"distribution given as samples must be one tensor per input "
                f"({len(shapes)} expected), got {len(distribution)} item(s)"
            )
        samplers = []
        for pool, shape, ref in zip(distribution, shapes, like):
            if pool.dim() < 1 or tuple(pool.shape[1:]) != tuple(shape) or pool.shape[0] == 0:
                raise InvalidArgumentError(
                    f"distribution samples must have shape [M, {', '.join(map(str, shape))}] "
                    f"with M > 0, got {tuple(pool.shape)}"
                )
            if not pool.is_floating_point():
                raise InvalidArgumentTypeError(f"distribution samples must be floating point, got {pool.dtype}")
            if not torch.isfinite(pool).all():
                raise InvalidArgumentError("distribution samples contain NaN or infinite values")
            samplers.append(_pool_sampler(pool.detach().to(ref.device, ref.dtype)))
        return samplers
    if callable(distribution):
        return [_callable_sampler(distribution, shape, ref) for shape, ref in zip(shapes, like)]
    raise InvalidArgumentTypeError(
        f"distribution must be 'smooth', 'uniform', 'gaussian', a callable or a Tensor, "
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
            raise InvalidArgumentError(
                f"distribution callable must return a Tensor of shape {(n,) + tuple(shape)}, got {got}"
            )
        if not torch.isfinite(out).all():
            raise InvalidArgumentError("distribution callable returned NaN or infinite values")
        return out.to(ref.device, ref.dtype)

    return draw


def class_loss_gradient(
    forward_func: Callable,
    points: Tuple[Tensor, ...],
    targets: Tensor,
    additional_forward_args: Optional[Tuple] = None,
    what: str = "InputAgnosticSaliency",
    where: str = "",
) -> Tuple[Tuple[Tensor, ...], bool]:
    """Gradient of each point's own cross-entropy towards its target class.

    Row ``i`` of the result is ``d CE(f(points_i), targets_i) / d points_i``
    (the loss is summed over rows, so rows do not share a 1/n factor). In
    Captum's terms this is ``-Saliency(log_softmax o f).attribute(points,
    target=targets, abs=False)``: descending it raises class ``targets_i``.

    Returns:
        ``(gradients, varies)``: ``varies`` is False when the model gave the
        same scores (up to float round-off) to every point, i.e. its output
        does not depend on the input there; the gradients are then round-off
        and the caller treats them as zero.
    """
    points = tuple(p.detach().requires_grad_(True) for p in points)
    # the model gets copies in the graph (non-leaves): one that changes its input in place (x.sub_(mean))
    # can, and the points we judge the output's variation by stay as drawn
    args = tuple(p.clone() for p in points)
    args = args if additional_forward_args is None else args + tuple(additional_forward_args)
    with torch.enable_grad():
        logits = check_model_output(forward_func(*args))
        if logits.dim() != 2 or logits.shape[0] != points[0].shape[0]:
            raise InvalidArgumentError(
                f"forward_func must return [batch, classes] scores, one row per input: got shape "
                f"{tuple(logits.shape)} for {points[0].shape[0]} inputs"
            )
        check_finite_output(logits.detach(), what, where)
        if not logits.requires_grad:
            # no autograd path from the points to the output: fine for a model that ignores its
            # input (no signal, zero gradient), an error for one whose output moves with it
            if _output_varies(points, logits.detach()):
                raise InvalidArgumentError(
                    f"forward_func's output changes with its inputs but has no gradient with respect to them "
                    f"(torch.no_grad(), .detach() or argmax inside forward?); {what} follows that gradient"
                )
            return tuple(torch.zeros_like(p) for p in points), False
        loss = F.cross_entropy(logits.float(), targets.to(logits.device), reduction="sum")
        grads = torch.autograd.grad(loss, points, allow_unused=True)
    grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(points, grads))
    grads = tuple(g.detach() for g in grads)
    for g in grads:
        check_finite_output(g, what, f"{where} (gradient)")
    return grads, _output_varies(points, logits.detach())


def _output_varies(points: Tuple[Tensor, ...], scores: Tensor) -> bool:
    """False when distinct points all got the same scores (up to float round-off)."""
    if scores.shape[0] < 2 or not any(bool((p[1:] != p[:1]).any()) for p in points):
        return True  # one point, or identical points: nothing to judge by
    scores = scores.float()
    spread = (scores.amax(dim=0) - scores.amin(dim=0)).max()
    return bool(spread > NO_SIGNAL_RTOL * scores.abs().max().clamp(min=1e-12))


def optimise_perturbations(
    forward_func: Callable,
    samplers: Sequence[Sampler],
    classes: Sequence[int],
    shapes: Sequence[Tuple[int, ...]],
    like: Sequence[Tensor],
    additional_forward_args: Optional[Tuple],
    generator: torch.Generator,
    settings: Dict,
    show_progress: bool = False,
    what: str = "InputAgnosticSaliency",
) -> Tuple[Tensor, ...]:
    """The optimisation loop of :class:`InputAgnosticSaliency`: one ``rho`` per class and input.

    ``settings`` holds the checked ``n_steps``, ``samples_per_step``,
    ``step_size``, ``norm``, ``radius``, ``betas``, ``eps`` and
    ``value_range``. Returns ``[len(classes), *shape]`` per input tensor.
    """
    k, b = len(classes), settings["samples_per_step"]
    betas, eps, norm = settings["betas"], settings["eps"], settings["norm"]
    radius, step, value_range = settings["radius"], settings["step_size"] * settings["radius"], settings["value_range"]
    device = like[0].device
    # The optimiser state is kept in at least float32: in float16, Adam's eps (1e-8) and the squared
    # gradients underflow to 0 and the first step divides by zero. The model sees its own dtype.
    rho = [torch.zeros((k,) + tuple(s), dtype=torch.promote_types(x.dtype, torch.float32), device=device)
           for s, x in zip(shapes, like)]
    m1 = [torch.zeros_like(r) for r in rho]
    m2 = [torch.zeros_like(r) for r in rho]
    targets = torch.tensor(list(classes), device=device).repeat_interleave(b)
    n_steps = settings["n_steps"]
    steps = range(1, n_steps + 1)
    if show_progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=what, total=n_steps)
    for t in steps:
        # The same samples serve every class (common random numbers), so a
        # class's map does not depend on which other classes are present.
        xs = [draw(b, generator) for draw in samplers]
        raw = [(x.unsqueeze(0) + r.unsqueeze(1)).to(ref.dtype) for x, r, ref in zip(xs, rho, like)]  # [k, b, ...]
        if value_range is None:
            points, inside = raw, [torch.ones_like(p) for p in raw]
        else:
            lo, hi = value_range
            points = [p.clamp(lo, hi) for p in raw]
            # d clip / d rho: 1 inside the range, 0 where clipped.
            inside = [((p >= lo) & (p <= hi)).to(p.dtype) for p in raw]
        grads, varies = class_loss_gradient(
            forward_func, tuple(p.reshape((k * b,) + p.shape[2:]) for p in points), targets,
            additional_forward_args, what, f"step {t} of {n_steps}",
        )
        if not varies:
            # No signal: Adam's normalisation would turn round-off into full steps.
            grads = tuple(torch.zeros_like(g) for g in grads)
        for j, (g, ins) in enumerate(zip(grads, inside)):
            g = (g.view_as(ins) * ins).to(m1[j].dtype).mean(dim=1)
            m1[j].mul_(betas[0]).add_(g, alpha=1 - betas[0])
            m2[j].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
            d = (m1[j] / (1 - betas[0] ** t)) / ((m2[j] / (1 - betas[1] ** t)).sqrt() + eps)
            if norm == "l2":
                flat = d.flatten(1)
                d = (flat / flat.norm(dim=1, keepdim=True).clamp(min=1e-12)).view_as(d)
            rho[j] = project(rho[j] - step * d, norm, radius)
    return tuple(r.to(x.dtype) for r, x in zip(rho, like))


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
        raise InvalidArgumentError(
            f"refine={name!r} needs image inputs [N, C, H, W], got per-example shape "
            f"{tuple(rho.shape[1:])}; use refine='none'"
        )


def _kept_pixels(rho: Tensor, sigma: float, suppress: float) -> Tuple[Tensor, Tensor]:
    """``(blurred magnitude [K, H, W], kept [K, H, W] bool)`` of ``[K, C, H, W]`` perturbations."""
    mag = rho.abs().sum(dim=1, keepdim=True)
    if sigma > 0:
        mag = _blur(mag, sigma)
    mag = mag[:, 0]
    if suppress <= 0:
        return mag, torch.ones_like(mag, dtype=torch.bool)
    cut = torch.quantile(mag.flatten(1).float(), suppress, dim=1).to(mag.dtype)
    return mag, mag >= cut.view(-1, 1, 1)


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
    _, kept = _kept_pixels(rho, sigma, suppress)
    return rho * kept.unsqueeze(1)


def refine_blur(rho: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of every channel of the signed perturbations (smooth to the eye)."""
    _check_image(rho, "blur")
    return _blur(rho, sigma) if sigma > 0 else rho


def apply_refine(rho: Tensor, refine, smooth_sigma: float, suppress: float) -> Tensor:
    """The signed refined perturbations (``refine``: "smooth", "blur", "none" or a callable)."""
    if callable(refine):
        out = refine(rho)
        if not isinstance(out, Tensor) or out.shape != rho.shape:
            raise InvalidArgumentError(f"refine callable must return a Tensor of shape {tuple(rho.shape)}")
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteOutputError("refine callable returned non-finite values (NaN or inf) for the "
                                       "perturbations; a map built from them would be meaningless")
        return out
    if refine == "smooth":
        return refine_smooth(rho, smooth_sigma, suppress)
    if refine == "blur":
        return refine_blur(rho, smooth_sigma)
    return rho


def map_of(rho: Tensor, refine, smooth_sigma: float, suppress: float) -> Tensor:
    """The non-negative, unscaled map of ``[K, *shape]`` perturbations, input-shaped.

    For ``refine="smooth"`` it is the blurred per-pixel magnitude on the kept
    pixels: the blur that decides *where* also decides how bright, so the map
    shows regions rather than the pixel-level sign noise of the optimiser.
    Otherwise it is the per-pixel magnitude of the refined perturbation.
    """
    if isinstance(refine, str) and refine == "smooth":
        _check_image(rho, "smooth")
        mag, kept = _kept_pixels(rho, smooth_sigma, suppress)
        return (mag * kept).unsqueeze(1).expand_as(rho).contiguous()
    return magnitude_map(apply_refine(rho, refine, smooth_sigma, suppress))


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
        top = maps.flatten(1).max(dim=1).values.clamp(min=torch.finfo(maps.dtype).tiny)  # relative: tiny maps too
        return maps / top.view(-1, *([1] * (maps.dim() - 1)))
    return maps
