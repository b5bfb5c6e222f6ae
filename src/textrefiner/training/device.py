"""Where a run computes and in what precision: the device, fp32 / tf32 / bf16 / fp16 and autocast."""

from __future__ import annotations

import warnings

import torch

from .._errors import RunError


# name -> autocast dtype (None: no autocast); tf32: float32 with TF32 matmuls (CUDA only); auto: see resolve_precision
PRECISIONS = {"auto": None, "fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA, but torch.cuda.is_available() is False on this machine")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on a CUDA device with bf16 (the towers' matmuls at tensor-core speed; the
    cache write, CLS-attention scores, logits and losses stay float32), else ``fp32``.

    GPUs without bf16 (before Ampere) have no TF32 either, so ``auto`` never picks ``tf32``.
    """
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def _check_tf32(precision: str, device: torch.device) -> None:
    """``tf32`` trains only on CUDA: refused elsewhere (a CPU has no TF32 mode), warned on a GPU without it."""
    if precision != "tf32":
        return
    if device.type != "cuda":
        raise RunError(
            f"--precision tf32 needs a CUDA GPU (TF32 is a tensor-core mode of Ampere and later GPUs), but the run is on "
            f"{device.type}; use --precision fp32 (or bf16)"
        )
    if torch.cuda.get_device_capability(device)[0] < 8:
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no TF32 tensor cores: --precision tf32 runs as fp32", stacklevel=2)


def _precision_scope(precision: str, device: torch.device):
    """TF32 matmuls for the length of a ``tf32`` run on CUDA (the global switches come back after); nothing otherwise.

    On another device a ``tf32`` run (``textrefiner eval`` of it on a CPU) computes in plain float32.
    """
    from .._precision import tf32_matmuls

    return tf32_matmuls(enabled=precision == "tf32" and device.type == "cuda")


def _autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
