"""OpenAI-format models for the tests: OpenAI's real ``clip/model.py`` and an open_clip-layout tower.

``clip/model.py`` comes from the ``openai-clip`` package (in the test extra), loaded straight from
its installed file: the package's ``clip/__init__.py`` imports torchvision and ``pkg_resources``,
which do not load beside every CPU torch build, while ``model.py`` needs only torch and numpy.
Without the package the tests that need it are skipped.

``OpenClipLikeCLIP`` has the attribute names and forward order of open_clip's ``VisionTransformer``
(batch-first ``Transformer`` whose blocks may still run sequence-first attention, ``ln_post`` on
every token before the CLS token is pooled), written here so its layout is tested without the
open_clip package (which pulls a CUDA torch through torchvision).

Sizes: 32 px images in 4 px patches (N = 64), vision width 128 (2 heads: OpenAI's ``CLIP`` takes
``width // 64``), text width 64 with 4 heads, 2 layers each, d = 24.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

from textrefiner.testing import VOCAB_SIZE

IMAGE_SIZE, PATCH, D = 32, 4, 24
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2
TINY = dict(
    embed_dim=D, image_resolution=IMAGE_SIZE, vision_layers=2, vision_width=128, vision_patch_size=PATCH,
    context_length=77, vocab_size=VOCAB_SIZE, transformer_width=64, transformer_heads=4, transformer_layers=2,
)


@functools.cache
def _clip_file() -> Path | None:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model.py"
    return path if path.is_file() and "def build_model" in path.read_text() else None


def has_openai_clip() -> bool:
    return _clip_file() is not None


@functools.cache
def clip_model_code() -> ModuleType:
    """OpenAI's ``clip/model.py`` from the installed openai-clip package (the test is skipped without it)."""
    path = _clip_file()
    if path is None:
        pytest.skip("the openai-clip package is not installed (pip install openai-clip; it is in the test extra)")
    spec = importlib.util.spec_from_file_location("_openai_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so its classes pickle (torch.save of a whole model)
    spec.loader.exec_module(module)
    return module


def float64(model: nn.Module) -> nn.Module:
    """``model`` in float64. OpenAI's LayerNorm computes in float32 (its fp16 fix); its instances
    become plain ``nn.LayerNorm``, the same maths, so that everything runs in float64."""
    code = clip_model_code()
    for module in model.modules():
        if type(module) is code.LayerNorm:
            module.__class__ = nn.LayerNorm
    return model.double()


def tiny_openai_clip(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> nn.Module:
    """A tiny random ``clip.model.CLIP`` (ViT) in eval mode; the global RNG is left as it was."""
    code = clip_model_code()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = code.CLIP(**{**TINY, **overrides})
    model = float64(model) if dtype == torch.float64 else model.to(dtype)
    return model.eval()


def images(batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed)).to(dtype)


def text_ids(batch: int = 3, length: int = 9, seed: int = 2) -> torch.Tensor:
    """(batch, 77) ids: start token, random characters, end token (the highest id), zero padding."""
    ids = torch.zeros(batch, 77, dtype=torch.long)
    ids[:, 1:length] = torch.randint(0, VOCAB_SIZE - 2, (batch, length - 1), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, length] = VOCAB_SIZE - 2, VOCAB_SIZE - 1
    return ids


# ---------------------------------------------------------------------------- open_clip's layout
class _Block(nn.Module):
    def __init__(self, width: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)
        self.ls_1 = nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ls_2 = nn.Identity()

    def forward(self, q_x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(q_x)
        x = q_x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class _Transformer(nn.Module):
    """Batch-first in and out; with ``batch_first=False`` the blocks run sequence-first inside."""

    def __init__(self, width: int, layers: int, heads: int, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.resblocks = nn.ModuleList(_Block(width, heads, batch_first) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)  # (B, T, w) -> (T, B, w)
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x if self.batch_first else x.transpose(0, 1)


class OpenClipLikeViT(nn.Module):
    def __init__(self, width: int = 64, layers: int = 2, heads: int = 4, output_dim: int = D, batch_first: bool = True) -> None:
        super().__init__()
        grid = IMAGE_SIZE // PATCH
        self.conv1 = nn.Conv2d(3, width, PATCH, stride=PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width**-0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * width**-0.5)
        self.patch_dropout = nn.Identity()
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads, batch_first)
        self.attn_pool = None
        self.pool_type = "tok"
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim) * width**-0.5)

    def embeds(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, w)
        x = torch.cat([self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.ln_pre(self.patch_dropout(x + self.positional_embedding.to(x.dtype)))  # (B, T, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_post(self.transformer(self.embeds(x)))  # every token normed
        pooled = x[:, 0]  # pool_type "tok"
        return pooled @ self.proj


class OpenClipLikeCLIP(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.visual = OpenClipLikeViT(batch_first=batch_first)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)
