"""Train TextRefiner on a frozen CLIP with a custom Hugging Face Accelerate loop.

The same script runs in one process (CPU or GPU) and on many GPUs or nodes:

    python examples/accelerate_loop.py --steps 3                     # the mini CLIP shipped with textrefiner
    accelerate launch --num-processes 4 examples/accelerate_loop.py  # DDP, one process per GPU
    ACCELERATE_USE_CPU=1 torchrun --nproc-per-node 2 examples/accelerate_loop.py  # DDP on CPU (gloo)
    python examples/accelerate_loop.py --model openai/clip-vit-base-patch16 --mixed-precision bf16

Under several processes the cache write is synchronised across ranks, so every process holds
the cache one process would compute on the joined batch (docs/distributed.md).
Needs ``pip install "textrefiner[accelerate]"``. The images here are random stand-ins: plug in
your own dataset of ``(pixel_values, label)`` pairs.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoTokenizer, CLIPModel

import textrefiner

CLASSES = ["cat", "dog", "car", "tree", "boat"]


class RefinedClassifier(nn.Module):
    """What Accelerate wraps for data-parallel training: one refiner step, from tokens to the loss.

    DDP syncs gradients of what runs inside ``forward``, so the refine and the losses live here.
    """

    def __init__(self, refiner: textrefiner.TextRefiner, text_emb: torch.Tensor, logit_scale: float) -> None:
        super().__init__()
        self.refiner = refiner
        self.register_buffer("text_emb", text_emb)  # (C, d) fixed, normalised class embeddings
        self.logit_scale = logit_scale

    def forward(self, image_emb, local_tokens, cls_attention, labels):
        refined = self.refiner.refine(self.text_emb, local_tokens)  # (C, d); also writes the cache
        logits = self.logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(refined, dim=-1).T  # (B, C)
        aux = self.refiner.loss(refined, self.text_emb, labels, logit_scale=self.logit_scale, cls_attention=cls_attention)
        return F.cross_entropy(logits, labels) + aux.total, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="CLIP id or folder (default: the mini CLIP shipped with textrefiner)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--output-dir", default=None, help="where the refiner is saved (default: a new temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="also show transformers' progress bars")
    args = parser.parse_args()
    if not args.verbose:  # transformers' own "Loading weights" bars; ours (if any) stay
        transformers.utils.logging.disable_progress_bar()

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    if args.output_dir is None:  # a new temporary folder, made by the main process, the same on every process
        folder = [tempfile.mkdtemp(prefix="textrefiner-accelerate-") if accelerator.is_main_process else None]
        args.output_dir = broadcast_object_list(folder)[0]
    torch.manual_seed(args.seed)  # the same refiner on every process (DDP also copies rank 0's)

    # 1. A frozen CLIP, and the refiner hooked onto its vision tower.
    model_dir = args.model
    if model_dir is None:  # a small pretrained CLIP shipped in the package: a folder every process reads
        from textrefiner.mini import WEIGHTS_DIR

        model_dir = str(WEIGHTS_DIR)
    accelerator.wait_for_everyone()  # every process up before the first collective
    clip = CLIPModel.from_pretrained(model_dir).to(accelerator.device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    refiner = textrefiner.attach(clip)  # every image forward now fills refiner.local_tokens / cls_attention

    # 2. Fixed class text embeddings, computed once.
    with torch.no_grad():
        prompts = tokenizer([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt").to(accelerator.device)
        text_emb = F.normalize(clip.get_text_features(**prompts).pooler_output, dim=-1)  # (C, d)
    model = RefinedClassifier(refiner, text_emb, clip.logit_scale.exp().item())

    # 3. Data (random stand-ins), optimiser, and Accelerate's wrapping: DDP, device placement, sharding.
    size = clip.config.vision_config.image_size
    images = torch.randn(8 * args.batch_size, 3, size, size)  # (n, 3, H, W) already preprocessed
    labels = torch.randint(0, len(CLASSES), (images.shape[0],))
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    # 4. The loop.
    model.train()
    step = 0
    while step < args.steps:
        for pixel_values, y in loader:
            with torch.no_grad(), accelerator.autocast():
                image_emb = clip.get_image_features(pixel_values=pixel_values).pooler_output  # (B, d); hooks capture tokens
            loss, logits = model(image_emb, refiner.local_tokens, refiner.cls_attention, y)  # prepare() adds autocast
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            step += 1
            accuracy = accelerator.gather_for_metrics((logits.argmax(-1) == y).float()).mean().item()
            accelerator.print(f"step {step}/{args.steps}  loss {loss.item():.4f}  train acc {100 * accuracy:.1f}%")
            if step == args.steps:
                break

    # 5. Save once, from the main process: every process holds the same weights and cache.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(model).refiner
        path = trained.save_pretrained(args.output_dir)
        accelerator.print(f"saved the refiner to {path}; load it with TextRefiner.from_pretrained({str(path)!r})")
        refined = trained.eval().bake(text_emb)  # (C, d) refined class embeddings, computed once for inference
        accelerator.print(f"refined class embeddings: {tuple(refined.shape)}")
    refiner.detach()  # remove the hooks from CLIP
    accelerator.wait_for_everyone()  # no process leaves while the main one still saves
    accelerator.end_training()
    if torch.distributed.is_initialized():  # a clean shutdown of the process group (gloo can hang at exit without it)
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
