"""TextRefiner: refine class text embeddings with a local cache of visual attributes.

Legend: B images, N patches (N+1 tokens with CLS), C classes, M cache slots,
d embedding width, t token width (``token_dim``; equals d except for PromptKD).

One training step, in order (docs/method.md §2–§4):
    aligned = align(local_tokens)                  # (B, N+1, d)
    E_hat   = E + alpha * fuse([E, read(E, A)])    # read uses the cache *before* this step
    A       = write(A, aligned)                    # momentum write, no gradient
At inference ``E_hat`` depends only on E and the frozen cache, so :meth:`TextRefiner.bake`
computes it once for all test images (docs/method.md §5).

Non-finite values (NaN/Inf) follow one rule, set by ``strict``:

* ``strict=True``, the default of a refiner you build (``TextRefiner(...)``,
  :func:`textrefiner.attach`): every call checks its input values eagerly and raises
  ``ValueError`` before anything changes, so a user's own loop never steps on a NaN. Each check
  is a host sync (a GPU waits for it).
* ``strict=False``, what the built-in methods (:func:`textrefiner.methods.build_method`, hence
  ``textrefiner train``) use: a training step makes no host sync. Shapes, dtypes and devices are
  still checked eagerly (free), values are not: a write whose result is not finite is refused on
  the device (``where(all finite, new, old)`` for the cache and the alignment's BatchNorm
  statistics) and counted in :attr:`TextRefiner.refused_writes`; :meth:`TextRefiner.check_writes`
  (the engine calls it whenever it logs) or :meth:`TextRefiner.check_finite` (also every
  parameter and buffer) raise the clear error. The weights an optimiser steps with a non-finite
  loss are not protected in this mode: call ``check_finite()`` when you log.

``strict=None`` reads the environment variable ``TEXTREFINER_STRICT`` (``1``/``0``), which also
overrides the methods' default. Inside ``torch.compile`` the eager checks cannot run (they would
break the graph): a compiled step behaves as ``strict=False``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from ._validation import check_tensor
from .aggregation import aggregate
from .alignment import FeatureAlignment
from .cache import _distributed, cache_write, init_cache
from .config import TextRefinerConfig
from .losses import regularization_loss, select_tokens, semantic_loss

STRICT_ENV = "TEXTREFINER_STRICT"


def strict_default(default: bool = True) -> bool:
    """``strict`` as ``TEXTREFINER_STRICT`` sets it (``1``/``true``/``yes``/``on`` or ``0``/...), else ``default``."""
    value = os.environ.get(STRICT_ENV, "").strip().lower()
    return default if not value else value in ("1", "true", "yes", "on")


def cache_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The cache's dtype for parameters of ``dtype``: at least float32 (float64 stays float64)."""
    if dtype is None or not dtype.is_floating_point:
        return torch.float32
    return torch.promote_types(dtype, torch.float32)


class RefinerLoss(NamedTuple):
    """The refiner's weighted auxiliary loss and its parts (all scalars)."""

    total: torch.Tensor  # semantic_weight * semantic + regularization_weight * regularization
    semantic: torch.Tensor
    regularization: torch.Tensor


