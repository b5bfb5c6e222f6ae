"""Shared pieces of the benchmark scripts: models, synthetic inputs, timing, result files.

Every benchmark is a standalone script (``python benchmarks/bench_x.py``) that imports this
module from its own folder. Nothing here downloads anything: the CLIP models are built from
configs with random weights, and the tokenizer is built offline from the class names used.

Timing protocol (nanoGPT ``bench.py`` / timm ``benchmark.py``): warm up every variant, then
time the variants **interleaved**, one step of each in turn, so that load from other
processes on a shared machine hits every variant alike; report the median and the min–max of
each variant and the ratios of medians measured in the same run. On CUDA every timed call is
bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results"
CONTEXT_LENGTH = 77

# --------------------------------------------------------------------------- class names
# Class names in the style of the 11 base-to-novel datasets (ImageNet, Caltech101, OxfordPets,
# StanfordCars, Flowers102, Food101, FGVCAircraft, SUN397, DTD, EuroSAT, UCF101): short common
# nouns, breed and species names, car "year make model" strings, aircraft variants with
# digits, multi-word scene and action names. With a CLIP-like tokenizer (a token per word,
# per digit and per punctuation mark) the prompt "a photo of a {name}." is 8 to 20 tokens long.
DATASET_CLASSNAMES: dict[str, list[str]] = {
    "ImageNet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray",
                 "cock", "hen", "ostrich", "goldfinch", "house finch", "indigo bunting"],
    "Caltech101": ["accordion", "airplane", "anchor", "ant", "barrel", "bass", "beaver", "binocular", "bonsai"],
    "OxfordPets": ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle",
                   "bengal", "birman", "bombay", "boxer", "british shorthair"],
    "StanfordCars": ["2012 aston martin v8 vantage convertible", "2012 audi tts coupe", "2007 bmw x5 suv",
                     "2012 chevrolet silverado 1500 hybrid crew cab", "2010 dodge ram pickup 3500 crew cab",
                     "2012 hyundai sonata hybrid sedan", "1993 volvo 240 sedan", "2012 tesla model s"],
    "Flowers102": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                   "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood"],
    "Food101": ["apple pie", "baby back ribs", "baklava", "beef carpaccio", "beef tartare", "beet salad",
                "bibimbap", "bread pudding", "breakfast burrito"],
    "FGVCAircraft": ["707-320", "727-200", "737-200", "737-300", "747-400", "a300b4", "a310", "a318", "a319",
                     "cessna 172", "dhc-8-100"],
    "SUN397": ["abbey", "airplane cabin", "airport terminal", "alley", "amphitheater", "amusement arcade",
               "apartment building outdoor", "aquarium"],
    "DTD": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked"],
    "EuroSAT": ["annual crop land", "forest", "herbaceous vegetation land", "highway or road",
                "industrial buildings", "pasture land", "permanent crop land"],
    "UCF101": ["apply eye makeup", "apply lipstick", "archery", "baby crawling", "balance beam",
               "band marching", "baseball pitch", "basketball", "bench press"],
}  # fmt: skip
# The 100 classes of the training-step benchmarks: a mix of all eleven.
CLASSNAMES: list[str] = [name for names in DATASET_CLASSNAMES.values() for name in names]
assert len(CLASSNAMES) == 100, len(CLASSNAMES)

# CLIP's pre-tokenisation: words, single digits, single punctuation marks.
_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+"""


def clip_like_tokenizer(texts: list[str], vocab_size: int = 49408, model_max_length: int = CONTEXT_LENGTH):
    """A real Hugging Face fast tokenizer that splits text like CLIP's and knows every piece of ``texts``.

    One token per word, per digit and per punctuation mark (CLIP's BPE keeps common English
    words whole and always splits digits), ``<|startoftext|>`` / ``<|endoftext|>`` with
    CLIP's ids (49406 / 49407, the last two of a 49408 vocabulary), padding with the end token,
    so the end-of-text position of each prompt is where a CLIP tokenizer would put it.
    """
    import re

    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = sorted({p for t in texts for p in re.findall(_SPLIT, t.lower())})
    vocab = {p: 1 + i % (vocab_size - 3) for i, p in enumerate(pieces)}  # ids wrap in a tiny vocabulary
    vocab["<|unk|>"] = 0
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = vocab_size - 2, vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        unk_token="<|unk|>",
        model_max_length=model_max_length,
    )


