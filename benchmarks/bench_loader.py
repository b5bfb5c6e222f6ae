"""Training input pipeline: images/s of the loader's three ways to make a batch, next to a step's.

Legend: B images per batch, W loader worker processes.

All three make the training batches of ``textrefiner train`` (random-resized-crop to 224, flip,
normalise) from the same JPEG files (500 x 375, a typical few-shot dataset image), bit-identical:
* PIL per file (before): ``ImageDataset`` + ``TrainTransform``: every sample decodes its JPEG and
  crops / resizes / flips / normalises with PIL, in W workers;
* decoded once, workers augment: ``DecodedImageDataset(augment_on="workers")``: the JPEGs are
  decoded once (that time is reported apart); a sample is the same crop + resize + flip with
  Pillow of the kept pixels, uint8; the batch is normalised where it lands;
* decoded once, device augments (the default on a GPU): ``augment_on="device"``: a worker only
  draws the crop, cuts it out and computes the resampling weights (``collate``); the batch is
  resized (two float64 matrix products), flipped and normalised where it lands.
The worker columns time what runs in the loader: one worker's steady rate in this process (one
torch thread, no loader), then epochs through one ``DataLoader`` with W = 1, 2, N workers (N:
the machine's CPUs) that persist across epochs, as the engine's do (start-up reported apart). The device table times what
``batch_transform`` does where the batch lands, on this run's device. The step is a CoOp +
TextRefiner training step (ViT-B/16 shapes, 100 classes) on the device, as images/s, in the same run.

    python benchmarks/bench_loader.py [--smoke] [--device cuda]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import CLASSNAMES, Check, build_clip, ensure_importable, parser, resolve, synthetic_batch, tokenizer_for, write_results

ensure_importable()

from torch.utils.data import DataLoader, default_collate  # noqa: E402

from textrefiner._machine import available_cpus  # noqa: E402
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


def epoch_images_per_s(dataset, batch: int, workers: int, repeats: int) -> tuple[list[float], float]:
    """Epochs through one DataLoader whose workers persist, as the engine's: what the workers
    deliver (``batch_transform`` not included), and the first epoch's extra seconds (start-up)."""
    from textrefiner.data.batches import GlobalBatchSampler

    sampler = GlobalBatchSampler(len(dataset), batch, seed=0, epoch=0, tag_epoch=True)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0, collate_fn=getattr(dataset, "collate_fn", None))
    times = []
    for r in range(repeats + 1):  # the first epoch starts the workers
        sampler.set_epoch(r)
        t0 = time.perf_counter()
        seen = sum(labels.shape[0] for _, labels in loader)
        times.append(time.perf_counter() - t0)
    del loader
    return [seen / t for t in times[1:]], times[0] - statistics.median(times[1:])


