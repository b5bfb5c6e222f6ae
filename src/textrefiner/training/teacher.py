"""PromptKD's teacher from a finished run: ``--teacher RUN_DIR`` rebuilds that run's trained method.

The PromptKD release distils from a CLIP whose prompts were first trained with PromptSRC
(zhengli97/PromptKD trainers/promptkd.py: ``CustomCLIP_teacher`` holds PromptSRC's
``VLPromptLearner``, loads a trained checkpoint from ``teacher_model/`` and runs in eval mode; its
logits are ``scale * norm(prompted image) @ norm(prompted text).T``). Here ``--teacher`` names either a model (a Hub
id or a folder, prompted by a hand-made template) or a run folder of ``textrefiner train``: a
finished run (``results.json`` and ``method.safetensors``) of a method whose classifier is one set
of class embeddings, rebuilt as ``textrefiner eval`` rebuilds it, on its own model, with its
selected weights. Its image preprocessing must be the student's: the teacher sees the student's
pixels, and its logits are its own evaluation's only on the pixels it was tested with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .._errors import RunError
from ..results import RESULTS
from .config import RUN_CONFIG, WEIGHTS, RunConfig

# methods whose classifier is one set of class embeddings (a TextClassifierMethod), so that the
# student can classify with them; CoCoOp makes its per image, PromptKD's student has none of its own
TEACHER_METHODS = ("coop", "kgcoop", "maple", "promptsrc")


def is_run_folder(teacher: str | None) -> bool:
    """Whether ``--teacher`` names a folder holding a textrefiner run (its ``run_config.json``)."""
    return teacher is not None and (Path(teacher) / RUN_CONFIG).is_file()


def teacher_run_config(teacher: str) -> RunConfig:
    """The settings of the finished run at ``teacher``, checked that it can teach PromptKD.

    Raises:
        RunError: the run is not finished, was trained with a method that cannot teach, or with a
            class-specific context (its classes cannot change to the student's).
    """
    folder = Path(teacher)
    cfg = RunConfig.load(folder)
    missing = [name for name in (RESULTS, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        raise RunError(
            f"--teacher {teacher} is a run that has not finished (no {' or '.join(missing)}): finish it "
            "(`textrefiner train ... --resume`) before distilling from it"
        )
    if cfg.method not in TEACHER_METHODS:
        raise RunError(
            f"--teacher {teacher} is a {cfg.method} run, which cannot teach PromptKD (its classifier is not one set of "
            f"class embeddings); a teacher run is one of {', '.join(TEACHER_METHODS)} (PromptKD's own: promptsrc)"
        )
    if cfg.method_options.get("class_specific"):
        raise RunError(f"--teacher {teacher} has a class-specific context, which cannot move to the student's classes")
    return cfg


def check_same_preprocessing(teacher: str, teacher_processor: Any, student: str, student_processor: Any) -> None:
    """Refuse a teacher whose evaluation preprocessing (resize, crop, resampling, normalisation) is not the student's.

    Raises:
        RunError: the two differ; both are named.
    """
    from ..data import transforms_from_processor

    ours, theirs = (transforms_from_processor(p, train=False) for p in (student_processor, teacher_processor))
    if ours != theirs:
        raise RunError(
            f"the PromptKD teacher run {teacher} preprocesses images differently from the student {student} "
            f"(teacher {theirs}, student {ours}): it sees the student's pixels, so it must be a model with the same "
            "image size and normalisation"
        )


def teacher_digest(teacher: str | None) -> str | None:
    """SHA-256 of a teacher run's ``method.safetensors`` (None for a model teacher, or none at all).

    Saved with each checkpoint: a resumed run goes on only with the teacher it started with, not
    with another run trained since into the same folder.
    """
    if not is_run_folder(teacher):
        return None
    digest = hashlib.sha256()
    with open(Path(teacher) / WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
