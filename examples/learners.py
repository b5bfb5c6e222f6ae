"""CoCoOp, MaPLe, PromptKD, KgCoOp and PromptSRC with TextRefiner, through the Method API, in plain PyTorch.

    python examples/learners.py                               # CoCoOp on the mini CLIP shipped with textrefiner, offline
    python examples/learners.py --method maple --no-textrefiner
    python examples/learners.py --method promptsrc            # IVLP prompts, consistency terms, GPA at the epoch's end
    python examples/learners.py --method promptkd             # a tiny random teacher with a wider joint space
    python examples/learners.py --method promptkd --model openai/clip-vit-base-patch16 \\
        --teacher openai/clip-vit-large-patch14 --device cuda --steps 100

Every method is used the same way:

    method = build_method(name, clip, tokenizer, classnames, textrefiner=True, **options)
    out = method.training_step(pixel_values, labels)   # out.loss, out.logits, out.parts
    method.eval(); method.prepare_eval(novel_classes)   # class embeddings made once (CoCoOp: per image)
    logits = method.eval_logits(pixel_values)

The images are random stand-ins: use your own ``(pixel_values, label)`` batches, preprocessed
by the model's image processor (``textrefiner train`` does all of it for the known datasets).
PromptKD never reads the labels: it distils the teacher's logits.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from textrefiner.methods import build_method

BASE = ["cat", "dog", "car", "tree"]
NOVEL = ["boat", "owl"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["cocoop", "kgcoop", "maple", "promptkd", "promptsrc"], default="cocoop")
    parser.add_argument("--textrefiner", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model", default=None, help="student / host model for from_pretrained (default: the mini CLIP shipped with textrefiner)")
    parser.add_argument("--teacher", default=None, help="PromptKD teacher (default: a tiny random CLIP with a 96-d joint space)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="also show transformers' progress bars")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if not args.verbose:  # transformers' own "Loading weights" bars; ours (if any) stay
        transformers.utils.logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        from textrefiner.mini import WEIGHTS_DIR
        from textrefiner.testing import save_tiny_clip

        name = args.model or str(WEIGHTS_DIR)  # a small pretrained CLIP shipped in the package, loaded like a Hub checkpoint
        clip = AutoModel.from_pretrained(name).to(args.device)
        tokenizer = AutoTokenizer.from_pretrained(name)
        options = {}
        if args.method == "promptkd":
            teacher = args.teacher or str(save_tiny_clip(f"{tmp}/teacher", seed=1, projection_dim=96, hidden_size=48))
            options["teacher"] = teacher  # loaded (frozen) by the method with AutoModel / AutoTokenizer
        method = build_method(args.method, clip, tokenizer, BASE, textrefiner=args.textrefiner, **options).to(args.device)

    trainable = [p for p in method.parameters() if p.requires_grad]
    print(f"{args.method}{' + TextRefiner' if args.textrefiner else ''}: {sum(p.numel() for p in trainable)} trained weights")
    optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=0.9)
    size = clip.config.vision_config.image_size
    method.train()
    for step in range(1, args.steps + 1):
        pixel_values = torch.randn(args.batch_size, 3, size, size, device=args.device)  # stand-in images
        labels = torch.randint(0, len(BASE), (args.batch_size,), device=args.device)
        out = method.training_step(pixel_values, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        parts = "  ".join(f"{k} {v:.4f}" for k, v in out.parts.items())
        print(f"step {step}/{args.steps}  loss {out.loss.item():.4f}  {parts}")
    method.end_epoch(1, 1)  # the loop was one epoch: PromptSRC aggregates its prompts here (the others do nothing)

    method.eval()
    method.prepare_eval(NOVEL)  # the novel classes: (refined) class embeddings computed once
    logits = method.eval_logits(torch.randn(3, 3, size, size, device=args.device))
    print(f"novel-class logits {tuple(logits.shape)}; predictions {[NOVEL[i] for i in logits.argmax(-1).tolist()]}")
    method.detach()  # hooks (refiner, vision prompts) off: the model is plain CLIP again


if __name__ == "__main__":
    main()