class TextRefiner(nn.Module):
    """Local cache + feature aggregation + feature alignment, for any prompt learner.

    Args:
        embed_dim: d, the joint embedding width; or a :class:`TextRefinerConfig`.
        token_dim: width of the local tokens (defaults to ``embed_dim``).
        cache_size: M, number of cache slots.
        alpha: weight of the fused aggregate in the refined embedding.
        momentum: gamma of the cache write.
        top_k: patches with the highest CLS attention kept by the semantic loss.
        semantic_weight: lambda_1.
        regularization_weight: lambda_2.
        sync_batchnorm: share the alignment BatchNorm's batch statistics across data-parallel ranks
            (any device and backend; see :class:`~textrefiner.alignment.TokenBatchNorm`).
        strict: check input values (NaN/Inf) at every call and raise before anything changes,
            at the cost of a host sync per call (the default). ``False``: no host sync; bad values
            are refused on the device and reported by :meth:`check_writes` / :meth:`check_finite`
            (module docstring). ``None`` reads ``TEXTREFINER_STRICT``, else ``True``.
        device: where parameters and cache live.
        dtype: parameter dtype; the cache is at least float32 (float64 with float64 parameters).
        **config_kwargs: further :class:`TextRefinerConfig` fields.

    Attributes:
        cache: (M, d) buffer with unit rows, float32 (float64 when the module is); state, never trained.
        refused_writes: () int64 buffer on the cache's device, counting writes refused since the
            last :meth:`check_writes` because their result was not finite (not saved).
        alignment: the two-layer alignment MLP (t -> d -> d).
        fuse: ``Linear(2d, d, bias=False)``.
        local_tokens: (B, N+1, t) tokens captured by :func:`textrefiner.attach`, or None.
        cls_attention: (B, N) CLS-to-patch attention captured with them, or None.
        aligned_tokens: (B, N+1, d) aligned tokens of the last training :meth:`refine`, or None.
    """

    def __init__(
        self,
        embed_dim: int | TextRefinerConfig,
        *,
        token_dim: int | None = None,
        cache_size: int = 25,
        alpha: float = 0.2,
        momentum: float = 0.8,
        top_k: int = 5,
        semantic_weight: float = 0.02,
        regularization_weight: float = 20.0,
        sync_batchnorm: bool = False,
        strict: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **config_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(embed_dim, TextRefinerConfig):
            config = embed_dim
        else:
            config = TextRefinerConfig(
                embed_dim=embed_dim,
                token_dim=token_dim,
                cache_size=cache_size,
                alpha=alpha,
                momentum=momentum,
                top_k=top_k,
                semantic_weight=semantic_weight,
                regularization_weight=regularization_weight,
                **config_kwargs,
            )
        self.config = config
        d = config.embed_dim
        self.alignment = FeatureAlignment(config.token_dim, d, sync_batchnorm=sync_batchnorm, device=device, dtype=dtype)
        self.fuse = nn.Linear(2 * d, d, bias=False, device=device, dtype=dtype)
        self.strict = strict_default() if strict is None else bool(strict)
        self.register_buffer("cache", init_cache(config.cache_size, d, device=device).to(cache_dtype(dtype)))
        self.register_buffer("refused_writes", torch.zeros((), dtype=torch.long, device=device), persistent=False)
        self.local_tokens: torch.Tensor | None = None
        self.cls_attention: torch.Tensor | None = None
        self.aligned_tokens: torch.Tensor | None = None
        self._capture: Any = None  # set by textrefiner.attach: an object with .remove()

    @classmethod
    def from_config(cls, config: TextRefinerConfig, **kwargs: Any) -> TextRefiner:
        """Build a refiner from a :class:`TextRefinerConfig` (``device``/``dtype`` as keywords)."""
        return cls(config, **kwargs)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def token_dim(self) -> int:
        return self.config.token_dim  # type: ignore[return-value]

    def extra_repr(self) -> str:
        c = self.config
        return f"embed_dim={c.embed_dim}, token_dim={c.token_dim}, cache_size={c.cache_size}, alpha={c.alpha}, momentum={c.momentum}"

    # The cache is at least float32: `.half()` / `.bfloat16()` keep it float32, `.double()` makes
    # it float64 (and every cache computation then runs in float64), `.float()` float32.
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        cache = self._buffers.pop("cache")
        try:
            super()._apply(fn, recurse)
        finally:
            probe = fn(cache.new_empty(0))
            self._buffers["cache"] = cache.to(device=probe.device, dtype=cache_dtype(probe.dtype))
        return self

    # ------------------------------------------------------------------ checks
    def _eager(self) -> bool:
        """Check values now (strict, and not while torch.compile traces: a host sync breaks the graph)."""
        return self.strict and not torch.compiler.is_compiling()

    def _check_text(self, text_emb: torch.Tensor, name: str = "text_emb") -> torch.Tensor:
        d = self.embed_dim
        return check_tensor(text_emb, name, shape=f"(C, {d})", ndim=2, width=d, device=self.cache.device, finite=False)

    def _check_tokens(self, tokens: torch.Tensor, width: int, name: str, ndim: int | None = None) -> torch.Tensor:
        shape = f"(B, N+1, {width})" if ndim == 3 else f"(..., {width})"
        return check_tensor(tokens, name, shape=shape, ndim=ndim, width=width, device=self.cache.device, finite=False)

    def _check_values(self, tensors: dict[str, torch.Tensor], *, collective: bool = False) -> None:
        """When strict, refuse NaN/Inf in any of ``tensors`` (one host sync), after every shape check.

        ``collective``: a collective follows (the cache write, synced BatchNorm), so under
        torch.distributed every rank raises if any rank's values are bad, and none is left
        waiting in the all-reduce.
        """
        if not self._eager():
            return
        bad = torch.stack([torch.isfinite(x).all().logical_not() for x in tensors.values()]).to(torch.int32)
        synced = collective and _distributed()
        if synced:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        names = [name for name, flag in zip(tensors, bad.tolist()) if flag]
        if names:
            where = " (on this or another rank)" if synced else ""
            raise ValueError(f"`{names[0]}` contains NaN or Inf{where}; refused before anything changed (strict=True)")

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs take the parameters' dtype, except under autocast, which picks its own."""
        return x if torch.is_autocast_enabled(x.device.type) else x.to(self.fuse.weight.dtype)

    # ------------------------------------------------------------------ the method
    def align(self, local_tokens: torch.Tensor) -> torch.Tensor:
        """Feature alignment (docs/method.md §2): (..., token_dim) -> (..., embed_dim)."""
        self._check_tokens(local_tokens, self.token_dim, "local_tokens")
        synced = self.training and self.alignment.norm.sync  # the synced BatchNorm's all-reduce follows
        self._check_values({"local_tokens": local_tokens}, collective=synced)
        return self.alignment(self._cast(local_tokens))

    def aggregate(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Feature aggregation read (docs/method.md §4): (C, d) -> (C, d) ``E_bar``; never writes."""
        self._check_values({"text_emb": self._check_text(text_emb)})
        return aggregate(text_emb, self.cache)

    @torch.no_grad()
    def update_cache(self, tokens: torch.Tensor) -> None:
        """Momentum write of tokens already in the embedding space (docs/method.md §3), in place.

        Args:
            tokens: (..., d) tokens; all leading dims are flattened. Under ``torch.distributed``
                every rank ends with the cache of the joined batch.

        Raises:
            TypeError, ValueError: bad tokens, NaN/Inf included when ``strict`` (the default); the
                cache is then exactly as before. With ``strict=False`` a non-finite write is refused
                on the device and :meth:`check_writes` raises.
        """
        self._check_values({"tokens": self._check_tokens(tokens, self.embed_dim, "tokens")}, collective=True)
        self._write(tokens)

    def _write(self, tokens: torch.Tensor, norm_state: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> None:
        """Write ``tokens`` into the cache and each ``(buffer, new value)`` of ``norm_state``, or
        refuse the whole write, everything left as it was, when its result is not finite."""
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            updated = cache_write(self.cache, tokens, self.config.momentum)  # in the cache's dtype
            ok = torch.isfinite(updated).all()  # () bool, stays on the device
            if self._eager():
                if not bool(ok):  # the one host sync of strict mode's write
                    raise ValueError("the cache write produced NaN or Inf (tokens of zero norm?); cache left unchanged")
                self.cache.copy_(updated)
                for buffer, new in norm_state:
                    buffer.copy_(new)
                return
            self.cache.copy_(torch.where(ok, updated, self.cache))
            for buffer, new in norm_state:  # the alignment's BatchNorm statistics saw the same tokens
                buffer.copy_(torch.where(ok, new, buffer))
            self.refused_writes.add_(ok.logical_not().to(self.refused_writes.dtype))

    def _align_for_write(self, local_tokens: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """:meth:`align`, with the BatchNorm statistics updated on copies; returns (aligned, [(buffer, copy)]).

        The step's write then commits the copies with the cache, or neither. (Copies rather than
        an undo: the BatchNorm backward holds the statistics it saw, so they must not change in place.)
        """
        norm = self.alignment.norm
        if not norm.training:
            return self.align(local_tokens), []
        saved = {name: b for name, b in norm._buffers.items() if b is not None}
        for name, b in saved.items():
            norm._buffers[name] = b.clone()
        try:
            aligned = self.align(local_tokens)
        finally:
            pending = [(b, norm._buffers[name]) for name, b in saved.items()]
            norm._buffers.update(saved)
        return aligned, pending

    def check_writes(self) -> None:
        """Raise if cache writes were refused since the last call (one host sync; call it when logging).

        Raises:
            ValueError: some write produced NaN or Inf, e.g. from non-finite local tokens. The
                cache and BatchNorm statistics kept their previous values; the count is reset.
        """
        refused = int(self.refused_writes)
        if refused:
            self.refused_writes.zero_()
            raise ValueError(
                f"{refused} cache write(s) produced NaN or Inf (non-finite local tokens or text, or tokens of zero norm?) and "
                f"were refused: the cache and the alignment's BatchNorm statistics kept their previous values. "
                f"Set {STRICT_ENV}=1 (or TextRefiner(strict=True)) to raise at the step that produced them."
            )

    def check_finite(self) -> None:
        """Raise if a write was refused or any parameter or buffer is NaN/Inf (one host sync).

        The one-call check for a loop on the sync-free path (``strict=False``): run it when you
        log. It also catches weights an optimiser stepped with a non-finite loss or gradient,
        which no refused write can prevent.

        Raises:
            ValueError: naming the refused writes (the count is then reset) or the first
                non-finite tensors, e.g. ``alignment.fc1.weight``.
        """
        tensors = [(n, t) for n, t in (*self.named_parameters(), *self.named_buffers()) if t.is_floating_point()]
        flags = torch.stack([torch.isfinite(t).all() for _, t in tensors] + [self.refused_writes == 0]).tolist()
        bad = [name for (name, _), ok in zip(tensors, flags) if not ok]
        if bad:
            raise ValueError(
                f"the refiner holds NaN or Inf in {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}: an optimiser step "
                "took a non-finite loss or gradient (non-finite inputs with strict=False?); reload the last good weights"
            )
        if not flags[-1]:
            self.check_writes()

    def _refine(self, text_emb: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
        text = self._cast(text_emb)
        read = aggregate(text, cache)  # (C, d)
        return self.config.alpha * self.fuse(torch.cat([text, read], dim=-1)) + text

    def refine(self, text_emb: torch.Tensor, local_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Refined class embeddings ``E_hat = alpha * fuse([E, E_bar]) + E`` (docs/method.md §4), un-normalised.

        In training mode with ``local_tokens`` this is one full step: align the tokens, read the
        cache as it was before the step, then write the aligned tokens into it (and keep them in
        :attr:`aligned_tokens` for :meth:`loss`). In eval mode, or without tokens, it only reads.

        Args:
            text_emb: (C, d) class text embeddings (the reference CoOp variant passes them normalised).
            local_tokens: (B, N+1, token_dim) local tokens, CLS first, e.g. ``refiner.local_tokens``.

        Returns:
            (C, d) refined class embeddings. Gradients reach ``text_emb``, ``fuse`` and, through
            the semantic loss, the alignment MLP; never the cache.

        Raises:
            TypeError, ValueError: bad shapes, widths, dtypes or devices, or (``strict``, the
                default) NaN/Inf in ``text_emb`` or ``local_tokens``, before anything changes. With
                ``strict=False`` non-finite values are not checked: the output may be NaN, the
                write is refused and :meth:`check_writes` raises later.
        """
        self._check_text(text_emb)
        if not (self.training and local_tokens is not None):
            self._check_values({"text_emb": text_emb})
            self.aligned_tokens = None
            return self._refine(text_emb, self.cache)
        self._check_tokens(local_tokens, self.token_dim, "local_tokens", ndim=3)
        self._check_values({"text_emb": text_emb, "local_tokens": local_tokens}, collective=True)  # the write's all-reduce follows
        # captured under torch.inference_mode(): autograd cannot save it (a compiled step never sees one)
        if not torch.compiler.is_compiling() and local_tokens.is_inference():
            local_tokens = local_tokens.clone()
        aligned, norm_state = self._align_for_write(local_tokens)  # (B, N+1, d)
        refined = self._refine(text_emb, self.cache.clone())  # read before write; the clone keeps autograd valid
        self._write(aligned.detach(), norm_state)
        self.aligned_tokens = aligned
        return refined

    def forward(self, text_emb: torch.Tensor, local_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`refine`, so ``DDP(refiner)`` and ``accelerator.prepare(refiner)`` work."""
        return self.refine(text_emb, local_tokens)

    @torch.no_grad()
    def bake(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Refined class embeddings for inference, computed once (docs/method.md §5).

        Reads the frozen cache and never writes, whatever the mode; reuse the result for every
        test image, so the per-image cost is the host prompt learner's alone.

        Raises:
            TypeError, ValueError: a bad ``text_emb``, NaN/Inf included when ``strict`` (the
                default; with ``strict=False`` NaN in gives NaN out).
        """
        self._check_values({"text_emb": self._check_text(text_emb)})
        return self._refine(text_emb, self.cache)

    # ------------------------------------------------------------------ losses
    def semantic_loss(
        self,
        aligned_tokens: torch.Tensor,
        text_emb: torch.Tensor,
        target: torch.Tensor,
        *,
        logit_scale: torch.Tensor | float,
        cls_attention: torch.Tensor,
    ) -> torch.Tensor:
        """Local alignment loss on the CLS token, the top-k attended patches and the mean token.

        Args:
            aligned_tokens: (B, N+1, d) output of :meth:`align`.
            text_emb: (C, d) the **unrefined** class text embeddings.
            target: (B,) integer labels (cross-entropy) or (B, C) teacher logits (KL, PromptKD).
            logit_scale: the model's (exponentiated) logit scale.
            cls_attention: (B, N) CLS-to-patch attention.

        Raises:
            ValueError: shapes that do not fit, ``top_k`` above the N patches, or (``strict``)
                NaN/Inf in any input.
        """
        d = self.embed_dim
        check_tensor(aligned_tokens, "aligned_tokens", shape=f"(B, N+1, {d})", ndim=3, width=d, finite=False)
        b, n1 = aligned_tokens.shape[:2]
        check_tensor(cls_attention, "cls_attention", shape=f"({b}, {n1 - 1})", ndim=2, finite=False)
        if tuple(cls_attention.shape) != (b, n1 - 1):
            raise ValueError(f"expected `cls_attention` of shape ({b}, {n1 - 1}) to match the tokens, got {tuple(cls_attention.shape)}")
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"expected `target` to be a tensor of labels (B,) or teacher logits (B, C), got {type(target).__name__}")
        expected = (b,) if not target.is_floating_point() else (b, text_emb.shape[0])
        if tuple(target.shape) != expected:
            raise ValueError(f"expected `target` of shape {expected}, got {tuple(target.shape)}")
        if self._eager():
            values = {"aligned_tokens": aligned_tokens, "text_emb": text_emb, "cls_attention": cls_attention, "logit_scale": logit_scale}
            if target.is_floating_point():
                values["target"] = target
            for name, value in values.items():
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"`{name}` is {value}; refusing it so no NaN reaches the gradients")
            self._check_values({k: v for k, v in values.items() if isinstance(v, torch.Tensor) and v.is_floating_point()})
        selected = select_tokens(aligned_tokens, cls_attention, self.config.top_k)  # (B, k+2, d)
        return semantic_loss(  # in float32 at least: bf16 aligned tokens do not round the class text
            selected, text_emb, target, logit_scale=logit_scale, temperature=self.config.kd_temperature
        )

    def regularization_loss(self, refined: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``mean |norm(E_hat) - E|`` (docs/method.md §6); NaN/Inf refused when ``strict``."""
        if refined.shape != text_emb.shape:
            raise ValueError(f"expected `refined` and `text_emb` of the same shape, got {tuple(refined.shape)} and {tuple(text_emb.shape)}")
        self._check_values({"refined": refined, "text_emb": text_emb})
        return regularization_loss(refined, text_emb)  # in float32 at least: bf16 refined classes do not round E

    def loss(
        self,
        refined: torch.Tensor,
        text_emb: torch.Tensor,
        target: torch.Tensor,
        *,
        logit_scale: torch.Tensor | float,
        cls_attention: torch.Tensor | None = None,
        aligned_tokens: torch.Tensor | None = None,
    ) -> RefinerLoss:
        """The refiner's weighted auxiliary loss for one training step; add it to the host's loss.

        Args:
            refined: (C, d) output of :meth:`refine` this step.
            text_emb: (C, d) the unrefined text embeddings passed to :meth:`refine`.
            target: (B,) labels or (B, C) teacher logits.
            logit_scale: the model's (exponentiated) logit scale.
            cls_attention: (B, N); defaults to the captured :attr:`cls_attention`.
            aligned_tokens: (B, N+1, d); defaults to those of the last training :meth:`refine`.

        Returns:
            ``RefinerLoss(total, semantic, regularization)`` with
            ``total = semantic_weight * semantic + regularization_weight * regularization``.
        """
        aligned = self.aligned_tokens if aligned_tokens is None else aligned_tokens
        attention = self.cls_attention if cls_attention is None else cls_attention
        if aligned is None:
            raise ValueError("no aligned tokens: call refine(text_emb, local_tokens) in training mode first, or pass aligned_tokens")
        if attention is None:
            raise ValueError("no CLS attention: pass cls_attention (B, N), or attach the refiner to a model with textrefiner.attach")
        sem = self.semantic_loss(aligned, text_emb, target, logit_scale=logit_scale, cls_attention=attention)
        reg = self.regularization_loss(refined, text_emb)
        total = self.config.semantic_weight * sem + self.config.regularization_weight * reg
        return RefinerLoss(total, sem, reg)

    # ------------------------------------------------------------------ hooks
    def detach(self) -> None:
        """Remove every hook :func:`textrefiner.attach` added and drop the captured tensors."""
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        self.local_tokens = None
        self.cls_attention = None

    # Copies and pickles carry the weights and the cache, never the captured per-step tensors
    # (they may hang on an autograd graph) nor the hooks (they belong to one model).
    _TRANSIENT = ("local_tokens", "cls_attention", "aligned_tokens")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        for name in self._TRANSIENT:
            state[name] = None
        state["_capture"] = None
        return state

    def __enter__(self) -> TextRefiner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, save_directory: str | os.PathLike, *, repo_id: str | None = None) -> Path:
        """Write ``textrefiner_config.json``, ``textrefiner.safetensors`` (cache included) and a model card.

        Args:
            save_directory: the folder (created if needed).
            repo_id: the Hub repository it is meant for; the model card's loading snippet names it.

        Returns:
            The folder.
        """
        from ._card import write_model_card
        from ._io import save_refiner

        directory = save_refiner(self, save_directory)
        write_model_card(directory, self.config, repo_id=repo_id)
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload TextRefiner",
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save to a temporary folder and upload it to the Hub with ``huggingface_hub.HfApi.upload_folder``.

        The repository is created if it does not exist. Loading it back:
        ``TextRefiner.from_pretrained(repo_id)``.

        Args:
            repo_id: ``"user/name"``.
            commit_message, private, token, revision, create_pr: as for ``HfApi.upload_folder`` /
                ``HfApi.create_repo``.

        Returns:
            The URL of the commit.
        """
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="textrefiner-push-") as tmp:
            self.save_pretrained(tmp, repo_id=repo_id)
            info = api.upload_folder(
                repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision, create_pr=create_pr
            )
        return str(getattr(info, "commit_url", info))

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, device: torch.device | str | None = None, **hub_kwargs: Any
    ) -> TextRefiner:
        """Load a refiner saved by :meth:`save_pretrained`, from a folder or a Hub repository id.

        Loading reads JSON and safetensors only; nothing is unpickled.
        """
        from ._io import load_refiner

        return load_refiner(cls, name_or_path, device=device, **hub_kwargs)
