"""CoOp + TextRefiner in your own training loop: real data code, GPU when there is one, bf16.

    python examples/coop_textrefiner.py                      # offline: the mini CLIP on mini-colours, its own recipe
    python examples/coop_textrefiner.py --model openai/clip-vit-base-patch16 \\
        --dataset eurosat --root ~/data --epochs 10           # real weights and a CoOp-layout dataset

``textrefiner train`` does the same with checkpoints, resume, DDP and logging; this file is
the loop laid bare, for when you want to change it.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch.utils.data import DataLoader
import transformers
from transformers import AutoModel, AutoTokenizer

from textrefiner.data import ImageDataset, load_dataset, make_fake_dataset, transforms_from_processor
from textrefiner.methods import build_method
from textrefiner.mini import WEIGHTS_DIR
from textrefiner.mini.datasets import MINI_RECIPE
from textrefiner.models.processor import load_image_processor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Hub id or folder (default: the mini CLIP shipped with textrefiner)")
    parser.add_argument("--dataset", default="mini-colours", help="a dataset name of `textrefiner datasets`")
    parser.add_argument("--root", default=None, help="CoOp data folder (default: a temporary one; mini datasets are drawn there)")
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None, help="default: 25 on the mini CLIP (its recipe), else 10")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 16 on the mini CLIP, else 32")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.05 on the mini CLIP, else 0.002 (the paper's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", default=None, help="folder for the trained refiner")
    parser.add_argument("--verbose", action="store_true", help="also show transformers' progress bars")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if not args.verbose:  # transformers' own "Loading weights" bars; ours (if any) stay
        transformers.utils.logging.disable_progress_bar()

    # Device and precision: the GPU when there is one; bf16 autocast where the hardware has it.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
    print(f"device {device}, autocast bf16: {use_bf16}")

    tmp = tempfile.TemporaryDirectory()
    # The recipe: the mini CLIP's own (docs/mini.md) for the mini CLIP, the paper's otherwise; given options win.
    recipe = MINI_RECIPE if args.model is None else {"epochs": 10, "batch_size": 32, "lr": 0.002}
    for key in ("epochs", "batch_size", "lr"):
        if getattr(args, key) is None:
            setattr(args, key, recipe[key])
    print(f"recipe: {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}"
          f" ({'the mini CLIP' if recipe is MINI_RECIPE else 'the paper'}'s where not given)")
    if args.model is None:  # a small pretrained CLIP shipped in the package: a folder, loaded like any other
        args.model = str(WEIGHTS_DIR)
    if args.root is None:
        args.root = tmp.name
        if not args.dataset.startswith("mini-"):  # the mini datasets are drawn on first use; others are generated
            # 40 images per class: 20 for training (50/20/30 split), enough for the default 16 shots
            make_fake_dataset(args.root, args.dataset, num_classes=6, images_per_class=40, image_size=40, seed=0)

    clip = AutoModel.from_pretrained(args.model).to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    processor = load_image_processor(args.model)  # AutoImageProcessor, or its Pillow backend without torchvision

    # Few-shot base classes for training, the model's own preprocessing plus crop/flip.
    data = load_dataset(args.dataset, args.root, shots=args.shots, seed=args.seed, subsample="base")
    train_set = ImageDataset(data.train, transforms_from_processor(processor, train=True), seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=len(train_set) >= args.batch_size)

    def accuracies(method) -> dict[str, float]:
        """Base and novel test accuracy (%): the class embeddings are baked once per class set, then plain CLIP cost."""
        method.eval()
        out = {}
        for subsample in ("base", "novel"):
            split = load_dataset(args.dataset, args.root, subsample=subsample)
            method.prepare_eval(split.classnames)
            test = DataLoader(ImageDataset(split.test, transforms_from_processor(processor, train=False)), batch_size=100)
            correct = total = 0
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                for pixel_values, labels in test:
                    correct += (method.eval_logits(pixel_values.to(device)).argmax(-1).cpu() == labels).sum().item()
                    total += labels.numel()
            out[subsample] = 100 * correct / total
        return out

    # The baseline: zero-shot CLIP is CoOp before its first step (context "a photo of a"), without a refiner.
    zero_shot = build_method("coop", clip, tokenizer, data.classnames, textrefiner=False).to(device)
    before = accuracies(zero_shot)
    zero_shot.detach()
    print(f"zero-shot: base {before['base']:.2f}%, novel {before['novel']:.2f}%")

    # CoOp's context on the frozen CLIP, with TextRefiner hooked onto its vision tower.
    method = build_method("coop", clip, tokenizer, data.classnames, textrefiner=True).to(device)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=args.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)

    for epoch in range(args.epochs):
        method.train()
        train_set.set_epoch(epoch)
        for pixel_values, labels in loader:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = method(pixel_values.to(device), labels.to(device))  # CE + semantic + regularisation
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
        scheduler.step()
        print(f"epoch {epoch + 1}: loss {out.loss.item():.4f} " + " ".join(f"{k} {v:.4f}" for k, v in out.parts.items()))

    after = accuracies(method)
    for subsample in ("base", "novel"):
        print(f"{subsample} accuracy: {after[subsample]:.2f}% (zero-shot {before[subsample]:.2f}%)")
    if after["base"] - before["base"] < 1.0:  # the context hardly moved: usually an lr too small for the model
        print("note: base accuracy is within 1 point of zero-shot: the prompts hardly moved; try a larger --lr or more --epochs")

    if args.save:
        method.refiner.save_pretrained(args.save)
    method.detach()
    tmp.cleanup()


if __name__ == "__main__":
    main()