def tokenizer_for(model: Any, classnames: list[str], template: str = "a photo of a {}.") -> Any:
    """:func:`clip_like_tokenizer` over the prompts of ``classnames``, sized to ``model``'s vocabulary."""
    vocab_size = model.config.text_config.vocab_size
    return clip_like_tokenizer([template.format(c) for c in classnames] + [template], vocab_size=vocab_size)


@torch.no_grad()
def zero_shot_classifier(model: Any, tokenizer: Any, classnames: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """(C, d) normalised CLIP text features of the prompts: the zero-shot classifier."""
    device = next(model.parameters()).device
    batch = tokenizer([template.format(c) for c in classnames], padding="max_length", max_length=CONTEXT_LENGTH, return_tensors="pt")
    out = model.get_text_features(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    features = out.pooler_output if hasattr(out, "pooler_output") else out
    return torch.nn.functional.normalize(features, dim=-1)


def prompt_lengths(tokenizer: Any, classnames: list[str], template: str = "a photo of a {}.") -> list[int]:
    """Tokens of each prompt, start and end tokens included."""
    return [len(tokenizer(template.format(c))["input_ids"]) for c in classnames]


# --------------------------------------------------------------------------- models
def vit_b16_config():
    """``CLIPConfig`` of CLIP ViT-B/16: vision 768 wide, 12 layers, 12 heads, patch 16, 224 px;
    text 512 wide, 12 layers, 8 heads, 77 positions; joint projection 512."""
    from transformers import CLIPConfig

    text = dict(
        vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
        max_position_embeddings=CONTEXT_LENGTH, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=512,
    )  # fmt: skip
    vision = dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, projection_dim=512,
    )  # fmt: skip
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)


def build_clip(smoke: bool, device: torch.device, *, seed: int = 0, attn_implementation: str | None = None):
    """A random-weight CLIP in eval mode: ViT-B/16-sized, or ``textrefiner.testing.tiny_clip()`` with ``smoke``."""
    from transformers import CLIPModel

    from textrefiner.testing import tiny_clip_config

    config = tiny_clip_config() if smoke else vit_b16_config()
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
        for sub in (config.text_config, config.vision_config):
            sub._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.to(device).eval()


def shared_copy(model: Any, *, attn_implementation: str | None = None) -> Any:
    """A second model object over the *same* weight tensors (no extra memory) and without hooks,
    optionally with another attention implementation (e.g. ``"eager"`` for attention weights)."""
    import copy

    config = copy.deepcopy(model.config)
    if attn_implementation is not None:
        for c in (config, config.text_config, config.vision_config):
            c._attn_implementation = attn_implementation
    clone = type(model)(config)
    clone.load_state_dict(model.state_dict(), assign=True)
    return clone.to(next(model.parameters()).device).eval()


def image_size(model: Any) -> int:
    return model.config.vision_config.image_size


def synthetic_batch(model: Any, batch: int, num_classes: int, device: torch.device, seed: int = 0):
    """Random normalised pixels (B, 3, H, W) and labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    s = image_size(model)
    pixels = torch.randn(batch, 3, s, s, generator=g).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    return pixels, labels


# --------------------------------------------------------------------------- CLI
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 warm-up, 2 steps: checks the script runs")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available, else cpu)")
    p.add_argument("--output-dir", type=Path, default=None, help=f"where JSON and Markdown go (default {DEFAULT_OUTPUT}; --smoke: its smoke/ sub-folder, git-ignored)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per variant (default: per script)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: per script)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def resolve(args: argparse.Namespace, warmup: int, steps: int, *, gpu_warmup: int | None = None, gpu_steps: int | None = None) -> torch.device:
    """Fill in device, warm-up and step counts (smoke: 1 and 2); returns the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.output_dir is None:  # smoke runs never land next to the real, committed results
        args.output_dir = DEFAULT_OUTPUT / "smoke" if args.smoke else DEFAULT_OUTPUT
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    gpu = device.type == "cuda"
    if args.smoke:
        warmup, steps = 1, 2
    elif gpu:
        warmup, steps = gpu_warmup or warmup, gpu_steps or steps
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps = steps if args.steps is None else args.steps
    args.device = str(device)
    return device


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Milliseconds of each timed call of one variant."""

    name: str
    ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    def row(self) -> dict[str, Any]:
        return {"variant": self.name, "median_ms": self.median, "min_ms": min(self.ms), "max_ms": max(self.ms), "steps": len(self.ms)}


def compare(variants: dict[str, Callable[[], Any]], *, warmup: int, steps: int, device: torch.device) -> dict[str, Timing]:
    """Warm up each variant, then time them interleaved (one call of each per round)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    timings = {name: Timing(name) for name in variants}
    for _ in range(steps):
        for name, fn in variants.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            timings[name].ms.append((time.perf_counter() - t0) * 1e3)
    return timings


