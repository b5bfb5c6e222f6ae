"""How a run's frozen towers are stored, and TF32 matmuls for the length of a run.

Under bf16/fp16 autocast every ``linear``/``conv`` casts its float32 weight to the low dtype at
every call: autocast's cast cache keeps only leaf tensors that require grad, and the frozen
CLIP's weights do not. :func:`store_frozen` casts those weights once instead. It casts exactly
what autocast would cast (the weights and biases of Linear and Conv layers), so the step is
bit-identical to autocast over float32 weights (``tests/test_dtypes.py``): LayerNorm, the
embeddings and the logit scale stay float32, as autocast computes with them in float32
(a bf16 LayerNorm weight would be cast back up at every use, and a bf16 logit scale of
ln 100 would round to exp(4.594) = 98.9).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

# the layers whose weights autocast casts to its low dtype at every call
MATMUL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def store_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Store a frozen model for autocast in ``dtype``: float32, with its Linear/Conv weights in ``dtype``.

    Trainable parameters (``requires_grad``) are never touched. A model loaded in bf16/fp16 (a
    checkpoint saved so) is brought back to float32 first, so a run does not depend on the
    dtype its checkpoint was saved in. ``dtype=torch.float32``: everything float32.

    Only for a model run under ``torch.autocast(dtype=dtype)`` afterwards (or in float32): a
    Linear with bf16 weights called on float32 inputs outside autocast raises.
    """
    for module in model.modules():
        low = isinstance(module, MATMUL_LAYERS)
        for p in module.parameters(recurse=False):
            if p.requires_grad or not p.is_floating_point():
                continue
            want = dtype if low else torch.float32
            if p.dtype != want:
                p.data = p.data.to(want)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point() and b.dtype != torch.float32:
                setattr(module, name, b.to(torch.float32))


def stored_for_autocast(model: nn.Module) -> torch.dtype | None:
    """The low dtype :func:`store_frozen` stored ``model`` for (bf16/fp16 weights beside float32 ones), else None.

    Such a model runs only under ``torch.autocast`` of that dtype; a model wholly in one dtype
    runs as it is.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    low = dtypes & {torch.bfloat16, torch.float16}
    return low.pop() if len(low) == 1 and torch.float32 in dtypes else None


@contextlib.contextmanager
def tf32_matmuls(enabled: bool = True) -> Iterator[None]:
    """Float32 matmuls and convolutions on TF32 tensor cores (Ampere and later) within the block.

    The switches are process-global; the previous settings come back when the block ends.
    Matmuls go through ``torch.set_float32_matmul_precision("high")``: in torch 2.13 it sets
    the new ``torch.backends.cuda.matmul.fp32_precision`` ("tf32") *and* the legacy flag,
    whereas setting ``fp32_precision`` alone makes ``torch.get_float32_matmul_precision()``
    raise (mixed legacy/new state), and inductor calls that when it autotunes
    (``--compile-mode max-autotune``). Convolutions: ``torch.backends.cudnn.conv.fp32_precision``
    (already "tf32" by default in torch).
    """
    if not enabled:
        yield
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    previous, previous_conv = matmul.fp32_precision, conv.fp32_precision
    try:
        legacy: str | None = torch.get_float32_matmul_precision()
    except RuntimeError:  # the caller already mixed the legacy and new switches
        legacy = None
    torch.set_float32_matmul_precision("high")
    if previous_conv != "tf32":
        conv.fp32_precision = "tf32"
    try:
        yield
    finally:
        if legacy is not None:  # both readers work again, as before
            torch.set_float32_matmul_precision(legacy)
        if matmul.fp32_precision != previous and (legacy is None or previous != "tf32"):
            matmul.fp32_precision = previous  # e.g. "none" (inherit), which "highest" writes as "ieee"
        if conv.fp32_precision != previous_conv:
            conv.fp32_precision = previous_conv
