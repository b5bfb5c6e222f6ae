"""Image preprocessing read from the model's own Hugging Face image processor (PIL + torch only).

Evaluation reproduces ``CLIPImageProcessor`` step for step — RGB (transparency onto white),
resize (shortest edge to ``size``, long edge ``int(size·long/short)``, or to height × width),
centre crop (offset ``(H-h)//2``, zero padding when too small), ``× rescale_factor``,
``(x - mean) / std`` — so a tensor from here equals the processor's ``pixel_values``.

Training is Dassl/CoOp's ``random_resized_crop`` + ``random_flip`` + ``normalize``:
torchvision's ``RandomResizedCrop`` sampling rule (scale (0.08, 1), ratio (3/4, 4/3), 10
tries, then a centre crop), resized with the processor's resampling filter to the crop size,
a horizontal flip with probability 0.5, then the same rescale and normalisation. Random
numbers come from a ``torch.Generator`` passed per call, or from torch's default RNG (which
DataLoader workers seed from the loader's generator). torchvision is not needed.

Shapes: ``(3, H, W)`` float32 per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

_RESAMPLE_NAMES = {
    "nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


def load_image(path: str) -> Image.Image:
    """Open an image as RGB, compositing any transparency onto white (as HF processors do).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: the file is not a readable image, or is over Pillow's pixel limit (named,
            with how to raise it).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except Image.DecompressionBombError as err:  # not an OSError
        from ._pixels import bomb_error

        raise bomb_error(path, err) from None
    except (OSError, Image.UnidentifiedImageError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor, without numpy."""
    w, h = img.size
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)


@dataclass(frozen=True)
class _Normalise:
    rescale_factor: float | None  # None: no rescale
    mean: tuple[float, ...] | None  # None: no normalisation
    std: tuple[float, ...] | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (3, H, W) uint8 -> float32
        x = x.to(torch.float64) * self.rescale_factor if self.rescale_factor is not None else x.to(torch.float64)
        x = x.to(torch.float32)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        return x


@dataclass(frozen=True)
class EvalTransform:
    """Deterministic preprocessing equal to the HF processor's (resize, centre crop, normalise).

    Attributes:
        shortest_edge: resize the short side to this (``None``: use ``resize_hw`` or no resize).
        resize_hw: resize to exactly ``(height, width)`` (``None``: use ``shortest_edge``).
        crop_hw: centre-crop size ``(height, width)``, or ``None`` for no crop.
        resample: PIL resampling filter.
        normalise: rescale factor, mean and std.
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    resample: Image.Resampling
    normalise: _Normalise
    random: bool = False

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = to_rgb(image)
        if self.shortest_edge is not None:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.shortest_edge * long / short)
            size = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)  # (W, H) for PIL
            image = image.resize(size, resample=self.resample)
        elif self.resize_hw is not None:
            image = image.resize((self.resize_hw[1], self.resize_hw[0]), resample=self.resample)
        x = _pil_to_uint8(image)  # (3, H, W)
        if self.crop_hw is not None:
            x = center_crop(x, self.crop_hw)
        return self.normalise(x)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """HF's ``center_crop`` on a (C, H, W) tensor: offset ``(H-h)//2``; zero-pad an image that is too small."""
    _, height, width = x.shape
    ch, cw = size
    top, left = (height - ch) // 2, (width - cw) // 2
    if top >= 0 and left >= 0:
        return x[:, top : top + ch, left : left + cw]
    new_h, new_w = max(ch, height), max(cw, width)
    padded = x.new_zeros((x.shape[0], new_h, new_w))
    top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[:, top_pad : top_pad + height, left_pad : left_pad + width] = x
    top, left = top + top_pad, left + left_pad
    return padded[:, max(0, top) : min(new_h, top + ch), max(0, left) : min(new_w, left + cw)]


