"""Batched resizing equals Pillow's ``Image.resize`` pixel for pixel (data/resample.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from textrefiner.data import resample
from textrefiner.data.transforms import _pil_to_uint8

FILTERS = [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR, Image.Resampling.BOX]


def _pillow(pixels: torch.Tensor, out_hw: tuple[int, int], filt) -> torch.Tensor:
    """(3, H, W) uint8 resized by Pillow -> (3, h, w) uint8."""
    _, h, w = pixels.shape
    image = Image.frombytes("RGB", (w, h), pixels.permute(1, 2, 0).contiguous().numpy().tobytes())
    return _pil_to_uint8(image.resize((out_hw[1], out_hw[0]), resample=filt))


def _ours(images: list[torch.Tensor], out_hw: tuple[int, int], filt) -> list[torch.Tensor]:
    """Several images of different sizes, padded into one batch, resized together."""
    sizes = torch.tensor([im.shape[1:] for im in images])
    padded = torch.zeros((len(images), 3, *sizes.max(0).values.tolist()), dtype=torch.uint8)
    for k, im in enumerate(images):
        padded[k, :, : im.shape[1], : im.shape[2]] = im
    rows = resample.coefficients(sizes[:, 0], out_hw[0], filt)
    cols = resample.coefficients(sizes[:, 1], out_hw[1], filt)
    outs = []
    for k, im in enumerate(images):  # each in the pass order Pillow picks for it
        first = resample.horizontal_first(tuple(im.shape[1:]), out_hw)
        keep = torch.tensor([k])
        out = resample.resize(padded[keep], (rows[0][keep], rows[1][keep]), (cols[0][keep], cols[1][keep]), first)
        outs.append(out[0])
    return outs


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 70), st.integers(1, 70)), min_size=1, max_size=3),
    out_hw=st.tuples(st.integers(1, 48), st.integers(1, 48)),
    filt=st.sampled_from(FILTERS),
    seed=st.integers(0, 2**31 - 1),
    smooth=st.booleans(),
)
def test_resize_equals_pillow(sizes, out_hw, filt, seed, smooth):
    g = torch.Generator().manual_seed(seed)
    images = []
    for h, w in sizes:
        if smooth:  # photo-like gradients, where rounding ties are common
            ramp = torch.linspace(0, 255, w).view(1, 1, w) * torch.linspace(0.2, 1, h).view(1, h, 1)
            images.append((ramp + torch.rand(3, 1, 1, generator=g) * 40).clamp(0, 255).to(torch.uint8).expand(3, h, w).contiguous())
        else:  # noise, the worst case for ringing filters (values clipped at 0 and 255)
            images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    for im, got in zip(images, _ours(images, out_hw, filt), strict=True):
        assert got.dtype == torch.float64
        assert torch.equal(got.to(torch.uint8), _pillow(im, out_hw, filt)), (tuple(im.shape), out_hw, filt)


@pytest.mark.parametrize("filt", FILTERS, ids=lambda f: f.name.lower())
def test_large_downscale_and_upscale_equal_pillow(filt):
    """A 4x downscale (20+ taps per output pixel) and an 8x upscale, both pass orders."""
    g = torch.Generator().manual_seed(0)
    for in_hw, out_hw in [((300, 260), (64, 64)), ((260, 40), (64, 64)), ((9, 12), (72, 96))]:
        im = torch.randint(0, 256, (3, *in_hw), dtype=torch.uint8, generator=g)
        assert torch.equal(_ours([im], out_hw, filt)[0].to(torch.uint8), _pillow(im, out_hw, filt))


def test_the_installed_pillow_is_matched_and_its_pass_order_known():
    import PIL

    major = int(PIL.__version__.split(".")[0])
    assert resample.pass_order() == ("shrink" if major >= 13 else "horizontal")
    # the order matters: the probe's resize differs when the passes are swapped
    im = torch.randint(0, 256, (3, 40, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows, cols = resample.coefficients(torch.tensor([40]), 7, FILTERS[0]), resample.coefficients(torch.tensor([9]), 16, FILTERS[0])
    assert not torch.equal(resample.resize(im[None], rows, cols, True), resample.resize(im[None], rows, cols, False))


def test_weights_are_pillows_fixed_point():
    """Integers that sum to 2^22 (up to rounding) per output pixel, zero past each window."""
    weights, start = resample.coefficients(torch.tensor([10, 37, 500]), 24, Image.Resampling.BICUBIC)
    assert weights.dtype == torch.float64 and torch.equal(weights, weights.round())
    assert (weights.sum(-1) - 2**22).abs().max() <= weights.shape[-1]
    assert start.min() >= 0 and (start[:, 1:] >= start[:, :-1]).all()
    same, _ = resample.coefficients(torch.tensor([24]), 24, Image.Resampling.BICUBIC)  # no resize: the identity
    matrix = resample.dense(same, _, 24)[0]
    assert torch.equal(matrix, torch.eye(24, dtype=torch.float64) * 2**22)


def test_unsupported_filters_are_named():
    for filt in (Image.Resampling.LANCZOS, Image.Resampling.HAMMING, Image.Resampling.NEAREST):
        reason = resample.supported(filt)
        assert reason is not None and filt.name.lower() in reason and "bicubic" in reason
    assert resample.supported(Image.Resampling.BICUBIC) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_resize_equals_cpu_and_pillow():
    g = torch.Generator().manual_seed(1)
    im = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8, generator=g)
    rows, cols = resample.coefficients(torch.tensor([375]), 224, FILTERS[0]), resample.coefficients(torch.tensor([500]), 224, FILTERS[0])
    first = resample.horizontal_first((375, 500), (224, 224))
    cpu = resample.resize(im[None], rows, cols, first)
    cuda = resample.resize(im[None].cuda(), rows, cols, first)
    assert torch.equal(cuda.cpu(), cpu) and torch.equal(cpu[0].to(torch.uint8), _pillow(im, (224, 224), FILTERS[0]))
