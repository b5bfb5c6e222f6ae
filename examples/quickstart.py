"""Quickstart: train a TextRefiner on a frozen CLIP in a few lines of plain PyTorch.

    python examples/quickstart.py                                  # the mini CLIP shipped with textrefiner, CPU, offline
    python examples/quickstart.py --model openai/clip-vit-base-patch16 --device cuda --steps 100

The two lines that matter:

    refiner = textrefiner.attach(clip)   # hooks the vision tower; sizes the refiner from the model
    refined = refiner.refine(text_emb, refiner.local_tokens)   # after any image forward

Each step: a frozen image forward fills ``refiner.local_tokens`` (B, N+1, d) and
``refiner.cls_attention`` (B, N); ``refine`` aligns the tokens, reads the local cache and writes
them into it; the loss is cross-entropy on the refined class embeddings plus ``refiner.loss``
(semantic + regularisation). The images here are random stand-ins: use your own
``(pixel_values, label)`` batches, preprocessed by the model's image processor.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModel, AutoTokenizer

import textrefiner

CLASSES = ["cat", "dog", "car", "tree", "boat"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model id or folder for from_pretrained (default: the mini CLIP shipped with textrefiner)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default=None, help="folder to save the trained refiner to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="also show transformers' progress bars")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if not args.verbose:  # transformers' own "Loading weights" bars; ours (if any) stay
        transformers.utils.logging.disable_progress_bar()

    name = args.model
    if name is None:  # a small pretrained CLIP shipped in the package: a folder, loaded like a Hub checkpoint
        from textrefiner.mini import WEIGHTS_DIR

        name = str(WEIGHTS_DIR)
    clip = AutoModel.from_pretrained(name).to(args.device).eval().requires_grad_(False)  # frozen
    tokenizer = AutoTokenizer.from_pretrained(name)

    # 1. Hook the refiner onto the model: every image forward now fills refiner.local_tokens.
    refiner = textrefiner.attach(clip).train()

    # 2. Fixed class text embeddings, computed once: (C, d), normalised.
    with torch.no_grad():
        prompts = tokenizer([f"a photo of a {c}." for c in CLASSES], padding="max_length", truncation=True, return_tensors="pt")
        text_emb = F.normalize(clip.get_text_features(**prompts.to(args.device)).pooler_output, dim=-1)
    logit_scale = clip.logit_scale.exp().item()

    # 3. Train the refiner (fuse + alignment MLP; the cache follows by momentum).
    optimizer = torch.optim.SGD(refiner.parameters(), lr=args.lr, momentum=0.9)
    size = clip.config.vision_config.image_size
    for step in range(1, args.steps + 1):
        pixel_values = torch.randn(args.batch_size, 3, size, size, device=args.device)  # stand-in images
        labels = torch.randint(0, len(CLASSES), (args.batch_size,), device=args.device)
        with torch.no_grad():
            image_emb = clip.get_image_features(pixel_values=pixel_values).pooler_output  # (B, d); hooks capture tokens
        refined = refiner.refine(text_emb, refiner.local_tokens)  # (C, d): read the cache, then write the tokens
        logits = logit_scale * F.normalize(image_emb, dim=-1) @ refined.T  # (B, C)
        aux = refiner.loss(refined, text_emb, labels, logit_scale=logit_scale, cls_attention=refiner.cls_attention)
        loss = F.cross_entropy(logits, labels) + aux.total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}/{args.steps}  loss {loss.item():.4f}  semantic {aux.semantic.item():.4f}  reg {aux.regularization.item():.5f}")

    # 4. Inference: refined class embeddings computed once, then plain CLIP logits for every image.
    refiner.detach()  # hooks off: CLIP is exactly the model it was
    baked = refiner.eval().bake(text_emb)  # (C, d)
    with torch.no_grad():
        image_emb = clip.get_image_features(pixel_values=torch.randn(2, 3, size, size, device=args.device)).pooler_output
        predictions = (F.normalize(image_emb, dim=-1) @ baked.T).argmax(-1)
    print(f"refined class embeddings {tuple(baked.shape)}; predictions {[CLASSES[i] for i in predictions.tolist()]}")
    if args.save:
        print(f"saved the refiner to {refiner.save_pretrained(args.save)}")


if __name__ == "__main__":
    main()
