"""Pillow's image resize as two batched matrix products, equal to Pillow's output bit for bit.

Legend: n images, H x W their (padded) size, h x w the output size, K taps of the filter.

Pillow resizes an 8-bit image in two separable passes. Each output pixel of a pass is a
weighted sum of the input pixels under the filter, with weights (per output position)
    scale = in / out,  s = max(scale, 1),  centre = (i + 0.5) * scale
    w_j   = filter((j - centre + 0.5) / s)   for j in [round(centre - support*s), round(centre + support*s))
    w     = w / sum(w),  then fixed point: trunc(w * 2^22 ± 0.5)
and each pass ends in ``clip((sum + 2^21) >> 22, 0, 255)``, an 8-bit intermediate image.
Written as a matrix ``M (out, in)`` per image and axis, a pass is ``M @ X`` (or ``X @ M.T``),
all images of a batch at once. The products are integers below 2^40 in float64, exact whatever
the summation order, so the device (GPU or CPU) gives Pillow's pixels exactly.

Pillow 13 runs the vertical pass first when the height shrinks by more than twice what the
width shrinks (older versions always start horizontally); :func:`pass_order` finds out which
rule the installed Pillow follows by resizing a probe image, so both are matched.

Only the filters that are polynomials are reproduced (bicubic, bilinear, box: the ones CLIP,
SigLIP and friends use); Lanczos and Hamming need ``sin``/``cos``, whose last bit differs
between C libraries, and nearest takes another code path.
"""

from __future__ import annotations

import functools
import math

import torch
from PIL import Image

from .transforms import _pil_to_uint8

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2 bits


def _bicubic(x: torch.Tensor) -> torch.Tensor:  # Keys' cubic, a = -0.5, as Pillow writes it
    a = -0.5
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))


def _box(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x <= 0.5)).to(x.dtype)


FILTERS = {  # filter, support
    Image.Resampling.BICUBIC: (_bicubic, 2.0),
    Image.Resampling.BILINEAR: (_bilinear, 1.0),
    Image.Resampling.BOX: (_box, 0.5),
}


def coefficients(sizes: torch.Tensor, out: int, resample: Image.Resampling) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's fixed-point resampling weights along one axis, for n input lengths at once.

    Args:
        sizes: (n,) int64, the input lengths.
        out: the output length.
        resample: one of :data:`FILTERS`.

    Returns:
        ``(weights, start)``: (n, out, K) float64 holding integers (Pillow's 22-bit fixed point,
        zero past each window) and (n, out) int64, the first input index of each window.
    """
    kernel, support = FILTERS[resample]
    length = sizes.to(torch.float64)[:, None]  # (n, 1)
    scale = length / out
    filterscale = scale.clamp(min=1.0)
    reach = support * filterscale  # half the window, in input pixels
    taps = int(math.ceil(float(reach.max()))) * 2 + 1 if sizes.numel() else 1  # Pillow's ksize
    centre = (torch.arange(out, dtype=torch.float64) + 0.5) * scale  # (n, out)
    start = torch.trunc(centre - reach + 0.5).long().clamp(min=0)  # C's (int) truncates
    stop = torch.minimum(torch.trunc(centre + reach + 0.5).long(), sizes[:, None])
    j = torch.arange(taps)
    weights = kernel((j + start[..., None] - centre[..., None] + 0.5) * (1.0 / filterscale)[..., None])  # (n, out, K)
    weights = torch.where(j < (stop - start)[..., None], weights, 0.0)
    total = torch.zeros_like(centre)
    for k in range(taps):  # summed left to right, as Pillow sums (another order could change a last bit)
        total = total + weights[..., k]
    weights = torch.where(total[..., None] != 0.0, weights / total[..., None], weights)
    fixed = weights * (1 << PRECISION_BITS)
    return torch.where(weights < 0, torch.trunc(fixed - 0.5), torch.trunc(fixed + 0.5)), start


def dense(weights: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """(n, out, K) weights starting at (n, out) -> the (n, out, length) resampling matrices."""
    offset = torch.arange(length, device=weights.device) - start[..., None]  # (n, out, length)
    inside = (offset >= 0) & (offset < weights.shape[-1])
    picked = weights.gather(-1, offset.clamp(0, weights.shape[-1] - 1))
    return torch.where(inside, picked, 0.0)


def _round(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's end of a pass: ``(acc + 2^21) >> 22`` clipped to 0..255 (values stay float64)."""
    return torch.floor((acc + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def horizontal_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether the installed Pillow starts with the horizontal pass for this resize."""
    if pass_order() == "horizontal":
        return True
    shrink_h, shrink_w = in_hw[0] - out_hw[0], in_hw[1] - out_hw[1]
    return not (shrink_h > 0 and shrink_h > 2 * shrink_w)


def resize(
    pixels: torch.Tensor,
    rows: tuple[torch.Tensor, torch.Tensor],
    cols: tuple[torch.Tensor, torch.Tensor],
    horizontal_first: bool,
) -> torch.Tensor:
    """Resize n (padded) images with precomputed weights, all in one go.

    Args:
        pixels: (n, C, H, W) uint8 (or integer-valued float64), each image in its top-left corner.
        rows: ``coefficients`` of the heights (n, h, Ky) and their starts (n, h).
        cols: ``coefficients`` of the widths (n, w, Kx) and their starts (n, w).
        horizontal_first: the pass order (:func:`horizontal_first`).

    Returns:
        (n, C, h, w) float64 holding Pillow's 8-bit values.
    """
    x = pixels.to(torch.float64)
    down = dense(rows[0].to(x.device), rows[1].to(x.device), x.shape[-2])[:, None]  # (n, 1, h, H)
    across = dense(cols[0].to(x.device), cols[1].to(x.device), x.shape[-1]).transpose(1, 2)[:, None]  # (n, 1, W, w)
    if horizontal_first:
        return _round(down @ _round(x @ across))
    return _round(_round(down @ x) @ across)


@functools.cache
def pass_order() -> str | None:
    """Which pass order the installed Pillow follows, found by resizing a probe image.

    Returns:
        ``"horizontal"`` (always horizontal first, Pillow < 13), ``"shrink"`` (vertical first
        when the height shrinks more than twice the width, Pillow 13), or ``None`` when neither
        reproduces Pillow's pixels (then nothing here may stand in for Pillow).
    """
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (3, 40, 9), dtype=torch.uint8, generator=g)  # the height shrinks, the width grows
    image = Image.frombytes("RGB", (9, 40), probe.permute(1, 2, 0).contiguous().numpy().tobytes())
    wanted = _pil_to_uint8(image.resize((16, 7), resample=Image.Resampling.BICUBIC))
    rows = coefficients(torch.tensor([40]), 7, Image.Resampling.BICUBIC)
    cols = coefficients(torch.tensor([9]), 16, Image.Resampling.BICUBIC)
    for order, first in (("shrink", False), ("horizontal", True)):
        if torch.equal(resize(probe[None], rows, cols, first)[0].to(torch.uint8), wanted):
            return order
    return None


def supported(resample: Image.Resampling) -> str | None:
    """None when batched resizing reproduces Pillow's ``resample`` here, else the reason it cannot."""
    if resample not in FILTERS:
        names = ", ".join(f.name.lower() for f in FILTERS)
        return f"the image processor resamples with {Image.Resampling(resample).name.lower()}; batched resizing reproduces only {names}"
    if pass_order() is None:
        import PIL

        return f"batched resizing does not reproduce the installed Pillow {PIL.__version__}'s pixels"
    return None
