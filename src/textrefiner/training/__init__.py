"""Training and evaluating prompt learners: the recipe of docs/method.md §7.

SGD (momentum 0.9, weight decay 5e-4), a cosine schedule over the epochs after one
constant warm-up epoch at 1e-5 (stepped per epoch, as Dassl does), few-shot data, base
classes for training and base + novel for evaluation. Runs on CPU or CUDA, in fp32 (TF32
matmuls with ``tf32``, CUDA only) or under bf16/fp16 autocast (fp16 with a GradScaler; the
frozen model's matmul weights stored in that dtype once), in one process or under
``torchrun`` / ``accelerate launch`` (DDP; rank 0 writes), and resumes bit-exactly.

One file per part, in the order a run meets them:

- ``config.py``: :class:`RunConfig`, every setting checked when made, and the run folder's file names
- ``run.py``: :func:`train`, the folder checked and locked, the data read, the processes set up
- ``run_data.py``: the training and validation images, checked before any model loads
- ``device.py``: the device and the precision (fp32, tf32, bf16, fp16; autocast)
- ``distributed.py``: the process group under torchrun / accelerate
- ``build.py``: the CLIP-family model loaded by name and the method built on it
- ``loaders.py``: data loaders and their workers
- ``schedule.py``: warm-up then cosine learning rate
- ``loop.py``: the epochs, best-val selection, checkpoints, the final save and test
- ``evaluation.py``: accuracy on a split and a run's test results
- ``zeroshot.py``: zero-shot CLIP on a base-to-novel split, the baseline a trained run is compared with
- ``resume.py``: what may change on ``--resume``, and restoring the state
- ``checkpoint.py``: the resumable checkpoint, written atomically
- ``rundir.py``: the run folder's checks and lock
"""

from __future__ import annotations

from .config import RunConfig
from .evaluation import evaluate, evaluate_run
from .run import train

__all__ = ["RunConfig", "evaluate", "evaluate_run", "train"]
