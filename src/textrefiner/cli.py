"""The ``textrefiner`` command: train, eval, table, inspect, datasets and demo.

    textrefiner train --method coop --textrefiner --model openai/clip-vit-base-patch16 \\
        --dataset eurosat --root ~/data --shots 16 --seed 1 --output-dir runs/coop_tr/eurosat/seed1
    textrefiner eval --run-dir runs/coop_tr/eurosat/seed1
    textrefiner table runs/coop_tr/eurosat/seed* --plot
    textrefiner inspect runs/coop_tr/eurosat/seed1 --output-dir inspect/eurosat
    textrefiner demo            # offline: the mini CLIP on mini datasets, zero-shot vs CoOp vs CoOp + TextRefiner
    textrefiner                 # usage and the list of commands
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .results import aggregate_results, read_runs, results_table

SMOKE_BANNER = (
    "SMOKE RUN OF THE PIPELINE, NOT A RESULT: a tiny CLIP with random weights on generated images.\n"
    "It exercises the real data, training, checkpoint and evaluation code; its accuracies mean nothing."
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except where the help already says it or there is none to show.

    Flags that are off unless given (``store_true``) and options whose default is "not set"
    (None) say in their own help what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "default" in help or action.default in (None, False, argparse.SUPPRESS) or action.required:
            return help
        if not action.option_strings and action.nargs not in ("?", "*"):
            return help
        return help + " (default: %(default)s)"


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    # the names come from a torch-free module so that `--help` stays fast
    from ._names import AUGMENT_NAMES, COMPILE_MODES, METHOD_NAMES, PRECISION_NAMES

    p.add_argument(
        "--recipe", default=None, metavar="NAME",
        help="start from a named recipe, the authors' release config (see `textrefiner recipes`); options given "
        "explicitly override it, and run_config.json records the result (default: none, the options below)",
    )
    p.add_argument("--method", default="coop", choices=METHOD_NAMES, help="prompt learner")
    p.add_argument("--textrefiner", action=argparse.BooleanOptionalAction, default=True, help="add TextRefiner (default: on)")
    p.add_argument("--model", default="openai/clip-vit-base-patch16", help="Hub id or local folder of a CLIP-family model")
    p.add_argument("--dataset", required=True, help="dataset name (see `textrefiner datasets`) or imagefolder")
    p.add_argument("--root", required=True, help="data folder in the CoOp layout")
    p.add_argument("--shots", type=int, default=16, help="training images per class (0: all)")
    p.add_argument(
        "--strict-shots", action="store_true",
        help="stop with an error when a class has fewer training images than --shots (default: keep all of them, "
        "with a warning naming the classes, as the reference does)",
    )
    p.add_argument("--seed", type=int, default=1, help="seeds few-shot sampling, initialisation and data order")
    p.add_argument("--subsample", default="base", choices=["base", "novel", "all"], help="classes to train on")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 10; --model mini: the mini recipe's 25)")
    p.add_argument(
        "--batch-size", type=int, default=None,
        help="training images per step, over all processes (the global batch) (default: 32; --model mini: 16)",
    )
    p.add_argument(
        "--lr", type=float, default=None,
        help="SGD learning rate after the warm-up (cosine schedule) (default: 0.002; --model mini: 0.05)",
    )
    p.add_argument("--warmup-epochs", type=int, default=1, help="constant warm-up epochs at --warmup-lr")
    p.add_argument("--warmup-lr", type=float, default=1e-5, help="learning rate during the warm-up")
    p.add_argument(
        "--select", default="auto", choices=["auto", "best-val", "last"],
        help="model selection: best-val scores the val split after every epoch and tests the first epoch with the best "
        "accuracy (the release's base-to-novel choice); last tests the last epoch (cross-dataset); auto: best-val unless "
        "--subsample all or --method promptsrc (its GPA aggregate is the last epoch); --model mini: last, the mini recipe's",
    )
    p.add_argument(
        "--val-split", default="val", choices=["val", "test"],
        help="what best-val scores: the few-shot val split (ImageNet's is its test split), or the test split (PromptKD's release)",
    )
    p.add_argument("--output-dir", required=True, help="where weights, logs, checkpoint and results.json go")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto picks CUDA when available)")
    p.add_argument("--precision", default="auto", choices=PRECISION_NAMES, help="fp32; tf32: fp32 weights, TF32 tensor-core matmuls (CUDA only); bf16/fp16: autocast, the frozen model's matmul weights stored in that dtype (fp16 with a gradient scaler); auto: bf16 on a CUDA GPU that supports it, else fp32")
    p.add_argument("--num-workers", type=int, default=None, help="data-loading worker processes (0: load in the main process; default: the CPUs available less one, at most 16)")
    p.add_argument("--decode-once", action=argparse.BooleanOptionalAction, default=True, help="decode training images once into memory and augment them with tensor ops (default: on)")
    p.add_argument("--max-image-side", type=int, default=None, help="with --decode-once: cap the kept images' long side in pixels (default: original size)")
    p.add_argument(
        "--augment-on", default="auto", choices=AUGMENT_NAMES,
        help="with --decode-once: resize the random crops in the loader workers (Pillow) or on the training device "
        "(batched matrix products, the same pixels); auto: the device on a CUDA GPU, else the workers",
    )
    p.add_argument("--eval-datasets", nargs="*", default=[], help="cross-dataset / domain-generalisation targets, tested after training on all classes (--subsample all) (default: none)")
    p.add_argument("--n-ctx", type=int, default=None, help="context tokens (default: from --ctx-init, else 4)")
    p.add_argument("--ctx-init", default="a photo of a", help='context initialisation words; "" for random')
    p.add_argument("--prompt-depth", type=int, default=None, help="MaPLe / PromptKD / PromptSRC: layers with prompts (default: 9 of 12, 3/4 of the depth)")
    p.add_argument("--class-specific", action="store_true", help="CoOp: one context per class (CSC, class-specific context)")
    p.add_argument(
        "--max-prompts", type=int, default=None,
        help="CoCoOp: the most (image, class) prompts per text pass; a bigger batch runs in chunks of whole images with "
        "activation checkpointing, the same results in less memory (default: 4096)",
    )
    p.add_argument("--gpa-mean", type=float, default=None, help="PromptSRC: mean epoch of the Gaussian prompt aggregation (default: 15)")
    p.add_argument("--gpa-std", type=float, default=None, help="PromptSRC: its standard deviation in epochs (default: 1)")
    p.add_argument("--kg-weight", type=float, default=None, help="KgCoOp: W, the weight of 1 - cos(prompted, hand-made prompt) (default: 8)")
    p.add_argument(
        "--teacher", default=None,
        help="PromptKD: teacher model id or folder, or the folder of a finished promptsrc (or coop, kgcoop, maple) run, "
        "whose trained prompts then teach (default: none; required for promptkd)",
    )
    p.add_argument(
        "--kd-weight", type=float, default=None,
        help="PromptKD: KD_W, the distillation loss weight; TextRefiner's semantic and regularisation weights follow as "
        "KD_W/100 and KD_W/50 (default: the release's value for the dataset: 1000; 200 for fgvc_aircraft, oxford_flowers, dtd)",
    )
    p.add_argument("--unlabeled", action="store_true", help="PromptKD: distil on the train images of all classes, labels unused")
    p.add_argument("--unlabeled-root", default=None, help="PromptKD: distil on every image under this folder, no labels needed (default: none)")
    p.add_argument("--cache-size", type=int, default=None, help="TextRefiner cache slots M (default: 25)")
    p.add_argument("--alpha", type=float, default=None, help="TextRefiner fuse weight alpha (default: 0.2)")
    p.add_argument("--semantic-weight", type=float, default=None, help="lambda_1, weight of the semantic loss (default: 0.02)")
    p.add_argument("--regularization-weight", type=float, default=None, help="lambda_2, weight of the regularisation loss (default: 20)")
    p.add_argument("--sync-batchnorm", action="store_true", help="share the alignment BatchNorm statistics across processes (torchrun/accelerate; any backend): the run then equals one process at the same global --batch-size")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--log-every", type=int, default=20, help="read the losses (one host sync) once per this many steps, and at each epoch's end")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (after the refiner's hooks are attached)")
    p.add_argument(
        "--compile-mode", default=None, choices=COMPILE_MODES,
        help="with --compile: torch.compile's mode; reduce-overhead replays the step as CUDA graphs (fewer kernel launches; "
        "CUDA only, ignored by torch on CPU), max-autotune also tunes the kernels (default: torch's default mode)",
    )


# Options that land inside RunConfig's method_options / refiner_options, and flags named unlike their field.
_OPTION_OF_FLAG = {
    "n_ctx": "method_options.n_ctx", "ctx_init": "method_options.ctx_init", "class_specific": "method_options.class_specific",
    "prompt_depth": "method_options.prompt_depth", "max_prompts": "method_options.max_prompts", "cache_size": "refiner_options.cache_size",
    "gpa_mean": "method_options.gpa_mean", "gpa_std": "method_options.gpa_std", "kg_weight": "method_options.kg_weight",
    "alpha": "refiner_options.alpha", "semantic_weight": "refiner_options.semantic_weight",
    "regularization_weight": "refiner_options.regularization_weight", "sync_batchnorm": "refiner_options.sync_batchnorm",
    "no_progress": "progress",
}


def _given_settings(argv: Sequence[str]) -> set[str]:
    """The RunConfig settings the user wrote on the command line (so a recipe does not replace them)."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_run_arguments(probe)
    for action in probe._actions:
        action.default, action.required = argparse.SUPPRESS, False
    given, _ = probe.parse_known_args(list(argv))
    return {_OPTION_OF_FLAG.get(name, name) for name in vars(given)}


