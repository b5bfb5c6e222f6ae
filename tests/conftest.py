"""Shared fixtures: every test starts from the same seed, and tiny models are built offline."""

from __future__ import annotations

import random

import pytest
import torch

from hypothesis import settings

settings.register_profile("textrefiner", deadline=None, max_examples=40, derandomize=True)
settings.load_profile("textrefiner")

# Every tensor here is tiny: torch's intra-op thread pool only adds contention (1000 small cache
# writes take ~9 s with 2 threads on 2 busy cores, ~0.3 s with 1). Subprocesses are not affected.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny random CLIP saved with tokenizer and image processor, loadable by path."""
    from textrefiner.testing import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory):
    """A small generated dataset in CoOp's EuroSAT layout (6 classes: 3 base, 3 novel)."""
    from textrefiner.data import make_fake_dataset

    root = tmp_path_factory.mktemp("data")
    make_fake_dataset(root, "eurosat", num_classes=6, images_per_class=12, image_size=36, seed=0)
    return root
