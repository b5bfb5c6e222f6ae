"""Training input pipeline: images/s of the decoded-once loader vs the PIL loader, next to a step's.

Legend: B images per batch, W loader worker processes.

Both loaders produce the training batches of ``textrefiner train`` (random-resized-crop to 224,
flip, normalise) from the same JPEG files (500 x 375, a typical few-shot dataset image):
* PIL (before): ``ImageDataset`` + ``TrainTransform``: every sample decodes its JPEG and
  crops / resizes / flips with PIL, in W workers;
* decoded once (now): ``DecodedImageDataset``: the JPEGs are decoded once when the dataset is
  built (that time is reported apart), a sample is the same crop + resize + flip of the kept
  pixels (bit-identical batches), uint8, and the batch is normalised where it lands
  (``batch_transform``; here on CPU, on the GPU in training).
Each variant reads a full epoch through a ``DataLoader`` (W = 1, 2, N where N is the
machine's CPU count), images/s = images / wall time of the epoch, median of the repeats. The
step column is a CoOp + TextRefiner training step (ViT-B/16 shapes, 100 classes) on this
device, as images/s, measured in the same run.

    python benchmarks/bench_loader.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import CLASSNAMES, Check, build_clip, ensure_importable, parser, resolve, synthetic_batch, tokenizer_for, write_results

ensure_importable()

from torch.utils.data import DataLoader  # noqa: E402

from textrefiner.data import DecodedImageDataset, ImageDataset, Item, TrainTransform  # noqa: E402
from textrefiner.data.transforms import _Normalise  # noqa: E402
from textrefiner.methods.coop import CoOpMethod  # noqa: E402


def make_images(folder: Path, n: int, size: tuple[int, int]) -> list[Item]:
    """``n`` JPEGs of ``size`` (W, H): smooth colour fields with noise, so they compress like photos."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    w, h = size
    items = []
    for i in range(n):
        base = torch.rand(3, 1, 1, generator=g) * 255
        ramp = torch.linspace(0, 1, w).view(1, 1, w) * torch.linspace(0, 1, h).view(1, h, 1) * 120
        noise = torch.randn(3, h, w, generator=g) * 20
        pixels = (base + ramp + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
        path = folder / f"img_{i:04d}.jpg"
        Image.frombytes("RGB", (w, h), pixels.numpy().tobytes()).save(path, quality=90)
        items.append(Item(impath=str(path), label=i % 10, classname=f"c{i % 10}"))
    return items


def epoch_images_per_s(dataset, batch: int, workers: int, repeats: int) -> list[float]:
    rates = []
    for r in range(repeats):
        dataset.set_epoch(r)
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(r))
        transform = getattr(dataset, "batch_transform", None)
        t0 = time.perf_counter()
        seen = 0
        for x, _ in loader:
            if transform is not None:
                x = transform(x)
            seen += x.shape[0]
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def per_worker_images_per_s(dataset, batch: int, repeats: int) -> float:
    """One worker's steady rate: samples made and collated in this process, one torch thread, no loader."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    transform = getattr(dataset, "batch_transform", None)
    rates = []
    try:
        for r in range(repeats):
            dataset.set_epoch(r)
            t0 = time.perf_counter()
            for start in range(0, len(dataset), batch):
                x = torch.stack([dataset[i][0] for i in range(start, min(start + batch, len(dataset)))])
                if transform is not None:
                    x = transform(x)  # on the GPU in training: counted here anyway
            rates.append(len(dataset) / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(rates)


def step_images_per_s(smoke: bool, device: torch.device, batch: int, warmup: int, steps: int) -> float:
    model = build_clip(smoke, device)
    classnames = CLASSNAMES[:10] if smoke else CLASSNAMES
    method = CoOpMethod(model, tokenizer_for(model, classnames), classnames).to(device).train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=2e-3)
    pixels, labels = synthetic_batch(model, batch, len(classnames), device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = method(pixels, labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=1, steps=3, gpu_warmup=5, gpu_steps=20)
    n_images, size, batch, repeats = (16, (64, 48), 4, 1) if args.smoke else (512, (500, 375), 32, 3)
    out_hw = (32, 32) if args.smoke else (224, 224)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    worker_counts = sorted({1, 2, cpus}) if not args.smoke else [1]  # the engine always loads in workers
    transform = TrainTransform(out_hw, resample=3, normalise=_Normalise(1 / 255, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)))

    with tempfile.TemporaryDirectory() as tmp:  # generated images never land in the clone
        items = make_images(Path(tmp), n_images, size)
        t0 = time.perf_counter()
        decoded = DecodedImageDataset(items, transform, seed=1)
        decode_s = time.perf_counter() - t0
        pil = ImageDataset(items, transform, seed=1)
        rows, runs = [], []
        a, b = per_worker_images_per_s(pil, batch, repeats), per_worker_images_per_s(decoded, batch, repeats)
        print(f"one worker, steady: PIL {a:.0f} img/s, decoded once {b:.0f} img/s (x{b / a:.2f})", flush=True)
        rows.append(["1 (steady rate, no loader)", f"{a:.0f}", f"{b:.0f}", f"{b / a:.2f}"])
        runs.append({"workers": "steady", "pil_images_per_s": a, "decoded_images_per_s": b, "ratio": b / a})
        for workers in worker_counts:
            a = statistics.median(epoch_images_per_s(pil, batch, workers, repeats))
            b = statistics.median(epoch_images_per_s(decoded, batch, workers, repeats))
            print(f"W={workers}: PIL {a:.0f} img/s, decoded once {b:.0f} img/s (x{b / a:.2f})", flush=True)
            rows.append([workers, f"{a:.0f}", f"{b:.0f}", f"{b / a:.2f}"])
            runs.append({"workers": workers, "pil_images_per_s": a, "decoded_images_per_s": b, "ratio": b / a})
    step = step_images_per_s(args.smoke, device, batch if args.smoke else 8, args.warmup, args.steps)
    print(f"CoOp + TextRefiner step: {step:.1f} img/s on {device}", flush=True)
    one = next(r for r in runs if r["workers"] == "steady")
    checks = [
        Check.timing(args, "decoded once / PIL, one worker's steady rate", "≥ 2", f"{one['ratio']:.2f}", one["ratio"] >= 2),
        Check.timing(args, "decoded-once worker / CPU step, images/s", "≥ 1", f"{one['decoded_images_per_s'] / step:.1f}", one["decoded_images_per_s"] >= step, cpu_only=True),
    ]
    write_results(
        args,
        "loader",
        f"Training loader images/s: decoded once vs PIL ({n_images} JPEGs of {size[0]}x{size[1]}, batch {batch}, output {out_hw[0]} px)",
        tables={"": (["workers", "PIL img/s", "decoded once img/s", "ratio"], rows),
                "step": (["CoOp + TextRefiner step (ViT-B/16 shapes, 100 classes)", "images/s"], [[f"batch {batch if args.smoke else 8} on {device}", f"{step:.1f}"]])},
        checks=checks,
        data={"runs": runs, "decode_once_seconds": decode_s, "images": n_images, "step_images_per_s": step, "cpus": cpus},
        notes=[
            f"Decoding the {n_images} images once took {decode_s:.2f} s (done once per run, before the first epoch).",
            "Workers share the decoded images through fork (copy-on-write); epochs reuse them.",
            "The loader rows include starting the workers, once per epoch (the engine builds a loader per epoch); "
            "the steady row is what one worker sustains, the number to size a GPU's workers with.",
            "How many workers a GPU needs: divide the GPU step's images/s by the per-worker decoded-once rate (see README).",
        ],
    )


if __name__ == "__main__":
    main()