def _run_config(args: argparse.Namespace):
    from .training import RunConfig

    method_options: dict[str, Any] = {"ctx_init": args.ctx_init or None}
    if args.n_ctx is not None:
        method_options["n_ctx"] = args.n_ctx
    if args.prompt_depth is not None:
        method_options["prompt_depth"] = args.prompt_depth
    if args.class_specific:
        method_options["class_specific"] = True
    if args.max_prompts is not None:
        method_options["max_prompts"] = args.max_prompts
    for name in ("gpa_mean", "gpa_std", "kg_weight"):
        if getattr(args, name) is not None:
            method_options[name] = getattr(args, name)
    refiner = {
        k: getattr(args, k)
        for k in ("cache_size", "alpha", "semantic_weight", "regularization_weight")
        if getattr(args, k) is not None
    }
    if args.sync_batchnorm:
        refiner["sync_batchnorm"] = True
    settings = dict(
        dataset=args.dataset, root=args.root, output_dir=args.output_dir, model=args.model, method=args.method,
        textrefiner=args.textrefiner, shots=args.shots, seed=args.seed, subsample=args.subsample, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
        precision=args.precision, device=args.device, num_workers=args.num_workers, eval_datasets=args.eval_datasets,
        method_options=method_options, refiner_options=refiner, teacher=args.teacher, progress=not args.no_progress,
        unlabeled=args.unlabeled, unlabeled_root=args.unlabeled_root, select=args.select, val_split=args.val_split,
        log_every=args.log_every, compile=args.compile, compile_mode=args.compile_mode, decode_once=args.decode_once, max_image_side=args.max_image_side,
        augment_on=args.augment_on, kd_weight=args.kd_weight, strict_shots=args.strict_shots,
    )
    args.recipe_note = _default_recipe(settings)
    if args.recipe is not None:
        from .recipes import apply_recipe

        settings = apply_recipe(args.recipe, settings, _given_settings(getattr(args, "argv", ())))
        args.recipe_note = f"the named recipe {args.recipe} (see `textrefiner recipes`), with the options given"
    return RunConfig(**settings)


