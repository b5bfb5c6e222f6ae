"""TextRefiner inside a CoOp-family repository: `attach` in its CustomCLIP, `refine` + `loss` in forward.

    python examples/dassl_trainer.py                                          # offline: a random tiny OpenAI-format ViT
    python examples/dassl_trainer.py --weights ~/.cache/clip/ViT-B-16.pt      # OpenAI's checkpoint, as CoOp loads it

CoOp, CoCoOp, MaPLe, PromptSRC, KgCoOp and the TextRefiner release are Dassl repositories that
build their model with OpenAI's ``clip`` code (``clip.build_model``, often a copy of
``clip/model.py`` inside the repository). Below is the shape of CoOp's ``trainers/coop.py``
(``load_clip_to_cpu``, ``TextEncoder``, ``PromptLearner``, ``CustomCLIP``), written out so it
runs alone. The only TextRefiner code is marked ``# TextRefiner``: ``attach`` in ``__init__``,
``refine`` and ``loss`` in ``forward``, and letting the optimiser see ``model.refiner`` (Dassl
trainers freeze everything outside ``prompt_learner``).

Needs OpenAI's ``clip`` code (``pip install openai-clip``, or your repository's copy). Its
``clip/__init__.py`` imports torchvision and ``pkg_resources``; where those do not import (a
CPU-only torch without a matching torchvision), ``clip/model.py`` and ``clip/simple_tokenizer.py``
are loaded straight from the installed files, as they need neither. The images are random
stand-ins for your data loader's batches.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

import textrefiner

CLASSNAMES = ["cat", "dog", "car", "airplane"]
# build_model reads every size from the state dict; heads are width // 64, as in OpenAI's models
TINY = dict(embed_dim=32, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)


def openai_clip_code() -> tuple[ModuleType, ModuleType]:
    """``clip.model`` and ``clip.simple_tokenizer``: imported, else loaded from the installed files."""
    try:
        from clip import model, simple_tokenizer  # your repository's copy, or the openai-clip package

        return model, simple_tokenizer
    except ImportError:
        spec = importlib.util.find_spec("clip")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("this example needs OpenAI's clip code: pip install openai-clip")
        folder = Path(spec.submodule_search_locations[0])
        loaded = []
        for name in ("model", "simple_tokenizer"):
            file_spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", folder / f"{name}.py")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)  # type: ignore[union-attr]
            loaded.append(module)
        return loaded[0], loaded[1]


def load_clip_to_cpu(clip_model_code: ModuleType, weights: str | None, seed: int = 0) -> nn.Module:
    """CoOp's ``load_clip_to_cpu``: a checkpoint's state dict through ``build_model``; without
    ``weights``, a tiny random one of the same format (``build_model`` cannot tell the difference)."""
    if weights is None:
        torch.manual_seed(seed)
        state_dict = clip_model_code.CLIP(**TINY).state_dict()
    else:
        try:  # OpenAI's checkpoints are TorchScript archives
            state_dict = torch.jit.load(weights, map_location="cpu").eval().state_dict()
        except RuntimeError:
            state_dict = torch.load(weights, map_location="cpu")
    return clip_model_code.build_model(state_dict)


def make_tokenize(simple_tokenizer: ModuleType, context_length: int = 77):
    """``clip.tokenize``: start token, BPE tokens, end token, zero padding -> (len(texts), 77)."""
    tokenizer = simple_tokenizer.SimpleTokenizer()
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]

    def tokenize(texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [sot, *tokenizer.encode(text), eot][:context_length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    return tokenize


# ---------------------------------------------------------------------------- CoOp's model, as in its trainer
class TextEncoder(nn.Module):
    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding.type(self.dtype)  # (C, 77, w)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # sequence-first inside
        x = self.ln_final(x).type(self.dtype)
        eot = tokenized_prompts.argmax(dim=-1)  # the end-of-text token has the highest id
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection  # (C, d)


class PromptLearner(nn.Module):
    def __init__(self, classnames: list[str], clip_model: nn.Module, tokenize, ctx_init: str = "a photo of a") -> None:
        super().__init__()
        dtype = clip_model.dtype
        init = tokenize([ctx_init])
        n_ctx = int(init.argmax(dim=-1)) - 1  # tokens between start and end
        with torch.no_grad():
            embedding = clip_model.token_embedding(init).type(dtype)
        self.ctx = nn.Parameter(embedding[0, 1 : 1 + n_ctx].clone())  # (n_ctx, w): the learned context
        tokenized = tokenize([f"{ctx_init} {name}." for name in classnames])  # (C, 77)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).type(dtype)
        self.register_buffer("token_prefix", embedding[:, :1])  # start token
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :])  # class name, ".", end, padding
        self.tokenized_prompts = tokenized

    def forward(self) -> torch.Tensor:
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)  # (C, 77, w)


class CustomCLIP(nn.Module):
    def __init__(self, classnames: list[str], clip_model: nn.Module, tokenize) -> None:
        super().__init__()
        self.prompt_learner = PromptLearner(classnames, clip_model, tokenize)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        self.refiner = textrefiner.attach(clip_model)  # TextRefiner: hooks clip_model.visual

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        image_features = self.image_encoder(image.type(self.dtype))  # the hooks capture the local tokens
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.exp()

        refined = self.refiner.refine(text_features, self.refiner.local_tokens)  # TextRefiner (training: read, then write the cache)
        logits = logit_scale * image_features @ refined.T
        if not self.training or label is None:
            return logits  # eval: the refiner's hooks do nothing, the cache is only read
        aux = self.refiner.loss(refined, text_features, label, logit_scale=logit_scale)  # TextRefiner: semantic + regularisation
        return F.cross_entropy(logits, label) + aux.total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="an OpenAI CLIP checkpoint, e.g. ~/.cache/clip/ViT-B-16.pt (default: a tiny random ViT)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    clip_model_code, simple_tokenizer = openai_clip_code()
    clip_model = load_clip_to_cpu(clip_model_code, args.weights).float()  # CoOp's fp32 precision (build_model gives fp16)
    model = CustomCLIP(CLASSNAMES, clip_model, make_tokenize(simple_tokenizer))
    for name, param in model.named_parameters():  # TextRefiner: Dassl trains `prompt_learner` only; let `refiner` through too
        param.requires_grad_(name.startswith(("prompt_learner.", "refiner.")))
    model.to(device)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=args.lr, momentum=0.9, weight_decay=5e-4)
    print(f"device {device}; TextRefiner on {type(clip_model.visual).__name__}: local tokens of width {model.refiner.token_dim}")

    torch.manual_seed(args.seed)
    size = clip_model.visual.input_resolution
    images = torch.randn(args.batch_size, 3, size, size, device=device)  # your (normalised) images
    labels = torch.randint(len(CLASSNAMES), (args.batch_size,), device=device)
    model.train()
    for step in range(1, args.steps + 1):
        loss = model(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}/{args.steps}: loss {loss.item():.4f}")

    model.eval()
    with torch.no_grad():
        logits = model(images)
    print(f"eval logits {tuple(logits.shape)}, accuracy on the training batch {(logits.argmax(-1) == labels).float().mean().item():.2f}")


if __name__ == "__main__":
    main()
