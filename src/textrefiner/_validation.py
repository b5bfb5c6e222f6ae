"""Checks on user tensors: say what was expected and what came, before anything changes."""

from __future__ import annotations

import torch


def check_tensor(
    x: object,
    name: str,
    *,
    shape: str,
    ndim: int | None = None,
    min_ndim: int = 1,
    width: int | None = None,
    device: torch.device | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a floating tensor's type, rank, last width, device and values.

    Args:
        x: the object the user passed.
        name: its argument name, for the message.
        shape: the expected shape in words, e.g. ``"(C, 512)"``.
        ndim: exact rank required, or None.
        min_ndim: smallest rank accepted when ``ndim`` is None.
        width: required size of the last dim, or None.
        device: required device, or None.
        finite: refuse NaN and Inf.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank, width, device, empty, or non-finite values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected `{name}` to be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected `{name}` to be a floating-point tensor of shape {shape}, got dtype {x.dtype}")
    if (ndim is not None and x.ndim != ndim) or x.ndim < min_ndim:
        raise ValueError(f"expected `{name}` of shape {shape}, got {tuple(x.shape)}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"expected `{name}` of width {width} (shape {shape}), got width {x.shape[-1]} {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"expected a non-empty `{name}` of shape {shape}, got an empty batch {tuple(x.shape)}")
    if device is not None and x.device != device:
        hint = f"move it there with `{name}.to('{device}')`, or the refiner with `refiner.to('{x.device}')`"
        if x.device.type == "meta":  # shapes without values: a model built on meta whose weights were never loaded
            hint = f"a meta tensor has shapes but no values (weights never loaded?): load them, then pass `{name}` on {device}"
        raise ValueError(f"expected `{name}` on {device} (where the refiner is), got a tensor on {x.device}: {hint}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or Inf; refusing it so the cache stays as it was")
    return x