# What `train` uses for the options the user leaves out: the reference recipe (docs/method.md §7) for real
# models, the mini CLIP's own recipe (docs/mini.md) for `--model mini`.
REFERENCE_RECIPE = {"epochs": 10, "batch_size": 32, "lr": 0.002, "select": "auto"}


def _default_recipe(settings: dict[str, Any]) -> str:
    """Fill the recipe options left unset (None / auto) in ``settings``; returns one line saying which recipe."""
    from .mini.datasets import MINI_RECIPE
    from .mini.model import MODEL_NAME, WEIGHTS_DIR

    model = settings["model"]
    mini = model == MODEL_NAME or Path(model).expanduser().resolve() == WEIGHTS_DIR.resolve()
    recipe = MINI_RECIPE if mini else REFERENCE_RECIPE
    unset = [k for k in REFERENCE_RECIPE if settings[k] is None or (k == "select" and settings[k] == "auto")]
    if mini and settings.get("subsample") == "all":  # cross-dataset runs already test the last epoch
        unset = [k for k in unset if k != "select"]
    for key in unset:
        settings[key] = recipe[key]
    name = "the mini CLIP's recipe (docs/mini.md)" if mini else "the reference recipe (docs/method.md §7)"
    used = ", ".join(f"{k.replace('_', ' ')} {settings[k]}" for k in REFERENCE_RECIPE)
    if not unset:
        return f"{used}, all as given"
    given = sorted(set(REFERENCE_RECIPE) - set(unset))
    return f"{used}: {name}" + (f", with {', '.join('--' + k.replace('_', '-') for k in given)} as given" if given else "")


