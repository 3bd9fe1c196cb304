"""How the synthetic inputs are parametrised while optimised (private helper).

- ``"pixels"``: the inputs themselves.
- ``"spectrum"``: images are stored as their 2-D Fourier coefficients scaled
  by ``1 / frequency`` (the decorrelated parametrisation of feature
  visualisation, Olah, Mordvintsev & Schubert, Distill 2017). A step of the
  optimiser moves low frequencies more than high ones, so shapes form in
  tens of steps instead of pixel noise; any image can still be reached (the
  map is linear and invertible). Only for inputs with two trailing spatial
  dimensions.

Both clamp into ``value_range`` after every step (for the spectrum: decode,
clamp, encode; a projection, since the map is invertible).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from captum_global._seeding import draw_uniform
from captum_global.errors import InvalidArgumentError

__all__ = ["PARAMETRIZATIONS", "Parametrization"]

PARAMETRIZATIONS = ("pixels", "spectrum")


class Parametrization:
    """``encode`` inputs into the optimised tensor, ``decode`` it back, ``project`` it in place."""

    def __init__(self, kind: str, shape: Tuple[int, ...], value_range: Optional[Tuple[float, float]],
                 device: torch.device, dtype: torch.dtype) -> None:
        self.kind = kind
        self.value_range = value_range
        if kind == "spectrum":
            if len(shape) < 2 or min(shape[-2:]) < 2:
                raise InvalidArgumentError(
                    f"parametrization='spectrum' needs inputs with two spatial dimensions, got shape {tuple(shape)}")
            h, w = shape[-2:]
            fy = torch.fft.fftfreq(h, device=device, dtype=dtype).view(-1, 1)
            fx = torch.fft.rfftfreq(w, device=device, dtype=dtype).view(1, -1)
            freq = torch.sqrt(fy ** 2 + fx ** 2).clamp_min(1.0 / max(h, w))
            self.scale = (1.0 / freq) / max(h, w)  # 1 at the lowest frequencies, 1/(f * size) above
            self.size = (h, w)

    def noise(self, shape: Tuple[int, ...], generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """Uniform noise in [-1, 1]: white for pixels; for the spectrum, uniform
        coefficients decoded (1/f "pink" noise), rescaled to a maximum of 1."""
        white = 2 * draw_uniform(shape, generator).to(dtype) - 1
        if self.kind == "pixels":
            return white
        coefficients = 2 * draw_uniform(shape[:-1] + (self.scale.shape[-1], 2), generator).to(dtype) - 1
        coloured = self.decode(coefficients.to(self.scale.device)).cpu()
        return coloured / coloured.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *[1] * (coloured.dim() - 1))

    def encode(self, x: Tensor) -> Tensor:
        if self.kind == "pixels":
            return x.clone()
        spectrum = torch.fft.rfft2(x, norm="ortho") / self.scale
        return torch.view_as_real(spectrum).contiguous()

    def decode(self, z: Tensor) -> Tensor:
        if self.kind == "pixels":
            return z
        return torch.fft.irfft2(torch.view_as_complex(z) * self.scale, s=self.size, norm="ortho")

    @torch.no_grad()
    def result(self, z: Tensor, start: Tensor, steps: int) -> Tensor:
        """The inputs ``z`` stands for after ``steps`` optimisation steps from ``start``: ``start`` itself
        when no step was taken, and inside ``value_range`` (decoding the spectrum rounds by about 1e-7,
        which would step just outside the range :meth:`project` clamped it to)."""
        if steps == 0:
            return start.detach().clone()
        x = self.decode(z).detach()
        return x.clamp(*self.value_range) if self.value_range is not None else x

    @torch.no_grad()
    def project(self, z: Tensor) -> None:
        if self.value_range is None:
            return
        if self.kind == "pixels":
            z.clamp_(*self.value_range)
        else:
            z.copy_(self.encode(self.decode(z).clamp(*self.value_range)))
