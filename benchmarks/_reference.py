"""A re-creation of how the authors' reference release computes a CoOp + TextRefiner step.

This is NOT the authors' code: it is written here from the paper and the description of the
release, to time the *approach* side by side with textrefiner's. What it does differently:

    vision   the modified CLIP returns every layer's tokens and every layer's attention
             weights (eager attention: ``output_hidden_states=True, output_attentions=True``);
             every layer's tokens go through the post-layer-norm and the visual projection,
             although only the last layer's are used
    text     the CoOp prompts are always the full 77 tokens long
    cache    the write loops over the cache slots in Python (a host sync per slot on a GPU)

Legend: B images, N patches, C classes, M slots, L = 77 text positions, w widths, d = 512.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_LENGTH = 77


@torch.no_grad()
def loop_write(cache: torch.Tensor, tokens: torch.Tensor, momentum: float) -> torch.Tensor:
    """docs/method.md §3 written slot by slot, the release's way; returns the new (M, d) cache."""
    v = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)  # (T, d)
    scores = v @ cache.T  # (T, M)
    weights = torch.softmax(scores, dim=0)  # softmax over tokens
    weights = weights / weights.max(dim=0, keepdim=True).values  # / max over all tokens
    slot = scores.argmax(dim=1)  # (T,)
    new = cache.clone()
    for j in range(cache.shape[0]):
        members = (slot == j).nonzero().squeeze(1)
        if members.numel() == 0:  # host sync on GPU
            continue
        new[j] = momentum * cache[j] + (1 - momentum) * (weights[members, j, None] * v[members]).sum(0)
    return F.normalize(new, dim=-1)


class ReferencePromptLearner(nn.Module):
    """CoOp's shared context, release style: prompts of the full 77 tokens, ctx from "a photo of a"."""

    def __init__(self, model: nn.Module, tokenizer: Any, classnames: list[str], ctx_init: str = "a photo of a") -> None:
        super().__init__()
        text = model.text_model
        n_ctx = len(ctx_init.split())
        device = text.embeddings.token_embedding.weight.device
        batch = tokenizer([f"{ctx_init} {c}." for c in classnames], padding="max_length", max_length=CONTEXT_LENGTH, return_tensors="pt")
        ids = batch["input_ids"].to(device)  # (C, 77)
        with torch.no_grad():
            embedding = text.embeddings.token_embedding(ids)  # (C, 77, w)
        self.ctx = nn.Parameter(embedding[0, 1 : 1 + n_ctx].clone())  # (n_ctx, w)
        self.register_buffer("prefix", embedding[:, :1].clone())  # SOT
        self.register_buffer("suffix", embedding[:, 1 + n_ctx :].clone())  # class, '.', EOT, padding
        self.register_buffer("eot", (ids == model.config.text_config.eos_token_id).int().argmax(-1))  # (C,)

    def forward(self) -> torch.Tensor:
        c = self.prefix.shape[0]
        return torch.cat([self.prefix, self.ctx.expand(c, -1, -1), self.suffix], dim=1)  # (C, 77, w)


def reference_text_features(model: nn.Module, prompts: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The release's TextEncoder: prompts + positions -> causal transformer -> LN -> EOT -> projection."""
    text = model.text_model
    c, length, _ = prompts.shape
    x = prompts + text.embeddings.position_embedding.weight[:length]  # (C, 77, w)
    causal = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu(1)  # (77, 77)
    for layer in text.encoder.layers:
        x = layer(x, causal[None, None].expand(c, 1, length, length))
        x = x[0] if isinstance(x, tuple) else x
    x = text.final_layer_norm(x)
    return model.text_projection(x[torch.arange(c, device=x.device), eot])  # (C, d)


class ReferenceStep:
    """One CoOp + TextRefiner training step, computed the way the reference release does.

    ``model`` must use eager attention (the release needs every layer's attention weights).
    The learnable parts are a :class:`ReferencePromptLearner` and the refiner's alignment MLP and
    fuse layer (taken from ``refiner``, a :class:`textrefiner.TextRefiner` used only as a holder of
    parameters and the cache buffer; none of its methods run here).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, classnames: list[str], refiner: nn.Module, *, lr: float = 2e-3) -> None:
        self.model = model
        self.learner = ReferencePromptLearner(model, tokenizer, classnames)
        self.refiner = refiner.train()
        cfg = refiner.config
        self.alpha, self.momentum, self.top_k = cfg.alpha, cfg.momentum, cfg.top_k
        self.w_sem, self.w_reg = cfg.semantic_weight, cfg.regularization_weight
        params = list(self.learner.parameters()) + list(refiner.parameters())
        self.optimizer = torch.optim.SGD(params, lr=lr)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        model, refiner = self.model, self.refiner
        vision = model.vision_model
        scale = model.logit_scale.exp()
        # Vision: every layer's tokens and attention weights.
        with torch.no_grad():
            out = vision(pixel_values=pixel_values, output_hidden_states=True, output_attentions=True)
            layer_tokens = [model.visual_projection(vision.post_layernorm(h)) for h in out.hidden_states[1:]]  # L x (B, N+1, d)
            layer_attention = [a.mean(dim=1)[:, 0, 1:] for a in out.attentions]  # L x (B, N)
        local, cls_attention = layer_tokens[-1], layer_attention[-1]
        image = F.normalize(local[:, 0], dim=-1)  # (B, d)
        # Text: full 77-token prompts.
        text = F.normalize(reference_text_features(model, self.learner(), self.learner.eot), dim=-1)  # (C, d)
        # Refiner: align, read the cache as it is, fuse.
        aligned = refiner.alignment(local)  # (B, N+1, d)
        cache = refiner.cache
        weights = torch.softmax(text @ cache.T, dim=-1)  # (C, M)
        refined = self.alpha * refiner.fuse(torch.cat([text, weights @ cache], dim=-1)) + text  # (C, d)
        # Losses: classification, semantic (CLS, top-k attended patches, mean token), regularisation.
        cls_loss = F.cross_entropy(scale * image @ refined.T, labels)
        top = cls_attention.topk(self.top_k, dim=-1).indices  # (B, k)
        patches = torch.gather(aligned[:, 1:], 1, top[..., None].expand(-1, -1, aligned.shape[-1]))  # (B, k, d)
        selected = torch.cat([aligned[:, :1], patches, aligned.mean(dim=1, keepdim=True)], dim=1)  # (B, k+2, d)
        sem_logits = scale * selected @ text.T  # (B, k+2, C)
        sem_loss = F.cross_entropy(sem_logits.flatten(0, 1), labels.repeat_interleave(selected.shape[1]))
        reg_loss = (F.normalize(refined, dim=-1) - text).abs().mean()
        loss = cls_loss + self.w_sem * sem_loss + self.w_reg * reg_loss
        # Cache write, slot by slot (stored after backward: the read above saved the old cache).
        new_cache = loop_write(cache, aligned.detach(), self.momentum)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        refiner.cache.copy_(new_cache)
        return loss.detach()