def _print_results(results: dict[str, Any]) -> None:
    print(results_table([results]))


def cmd_train(args: argparse.Namespace) -> int:
    from .training.summary import run_summary
    from .training import train

    cfg = _run_config(args)
    print(f"recipe: {args.recipe_note}", flush=True)
    results = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if results:
        _print_results(results)
        print(run_summary(results, cfg, recipe=args.recipe_note))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from .results import RESULTS
    from .training import RunConfig, evaluate_run

    if not Path(args.run_dir).is_dir():
        raise FileNotFoundError(f"--run-dir {args.run_dir} does not exist" if not Path(args.run_dir).exists() else
                                f"--run-dir {args.run_dir} is a file; expected the --output-dir folder of a `textrefiner train` run")
    cfg = RunConfig.load(args.run_dir)
    overrides = {k: v for k, v in {"root": args.root, "device": args.device, "output_dir": args.run_dir}.items() if v is not None}
    if args.eval_datasets is not None:
        overrides["eval_datasets"] = args.eval_datasets
    cfg = dataclasses.replace(cfg, **overrides, progress=not args.no_progress)
    from ._io import atomic_write_text
    from .training.rundir import RunLock

    with RunLock(args.run_dir, "eval"):  # no train or other eval writes into the folder meanwhile
        results = evaluate_run(cfg)
        atomic_write_text(Path(args.run_dir) / RESULTS, json.dumps(results, indent=2, sort_keys=True) + "\n")
    _print_results(results)
    return 0


