"""Decompression bombs: an image whose header claims more pixels than Pillow's limit is refused,
by its header alone, before any work, naming the image, the limit and how to raise it.

The limit is Pillow's, ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 unless changed; ``None`` turns
the check off). Pillow itself only warns up to twice that and raises a bare
``DecompressionBombError`` beyond; here both are one clear error. ``textrefiner train`` /
``eval`` / ``inspect --max-image-pixels N`` set the limit for that command.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from PIL import Image

RAISE_IT = "if the image is genuine, raise the limit with --max-image-pixels N (in Python: PIL.Image.MAX_IMAGE_PIXELS = N), or remove it"


def too_many_pixels(path: str, pixels: int, size: tuple[int, int] | None = None) -> ValueError:
    """The error for an image of ``pixels`` pixels over the limit."""
    shape = f"{size[0]}x{size[1]} = " if size else ""
    return ValueError(
        f"image {path} is {shape}{pixels:,} pixels, more than the limit of {Image.MAX_IMAGE_PIXELS:,} "
        f"(PIL.Image.MAX_IMAGE_PIXELS, Pillow's guard against decompression bombs): {RAISE_IT}"
    )


def bomb_error(path: str, err: Image.DecompressionBombError) -> ValueError:
    """Pillow's ``DecompressionBombError`` for ``path`` as :func:`too_many_pixels`' error."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return too_many_pixels(path, int(found.group(1))) if found else ValueError(f"image {path}: {err}; {RAISE_IT}")


def check_image_sizes(paths: Iterable[str]) -> None:
    """Read each image's header (not its pixels) and refuse the first over ``PIL.Image.MAX_IMAGE_PIXELS``.

    Files that cannot be opened are left for the decoder to name.

    Raises:
        ValueError: an image over the limit, named with its size, the limit and how to raise it.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    width, height = image.size
        except Image.DecompressionBombError as err:
            raise bomb_error(path, err) from None
        except (OSError, SyntaxError, ValueError):
            continue
        if width * height > limit:
            raise too_many_pixels(path, width * height, (width, height))


def set_pixel_limit(pixels: int) -> None:
    """``--max-image-pixels``: set ``PIL.Image.MAX_IMAGE_PIXELS`` for this process (0: no limit)."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
        raise ValueError(f"--max-image-pixels should be a non-negative int (0: no limit), got {pixels!r}")
    Image.MAX_IMAGE_PIXELS = pixels or None
