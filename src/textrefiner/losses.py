"""TextRefiner's auxiliary losses (docs/method.md §6): semantic (local alignment) and regularisation.

Legend: B images, N patches (N+1 tokens with CLS), k top-attention patches, C classes, d width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_tokens(aligned_tokens: torch.Tensor, cls_attention: torch.Tensor, top_k: int) -> torch.Tensor:
    """Pick the k+2 tokens of each image the semantic loss scores.

    Args:
        aligned_tokens: (B, N+1, d) aligned tokens, CLS (or its stand-in) first.
        cls_attention: (B, N) CLS-to-patch attention.
        top_k: k, how many patches with the highest attention to keep.

    Returns:
        (B, k+2, d): the CLS token, the k most attended patches (highest first) and the mean of
        all N+1 tokens. Not normalised, as in the reference release.

    Raises:
        ValueError: ``top_k`` is more than the N patches (the reference's ``topk`` would fail too).
    """
    n = cls_attention.shape[1]
    if top_k > n:
        raise ValueError(
            f"top_k={top_k} is more than the {n} patches of these images (tokens (B, {n + 1}, d), CLS first): "
            f"set top_k to at most {n}, or use larger images or smaller patches"
        )
    top = cls_attention.topk(top_k, dim=1).indices + 1  # (B, k) token indices, skipping CLS
    patches = aligned_tokens.gather(1, top[..., None].expand(-1, -1, aligned_tokens.shape[-1]))  # (B, k, d)
    mean = aligned_tokens.mean(dim=1, keepdim=True)  # (B, 1, d)
    return torch.cat([aligned_tokens[:, :1], patches, mean], dim=1)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """PromptKD's distillation loss: ``KL(teacher || student)`` at temperature T, times T^2.

    Normalised as PromptKD normalises it: summed, then divided by the number of logits.
    """
    t = temperature
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)
    student_logits, teacher_logits = student_logits.to(dtype), teacher_logits.to(dtype)
    log_student = F.log_softmax(student_logits / t, dim=-1)
    teacher = F.softmax(teacher_logits / t, dim=-1)
    return F.kl_div(log_student, teacher, reduction="sum") * (t * t) / student_logits.numel()


def semantic_loss(
    selected: torch.Tensor,
    text_emb: torch.Tensor,
    target: torch.Tensor,
    *,
    logit_scale: torch.Tensor | float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Score the selected tokens against the unrefined class text and compare with the target.

    Args:
        selected: (B, k+2, d) tokens from :func:`select_tokens`.
        text_emb: (C, d) unrefined class text embeddings.
        target: (B,) integer labels (cross-entropy) or (B, C) teacher logits (KL, PromptKD).
        logit_scale: the model's logit scale (already exponentiated).
        temperature: KL temperature, used only with teacher logits.

    Returns:
        Scalar loss averaged over all B*(k+2) selected tokens.
    """
    dtype = torch.promote_types(torch.promote_types(selected.dtype, text_emb.dtype), torch.float32)
    with torch.autocast(selected.device.type, enabled=False):  # the logits and the KL in float32, as the host's
        logits = logit_scale * selected.to(dtype) @ text_emb.T.to(dtype)  # (B, k+2, C)
        flat = logits.reshape(-1, logits.shape[-1])  # (B*(k+2), C)
        repeats = selected.shape[1]
        if target.is_floating_point():
            return kl_to_teacher(flat, target.to(dtype).repeat_interleave(repeats, dim=0), temperature)
        return F.cross_entropy(flat, target.repeat_interleave(repeats, dim=0))


def regularization_loss(refined: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """``mean |norm(E_hat) - E|``: keeps the refined classes near the text they came from.

    Computed in float32 (float64 for float64 inputs) with autocast off, as the other losses:
    under bf16 autocast the refined classes come out in bf16, whose 8-bit mantissa would round
    the small differences this term measures.
    """
    dtype = torch.promote_types(torch.promote_types(refined.dtype, text_emb.dtype), torch.float32)
    with torch.autocast(refined.device.type, enabled=False):
        return (F.normalize(refined.to(dtype), dim=-1) - text_emb.to(dtype)).abs().mean()