# ---------------------------------------------------------------- tables
def cmd_table(args: argparse.Namespace) -> int:
    results = read_runs(args.runs)
    table = results_table(results)
    # OUTPUT.md / .json / .png: a dot inside OUTPUT (`lr0.002`) is kept; a given .md/.json suffix is not doubled
    stem = args.output[: -len(Path(args.output).suffix)] if args.output and Path(args.output).suffix in (".md", ".json") else args.output
    if args.output:
        Path(stem).parent.mkdir(parents=True, exist_ok=True)  # before printing: a bad place fails alone
    print(table, end="")
    if args.output:
        Path(stem + ".md").write_text(table)
        Path(stem + ".json").write_text(json.dumps(aggregate_results(results), indent=2, sort_keys=True) + "\n")
    if args.plot is not None:
        from .viz import plot_results, save

        png = Path(args.plot or (stem + ".png" if args.output else "table.png"))
        print(f"wrote {save(plot_results(results), png)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .viz import inspect_run

    summary = inspect_run(
        args.run_dir, args.output_dir, images=args.images, num_images=args.num_images, top_k=args.top_k,
        device=args.device, root=args.root,
    )
    for note in summary["notes"]:
        print(f"note: {note}")
    figures = summary["figures"]
    pngs = [figures[key] for key in ("curves", "reads", "overview") if key in figures] + figures.get("slots", [])
    print(f"wrote {len(pngs)} figures and {figures['index']}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import load_recipe, recipe_names

    for name in recipe_names():
        print(f"{name:50s} {load_recipe(name).summary}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import DATASETS

    for name, info in sorted(DATASETS.items()):
        print(f"{name:22s} {info}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(work_dir=args.work_dir, datasets=args.datasets, methods=args.methods, epochs=args.epochs, shots=args.shots,
             lr=args.lr, batch_size=args.batch_size, seed=args.seed, model=args.model, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; building it imports no torch, so ``--help`` answers at once."""
    from ._names import METHOD_NAMES
    from ._version import __version__
    from .mini.datasets import DEMO_DATASETS, MINI_DATASETS, MINI_RECIPE

    MINI_NAMES = [f"mini-{n}" for n in MINI_DATASETS]
    parser = argparse.ArgumentParser(
        prog="textrefiner", formatter_class=HelpFormatter, allow_abbrev=False,  # `--epoch 3` is an error, not --epochs
        description="TextRefiner prompt learning on Hugging Face CLIP models.",
        epilog="Try `textrefiner demo` for an offline demo on the mini CLIP, or `textrefiner COMMAND --help` for a command's options. "
        "The method: docs/method.md.",
    )
    parser.add_argument("--version", action="version", version=f"textrefiner {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, formatter_class=HelpFormatter, allow_abbrev=False)

    p = add("train", "train a prompt learner (with or without TextRefiner) and evaluate it",
            "Train a prompt learner on the few-shot base classes of a dataset with the reference recipe "
            "(docs/method.md §7), select the best epoch on validation, and evaluate it on base and novel "
            "classes (and on --eval-datasets). Writes run_config.json, weights, a checkpoint and results.json "
            "to --output-dir.")
    _add_run_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR from its checkpoint (same settings only)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUTPUT_DIR (its outputs are removed first)")
    p.set_defaults(func=cmd_train)

    p = add("eval", "evaluate a finished (or interrupted) run",
            "Evaluate the selected weights of a run folder written by `textrefiner train` and rewrite its results.json.")
    p.add_argument("--run-dir", required=True, help="the --output-dir of a `textrefiner train` run")
    p.add_argument("--root", default=None, help="data folder, if it moved since training (default: the run's)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the run's)")
    p.add_argument("--eval-datasets", nargs="*", default=None, help="cross-dataset targets (default: the run's)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=cmd_eval)

    p = add("table", "average results.json files over seeds into a Markdown + JSON table",
            "Average the results.json of several runs over seeds, one row per method and dataset, plus the "
            "mean over datasets, and print it as a Markdown table. HM is the harmonic mean of base and novel "
            "accuracy.")
    p.add_argument("runs", nargs="+", help="run folders or results.json files")
    p.add_argument("--output", default=None, help="also write OUTPUT.md and OUTPUT.json (default: print only)")
    p.add_argument(
        "--plot", nargs="?", const="", default=None, metavar="PNG",
        help="also draw base / novel / HM per dataset as grouped bars, one bar per method, into PNG (default: no "
        'plot; given without a value: OUTPUT.png, else table.png); needs matplotlib: pip install "textrefiner[plot]"',
    )
    p.set_defaults(func=cmd_table)

    p = add("inspect", "pictures of a finished run: cache slots on images, class -> slot reads, training curves",
            "Write PNG figures, summary.json (the numbers behind them) and index.html for one run folder: its "
            "training curves (log.json), every class's read weights over the cache slots (docs/method.md §4), and, "
            "for a few images, which patches' aligned tokens land in each cache slot (§2, §3). "
            'Needs matplotlib: pip install "textrefiner[plot]".')
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --output-dir of a `textrefiner train` run")
    p.add_argument("--output-dir", required=True, help="where the PNGs, summary.json and index.html go")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="show the first images of this folder (default: one test image each of evenly spread classes of the run's dataset)")
    p.add_argument("--num-images", type=int, default=4, help="how many images get a cache-slot figure")
    p.add_argument("--top-k", type=int, default=3, help="most-read slots marked per class")
    p.add_argument("--root", default=None, help="data folder, if it moved since training (default: the run's)")
    p.add_argument("--device", default="cpu", help="where to run the model: cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_inspect)

    p = add("recipes", "list the named training recipes (the authors' release configs) for `train --recipe`",
            "List the recipes `train --recipe NAME` accepts, one line each: the release configs of CoOp + TextRefiner, "
            "PromptKD + TextRefiner, CoCoOp and MaPLe. Each file (in the package's recipes/ folder) names the upstream "
            "config it mirrors and where each value comes from.")
    p.set_defaults(func=cmd_recipes)

    p = add("datasets", "list the known datasets and their folder layout",
            "List the dataset names `train --dataset` accepts and the folder layout each expects under --root.")
    p.set_defaults(func=cmd_datasets)

    p = add("demo", "offline demo on the mini CLIP: zero-shot CLIP, CoOp and CoOp + TextRefiner, base / novel / HM",
            "Load the mini CLIP shipped in the package (a real CLIPModel pretrained by us on generated pictures of "
            "coloured shapes), draw the mini datasets in CoOp's layout, and compare zero-shot CLIP with each method "
            "trained on the base classes with and without TextRefiner, tested on base and novel classes. A "
            "miniature on synthetic data that shows learning, not the paper's benchmark; about half a minute on one CPU core.")
    p.add_argument("--work-dir", default=None, help="keep the generated data and runs here (default: a temporary folder)")
    p.add_argument("--datasets", nargs="+", default=list(DEMO_DATASETS), choices=MINI_NAMES, metavar="DATASET",
                   help=f"mini datasets to run, from {', '.join(MINI_NAMES)}")
    p.add_argument("--methods", nargs="+", default=["coop"], choices=METHOD_NAMES, metavar="METHOD",
                   help="prompt learners to train, each with and without TextRefiner")
    p.add_argument("--epochs", type=int, default=MINI_RECIPE["epochs"], help="training epochs per run")
    p.add_argument("--shots", type=int, default=MINI_RECIPE["shots"], help="training images per base class")
    p.add_argument("--lr", type=float, default=MINI_RECIPE["lr"], help="SGD learning rate")
    p.add_argument("--batch-size", type=int, default=MINI_RECIPE["batch_size"], help="training batch size")
    p.add_argument("--seed", type=int, default=1, help="seeds few-shot sampling, initialisation and data order")
    p.add_argument("--model", default="mini", help='"mini" (the shipped mini CLIP) or a folder written by python -m textrefiner.mini.pretrain')
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)

    for name in ("train", "eval", "inspect"):  # the commands that read the user's images
        sub.choices[name].add_argument(
            "--max-image-pixels", type=int, default=None, metavar="N",
            help="refuse images over N pixels (width x height) before any work, a guard against decompression bombs; "
            "sets PIL.Image.MAX_IMAGE_PIXELS, 0 for no limit (default: Pillow's, 89,478,485); not a training setting",
        )
    for name in ("train", "eval", "inspect", "demo"):  # the commands that load models
        sub.choices[name].add_argument(
            "--verbose", action="store_true", help="also show transformers' own progress bars (Loading weights, Writing model shards)"
        )
    return parser


def _quiet_hf() -> None:
    """Turn off transformers' and huggingface_hub's own progress bars; our tqdm bars are unaffected."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _did_you_mean(unknown: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """``" (did you mean --epochs?)"`` for each unknown flag close to one of ``parser``'s; else ``""``."""
    import difflib

    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for word in unknown:
        if word.startswith("--"):
            hints += difflib.get_close_matches(word.split("=", 1)[0], flags, n=1, cutoff=0.6)
    return f" (did you mean {' / '.join(hints)}?)" if hints else ""


_PATHS = ("root", "output_dir", "run_dir", "work_dir", "output", "images", "unlabeled_root", "plot")


def _expand_home(args: argparse.Namespace) -> None:
    """``~`` in every path option, also where the shell left it (``--root=~/data``, quoted)."""
    import os

    for name in _PATHS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    if isinstance(getattr(args, "runs", None), list):
        args.runs = [os.path.expanduser(r) for r in args.runs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser: `textrefiner CMD: error: ...`, as every other command error
        commands = parser._subparsers._group_actions[0].choices
        own = commands[args.command] if args.command in commands else parser
        own.error(f"unrecognized arguments: {' '.join(unknown)}{_did_you_mean(unknown, own)}")
    if args.command is None:  # bare `textrefiner`: say what there is (exit 2, as for any call that ran nothing)
        parser.print_help()
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what was written, for `train --recipe`
    _expand_home(args)
    if not getattr(args, "verbose", True):
        _quiet_hf()
    try:
        if getattr(args, "max_image_pixels", None) is not None:
            from .data._pixels import set_pixel_limit

            set_pixel_limit(args.max_image_pixels)
        return args.func(args)
    except (ValueError, OSError, TypeError, ImportError) as err:  # OSError: a folder or disk the user can fix
        print(f"textrefiner {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through torch's data loader
        hint = " (the run folder keeps its last whole checkpoint: rerun with --resume to continue)" if args.command == "train" else ""
        print(f"textrefiner {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