def ratio(a: Timing, b: Timing) -> float:
    """median(a) / median(b)."""
    return a.median / b.median


def ratio_min(a: Timing, b: Timing) -> float:
    """min(a) / min(b): on a loaded shared machine the least-disturbed steps, a second estimate."""
    return min(a.ms) / min(b.ms)


# --------------------------------------------------------------------------- results
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_1min": load,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def fmt_ms(row: dict[str, Any]) -> str:
    return f"{row['median_ms']:.2f} ({row['min_ms']:.2f}–{row['max_ms']:.2f})"


def print_timings(timings: dict[str, Timing], baseline: str | None = None) -> None:
    width = max(len(n) for n in timings)
    for name, t in timings.items():
        extra = f"  x{ratio(t, timings[baseline]):.3f} vs {baseline} (mins x{ratio_min(t, timings[baseline]):.3f})" if baseline and name != baseline else ""
        print(f"  {name:<{width}}  median {t.median:9.2f} ms  (min {min(t.ms):.2f}, max {max(t.ms):.2f}){extra}", flush=True)


@dataclass
class Check:
    """A target and whether the measurement met it."""

    name: str
    target: str
    measured: str
    ok: bool | None  # None: informational, no target on this device

    @classmethod
    def timing(cls, args: argparse.Namespace, name: str, target: str, measured: str, ok: bool, *, cpu_only: bool = False) -> Check:
        """A timing target: informational at smoke sizes (and on GPU when the target is CPU-only)."""
        informational = args.smoke or (cpu_only and str(args.device).startswith("cuda"))
        return cls(name, target + (" (CPU)" if cpu_only else ""), measured, None if informational else bool(ok))

    def row(self) -> dict[str, Any]:
        return {"check": self.name, "target": self.target, "measured": self.measured, "ok": self.ok}


def write_results(
    args: argparse.Namespace,
    name: str,
    title: str,
    *,
    tables: dict[str, tuple[list[str], list[list[Any]]]],
    checks: list[Check],
    data: dict[str, Any],
    notes: list[str] = (),
    method: str | None = None,
) -> tuple[Path, Path]:
    """Write ``{cpu,gpu}[_smoke]_{name}.json`` and ``.md`` under ``args.output_dir``; print the checks.

    ``method`` says how the numbers were measured, where the default sentence (warm-up + timed
    steps per variant, interleaved, medians) does not fit.
    """
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = ("gpu" if str(args.device).startswith("cuda") else "cpu") + ("_smoke" if args.smoke else "")
    stem = f"{prefix}_{name}"
    info = machine()
    payload = {
        "benchmark": name,
        "title": title,
        "device": args.device,
        "smoke": bool(args.smoke),
        "warmup": args.warmup,
        "steps": args.steps,
        "machine": info,
        "checks": [c.row() for c in checks],
        "tables": {k: {"columns": cols, "rows": rows} for k, (cols, rows) in tables.items()},
        "data": data,
        "notes": list(notes),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"## {title}", ""]
    where = info.get("gpu") if str(args.device).startswith("cuda") else f"{info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} torch threads"
    method = method or f"{args.warmup} warm-up + {args.steps} timed steps per variant, interleaved; times in ms, median (min–max); ratios of medians, and of minimums where shown."
    lines += [f"Device `{args.device}` ({where}); torch {info['torch']}; {method}" + (" **Smoke sizes: not a measurement.**" if args.smoke else ""), ""]
    for heading, (cols, rows) in tables.items():
        if heading:
            lines += [f"**{heading}**", ""]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        lines.append("")
    if checks:
        lines += ["| check | target | measured | met |", "|---|---|---|---|"]
        for c in checks:
            met = "—" if c.ok is None else ("yes" if c.ok else "**no**")
            lines.append(f"| {c.name} | {c.target} | {c.measured} | {met} |")
        lines.append("")
    for n in notes:
        lines.append(f"- {n}")
    if notes:
        lines.append("")
    md_path = out / f"{stem}.md"
    md_path.write_text("\n".join(lines))
    print()
    for c in checks:
        met = "info" if c.ok is None else ("MET" if c.ok else "MISSED")
        print(f"[{met}] {c.name}: {c.measured} (target {c.target})")
    print(f"wrote {json_path} and {md_path}", flush=True)
    return json_path, md_path


def ensure_importable() -> None:
    """Let ``python benchmarks/bench_x.py`` find ``textrefiner`` from a source checkout."""
    src = HERE.parent / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