def per_worker_images_per_s(dataset, batch: int, repeats: int) -> float:
    """One worker's steady rate: samples made and collated in this process, one torch thread, no loader."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    collate = getattr(dataset, "collate_fn", None) or default_collate
    rates = []
    try:
        for r in range(repeats):
            dataset.set_epoch(r)
            t0 = time.perf_counter()
            for start in range(0, len(dataset), batch):
                collate([dataset[i] for i in range(start, min(start + batch, len(dataset)))])
            rates.append(len(dataset) / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(rates)


def device_images_per_s(dataset, batch: int, device: torch.device, batches: int, repeats: int) -> tuple[float, float]:
    """``batch_transform`` where the batch lands (made and moved beforehand): images/s, and the
    float64 multiply-adds per image of the resize (0 when the batch is already resized)."""
    dataset.set_epoch(0)
    collate = getattr(dataset, "collate_fn", None) or default_collate
    made = [collate([dataset[i] for i in range(k * batch, (k + 1) * batch)])[0] for k in range(batches)]
    made = [x.to(device) for x in made]
    flops = 0.0
    for x in made:
        for g in getattr(x, "groups", ()):
            n, (h_in, w_in) = len(g.shapes), (max(d) for d in zip(*g.shapes))  # padded where the batch lands
            h, w = x.size
            first = h_in * w_in * w + h_in * w * h if g.horizontal_first else h_in * w_in * h + h * w_in * w
            flops += n * 3 * first
    flops /= batches * batch
    dataset.batch_transform(made[0])  # warm-up
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in made:
            dataset.batch_transform(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(batches * batch / (time.perf_counter() - t0))
    return statistics.median(rates), flops


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


VARIANTS = ("PIL per file", "decoded, workers augment", "decoded, device augments")


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = resolve(args, warmup=1, steps=3, gpu_warmup=5, gpu_steps=20)
    n_images, size, batch, repeats = (16, (64, 48), 4, 1) if args.smoke else (512, (500, 375), 32, 3)
    out_hw = (32, 32) if args.smoke else (224, 224)
    cpus = available_cpus()
    worker_counts = sorted({1, 2, cpus}) if not args.smoke else [1]  # the engine always loads in workers
    transform = TrainTransform(out_hw, resample=3, normalise=_Normalise(1 / 255, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)))
    device_batches = 2 if args.smoke else (16 if device.type == "cuda" else 4)  # CPU float64 products are slow: fewer

    with tempfile.TemporaryDirectory() as tmp:  # generated images never land in the clone
        items = make_images(Path(tmp), n_images, size)
        t0 = time.perf_counter()
        workers_aug = DecodedImageDataset(items, transform, seed=1, augment_on="workers")
        decode_s = time.perf_counter() - t0
        datasets = dict(zip(VARIANTS, (ImageDataset(items, transform, seed=1), workers_aug, DecodedImageDataset(items, transform, seed=1, augment_on="device"))))
        rates: dict[str, dict[str, float]] = {v: {} for v in VARIANTS}
        for name, ds in datasets.items():
            rates[name]["steady"] = per_worker_images_per_s(ds, batch, repeats)
            print(f"{name}: one worker, steady: {rates[name]['steady']:.0f} img/s", flush=True)
        startup = {}
        for workers in worker_counts:
            for name, ds in datasets.items():
                epochs, startup[(name, workers)] = epoch_images_per_s(ds, batch, workers, repeats)
                rates[name][f"W={workers}"] = statistics.median(epochs)
                print(f"{name}: W={workers}: {rates[name][f'W={workers}']:.0f} img/s (start-up {startup[(name, workers)]:.2f} s)", flush=True)
        landed = {}
        for name in VARIANTS[1:]:
            landed[name] = device_images_per_s(datasets[name], batch, device, device_batches, repeats)
            print(f"{name}: batch_transform on {device}: {landed[name][0]:.0f} img/s", flush=True)
    step = step_images_per_s(args.smoke, device, batch if args.smoke else 8, args.warmup, args.steps)
    print(f"CoOp + TextRefiner step: {step:.1f} img/s on {device}", flush=True)
    pil, aug, dev = (rates[v]["steady"] for v in VARIANTS)
    checks = [
        Check.timing(args, "device-augments worker / PIL-per-file worker, steady images/s", "≥ 5", f"{dev / pil:.1f}", dev / pil >= 5),
        Check.timing(args, "decoded, workers augment / PIL per file, steady images/s", "≥ 2", f"{aug / pil:.2f}", aug / pil >= 2),
        Check.timing(args, "device-augments worker / CPU step, images/s", "≥ 1", f"{dev / step:.1f}", dev >= step, cpu_only=True),
    ]
    columns = ["steady", *(f"W={w}" for w in worker_counts)]
    flops = landed[VARIANTS[2]][1]
    write_results(
        args,
        "loader",
        f"Training loader images/s: PIL per file vs decoded once ({n_images} JPEGs of {size[0]}x{size[1]}, batch {batch}, output {out_hw[0]} px)",
        tables={
            "in the loader workers (images/s)": (["way", "one worker, steady", *(f"{w} worker(s), loader" for w in worker_counts)],
                                                 [[v, *(f"{rates[v][c]:.0f}" for c in columns)] for v in VARIANTS]),
            f"where the batch lands: batch_transform on {device} (images/s)": (
                ["way", "images/s", "float64 multiply-adds per image"],
                [[v, f"{landed[v][0]:.0f}", f"{landed[v][1] / 1e6:.0f} M" if landed[v][1] else "0 (normalise only)"] for v in VARIANTS[1:]]),
            "step": (["CoOp + TextRefiner step (ViT-B/16 shapes, 100 classes)", "images/s"], [[f"batch {batch if args.smoke else 8} on {device}", f"{step:.1f}"]]),
        },
        checks=checks,
        method=f"images/s are medians of {repeats} epoch(s) per way and worker count (after one epoch that starts the workers), "
        f"of {repeats} pass(es) for the steady and device rates; the step: {args.warmup} warm-up + {args.steps} timed steps, median.",
        data={"rates": rates, "landed_images_per_s": {v: landed[v][0] for v in landed}, "resize_multiply_adds_per_image": flops,
              "decode_once_seconds": decode_s, "startup_seconds": {f"{k[0]}, W={k[1]}": v for k, v in startup.items()}, "images": n_images, "step_images_per_s": step, "cpus": cpus},
        notes=[
            f"Decoding the {n_images} images once took {decode_s:.2f} s (done once per run, before the first epoch).",
            "Workers share the decoded images through fork (copy-on-write); epochs reuse them.",
            "The loader columns are epochs through one DataLoader whose workers persist, as the engine's (made once per run); "
            "starting the workers cost "
            + ", ".join(f"{startup[(VARIANTS[2], w)]:.2f} s" for w in worker_counts)
            + f" more in the first epoch with {', '.join(str(w) for w in worker_counts)} worker(s) (device-augments way). "
            "The steady column is what one worker sustains, the number to size a GPU's workers with: "
            "workers needed = the GPU step's images/s / one worker's steady rate.",
            f"The device's resize is {flops / 1e6:.0f} M float64 multiply-adds per image here (a 500x375 image's random crops to 224 px); "
            "on CPU that is slower than Pillow, which is why `--augment-on auto` augments in the workers there and on the device only on a GPU.",
        ],
    )


if __name__ == "__main__":
    main()