@dataclass(frozen=True)
class TrainTransform:
    """Random-resized-crop + horizontal flip + normalisation (Dassl/CoOp training augmentation).

    Attributes:
        size: output ``(height, width)``.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height), sampled log-uniformly.
        flip_p: probability of a horizontal flip.
        resample: PIL resampling filter.
        normalise: rescale factor, mean and std.
    """

    size: tuple[int, int]
    resample: Image.Resampling
    normalise: _Normalise
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    random: bool = True

    def crop_box(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """torchvision's ``RandomResizedCrop.get_params``: returns ``(top, left, h, w)``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return top, left, h, w
        in_ratio = width / height  # fallback: the largest centre crop within the ratio range
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def draw(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[tuple[int, int, int, int], bool]:
        """One image's random numbers, in their order: the crop ``(top, left, h, w)``, then the flip."""
        box = self.crop_box(width, height, generator=generator)
        return box, torch.rand(1, generator=generator).item() < self.flip_p

    def augment(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Crop, resize and flip an RGB image: (3, h, w) uint8, not yet normalised."""
        (top, left, h, w), flip = self.draw(*image.size, generator=generator)
        image = image.crop((left, top, left + w, top + h)).resize((self.size[1], self.size[0]), resample=self.resample)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _pil_to_uint8(image)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalise(self.augment(to_rgb(image), generator))


def _field(size: Any, key: str) -> Any:
    """Read ``key`` from a size given as a dict or as an object with attributes (HF ``SizeDict``)."""
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def _resample(value: Any) -> Image.Resampling:
    if value is None:
        return Image.Resampling.BILINEAR  # HF's default when unset
    if isinstance(value, int):
        return Image.Resampling(int(value))
    name = str(getattr(value, "value", value)).lower().split(".")[-1]  # torchvision InterpolationMode, or a name
    if name in _RESAMPLE_NAMES:
        return _RESAMPLE_NAMES[name]
    raise ValueError(f"expected a PIL resampling filter or one of {sorted(_RESAMPLE_NAMES)}, got {value!r}")


def _pair(value: Any) -> tuple[int, int] | None:
    h, w = _field(value, "height"), _field(value, "width")
    if h is not None and w is not None:
        return int(h), int(w)
    return None


def transforms_from_processor(processor: Any, train: bool) -> EvalTransform | TrainTransform:
    """The preprocessing of a Hugging Face image processor, as a PIL-image -> tensor callable.

    Reads ``size`` (``{"shortest_edge": n}`` or ``{"height", "width"}``, as dict or ``SizeDict``),
    ``crop_size``, ``do_resize``, ``do_center_crop``, ``resample``, ``do_rescale``,
    ``rescale_factor``, ``do_normalize``, ``image_mean`` and ``image_std``.

    Args:
        processor: e.g. ``CLIPImageProcessor``/``CLIPImageProcessorPil`` (or a ``CLIPProcessor``,
            whose ``image_processor`` is used).
        train: ``True`` for random-resized-crop + flip at the output size (the crop size, or
            the resize size when the processor does not crop), ``False`` for the processor's
            own deterministic pipeline.

    Returns:
        A callable ``transform(image, generator=None) -> (3, H, W) float32 tensor``; its
        ``random`` attribute says whether it draws random numbers.

    Raises:
        ValueError: a size the transform cannot read (e.g. only ``longest_edge``).
    """
    processor = getattr(processor, "image_processor", processor)
    size = getattr(processor, "size", None)
    if isinstance(size, int):  # old-style int size: the shortest edge
        size = {"shortest_edge": size}
    crop = getattr(processor, "crop_size", None)
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_resize = bool(getattr(processor, "do_resize", True))
    do_crop = bool(getattr(processor, "do_center_crop", False)) and crop is not None
    shortest = _field(size, "shortest_edge") if do_resize else None
    if shortest is not None and _field(size, "longest_edge") is not None:
        raise ValueError(f"expected a size with only 'shortest_edge' or 'height'/'width', got {size}")
    resize_hw = _pair(size) if do_resize and shortest is None else None
    if do_resize and shortest is None and resize_hw is None:
        raise ValueError(f"expected the processor's size as {{'shortest_edge': n}} or {{'height', 'width'}}, got {size}")
    crop_hw = _pair(crop) if do_crop else None
    if do_crop and crop_hw is None:
        raise ValueError(f"expected the processor's crop_size as {{'height', 'width'}}, got {crop}")

    mean = getattr(processor, "image_mean", None)
    std = getattr(processor, "image_std", None)
    do_norm = bool(getattr(processor, "do_normalize", True)) and mean is not None and std is not None
    normalise = _Normalise(
        rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255)) if getattr(processor, "do_rescale", True) else None,
        mean=_three(mean, "image_mean") if do_norm else None,
        std=_three(std, "image_std") if do_norm else None,
    )
    resample = _resample(getattr(processor, "resample", None))
    if not train:
        return EvalTransform(int(shortest) if shortest is not None else None, resize_hw, crop_hw, resample, normalise)
    out = crop_hw or resize_hw or ((int(shortest), int(shortest)) if shortest is not None else None)
    if out is None:
        raise ValueError("the processor neither resizes nor crops; cannot tell the training image size")
    return TrainTransform(out, resample, normalise)


def _three(values: float | Sequence[float], what: str) -> tuple[float, ...]:
    vals = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(vals) != 3:
        raise ValueError(f"expected {what} with 3 values (RGB), got {values!r}")
    return vals
