"""Data-parallel training stays exact: 2 gloo processes on CPU against one process.

Legend: R ranks, B_r images on rank r, N+1 tokens per image, C classes, d width.

What is exact, and checked here:
* the cache: the write all-reduces (MAX of the per-slot score max, SUM of the weighted token
  sums and of the hit counts), so every rank holds the cache one process computes on the joined
  batch of aligned tokens, whatever the per-rank batch sizes, whether DDP broadcasts rank 0's
  buffers at every forward, only at wrap time, or never (then nothing but the write's own
  reduction keeps the caches equal; they must start equal, e.g. from the same seed);
* the parameters: identical on every rank (DDP averages gradients), and equal to one process
  that averages the per-rank losses; with the alignment BatchNorm frozen and equal slices, this
  is the plain single-process run on the joined batch;
* a rank with an empty slice: ``refine`` refuses it before any collective, and a direct cache
  write of nothing contributes nothing.

Without ``sync_batchnorm`` the BatchNorm statistics are per rank, as under the reference
release's DataParallel. (``nn.SyncBatchNorm`` is CUDA-only in PyTorch, so the refiner's
``sync_batchnorm=True`` uses its own all-reduce of the batch statistics, which runs on gloo/CPU.)
"""

from __future__ import annotations

import datetime
import inspect
import os
import sys
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from textrefiner import TextRefiner
from textrefiner.cache import cache_write

pytestmark = [
    pytest.mark.slow,  # runs whole training processes: `-m "not slow"` skips it
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
        reason="needs torch.distributed with the gloo backend",
    ),
]

WORLD = 2
D, C, N1, M = 8, 5, 7, 6  # width, classes, tokens per image (CLS + 6 patches), cache slots
STEPS = 4
LR = 0.5
SCALE = 10.0  # logit scale
SEED = 100  # rank r initialises with SEED + r; DDP must broadcast rank 0's state


class Learner(nn.Module):
    """A stand-in prompt learner: learnable context on fixed class embeddings, plus the refiner."""

    def __init__(self, sync_batchnorm: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.register_buffer("base", torch.randn(C, D, generator=gen))
        self.ctx = nn.Parameter(0.1 * torch.randn(C, D, generator=gen))
        self.refiner = TextRefiner(D, cache_size=M, top_k=2, sync_batchnorm=sync_batchnorm, strict=False)  # the sync-free path

    def text(self) -> torch.Tensor:
        return F.normalize(self.base + self.ctx, dim=-1)  # (C, d)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text = self.text()
        return text, self.refiner.refine(text, tokens)  # (C, d), (C, d)


def _loss(learner: Learner, text, refined, batch, aligned=None) -> torch.Tensor:
    """Host cross-entropy on the refined classes + the refiner's auxiliary loss."""
    tokens, labels, attention = batch
    image = F.normalize(tokens[:, 0], dim=-1)  # (B, d) the CLS token stands in for image features
    logits = SCALE * image @ F.normalize(refined, dim=-1).T  # (B, C)
    aux = learner.refiner.loss(refined, text, labels, logit_scale=SCALE, cls_attention=attention, aligned_tokens=aligned)
    return F.cross_entropy(logits, labels) + aux.total


def _data(sizes: list[int], device: str = "cpu", steps: int = STEPS) -> list[list[tuple[torch.Tensor, ...]]]:
    """Per step, per rank: (tokens (B_r, N+1, d), labels (B_r,), cls attention (B_r, N))."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        out.append(
            [
                tuple(
                    x.to(device)
                    for x in (3 * torch.randn(b, N1, D, generator=gen), torch.randint(0, C, (b,), generator=gen), torch.rand(b, N1 - 1, generator=gen))
                )
                for b in sizes
            ]
        )
    return out


def _joined(batches: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts) for parts in zip(*batches))


def _state(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in learner.state_dict().items()}


# ---------------------------------------------------------------- one process (the references)
def _reference_ddp(sizes: list[int], frozen_bn: bool) -> list[dict[str, torch.Tensor]]:
    """What DDP computes, in one process: per-rank BatchNorm, mean of per-rank losses, joined write."""
    torch.manual_seed(SEED)
    learner = Learner().train()
    if frozen_bn:
        learner.refiner.alignment.norm.eval()
    opt = torch.optim.SGD(learner.parameters(), lr=LR)
    states = []
    for step in _data(sizes):
        text = learner.text()
        refined = learner.refiner._refine(text, learner.refiner.cache.clone())  # read before the write
        aligned = [learner.refiner.align(tokens) for tokens, _, _ in step]  # each slice its own BN batch
        loss = sum(_loss(learner, text, refined, batch, a) for batch, a in zip(step, aligned)) / len(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        joined = torch.cat([a.detach() for a in aligned])  # (sum B_r, N+1, d)
        learner.refiner.cache.copy_(cache_write(learner.refiner.cache, joined, learner.refiner.config.momentum, sync=False))
        states.append(_state(learner))
    return states


def _reference_joined(sizes: list[int], frozen_bn: bool = True, device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """The plain single-process run on the joined batch."""
    torch.manual_seed(SEED)
    learner = Learner().to(device).train()
    if frozen_bn:
        learner.refiner.alignment.norm.eval()
    return _train_steps(learner, learner, [_joined(step) for step in _data(sizes, device)])


def _train_steps(model: nn.Module, learner: Learner, batches: list) -> list[dict[str, torch.Tensor]]:
    """SGD steps of ``model`` (the learner, or its DDP wrapper); the learner's state after each."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    states = []
    for batch in batches:
        text, refined = model(batch[0])
        loss = _loss(learner, text, refined, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        states.append(_state(learner))
    return states


# ---------------------------------------------------------------- the ranks
SCENARIOS = {  # name: (per-rank batch sizes, frozen BatchNorm, DDP buffer sync: "forward", "init" or "never")
    "uneven": ([3, 5], False, "init"),
    "uneven_forward_sync": ([3, 5], False, "forward"),
    "frozen_bn": ([4, 4], True, "init"),
    "rank_local": ([2, 5], False, "never"),
}


def _ddp(learner: Learner, buffers: str) -> nn.Module:
    """Wrap in DDP; ``buffers``: broadcast rank 0's buffers at every forward, at wrap time only, or never."""
    DDP = nn.parallel.DistributedDataParallel
    if buffers == "never":  # the deprecated flag is the only way to skip the sync at wrap time
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return DDP(learner, broadcast_buffers=False)
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:  # torch >= 2.13
        return DDP(learner, forward_sync_buffers=buffers == "forward")
    return DDP(learner, broadcast_buffers=buffers == "forward")  # older torch: this also syncs at wrap time


def _train_ddp(rank: int, sizes: list[int], frozen_bn: bool, buffers: str, sync: bool = False) -> list[dict[str, torch.Tensor]]:
    # a different init on each rank, which DDP overwrites with rank 0's at wrap time; with no buffer
    # sync at all, the caches must start equal (same seed), and only the synced write keeps them so
    torch.manual_seed(SEED + (rank if buffers != "never" else 0))
    learner = Learner(sync_batchnorm=sync).train()
    if frozen_bn:
        learner.refiner.alignment.norm.eval()
    return _train_steps(_ddp(learner, buffers), learner, [step[rank] for step in _data(sizes)])


def _empty_slice(rank: int) -> dict[str, object]:
    """A rank with no images: refused before any collective; a direct write of nothing is exact."""
    torch.manual_seed(0)  # the same cache on both ranks
    refiner = TextRefiner(D, cache_size=M).train()
    out: dict[str, object] = {}
    if rank == 1:
        try:
            refiner.refine(torch.randn(C, D), torch.empty(0, N1, D))
        except ValueError as err:
            out["error"] = str(err)
    # had the refused call issued an all-reduce, this collective would pair with it and fail or hang
    tokens = torch.randn(9, N1, D, generator=torch.Generator().manual_seed(3))
    mine = tokens if rank == 0 else tokens[:0]  # rank 1 contributes an empty (0, N+1, d) slice
    out["cache"] = cache_write(refiner.cache, mine, 0.8)
    out["expected"] = cache_write(refiner.cache, tokens, 0.8, sync=False)
    return out


def _syncs_and_refusal(rank: int) -> dict[str, object]:
    """A DDP step makes no host sync from textrefiner code; NaN tokens on ONE rank are refused on every rank."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _syncs import SyncCounter

    torch.manual_seed(SEED)
    learner = Learner().train()
    model = _ddp(learner, "init")
    batches = [step[rank] for step in _data([3, 3], steps=3)]
    _train_steps(model, learner, batches[:1])  # the first step may set things up
    with SyncCounter() as syncs:
        _train_steps(model, learner, batches[1:2])
    before = learner.refiner.cache.clone()
    tokens = batches[2][0].clone()
    if rank == 1:
        tokens[0, 0, 0] = float("nan")
    with torch.no_grad():
        model(tokens)  # only rank 1's slice is bad
    return {"syncs": dict(syncs.where), "unchanged": torch.equal(learner.refiner.cache, before), "refused": int(learner.refiner.refused_writes)}


def _strict_refusal(rank: int) -> dict[str, object]:
    """A strict refiner (the default) with NaN tokens on ONE rank: every rank raises, none waits in the
    write's all-reduce, and the next good step's collectives still pair up."""
    torch.manual_seed(SEED)
    refiner = TextRefiner(D, cache_size=M, top_k=2).train()
    before = refiner.cache.clone()
    text = torch.randn(C, D)
    tokens = torch.randn(2, N1, D)
    if rank == 1:
        tokens[0, 0, 0] = float("nan")
    try:
        refiner.refine(text, tokens)
        message = None
    except ValueError as err:
        message = str(err)
    unchanged = torch.equal(refiner.cache, before)
    refiner.update_cache(torch.randn(4, D))  # a collective write: hangs if the ranks fell out of step
    return {"message": message, "unchanged": unchanged, "cache": refiner.cache.clone()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: no need for a resolvable hostname
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    try:
        results = {name: _train_ddp(rank, *args) for name, args in SCENARIOS.items()}
        results["empty"] = _empty_slice(rank)
        results["sync_bn"] = _train_ddp(rank, [4, 4], False, "init", sync=True)
        results["syncs"] = _syncs_and_refusal(rank)
        results["strict"] = _strict_refusal(rank)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


# ---------------------------------------------------------------- the checks
def _assert_states_close(got, want, *, atol, keys=None) -> None:
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        for key in keys or w:
            torch.testing.assert_close(g[key], w[key], atol=atol, rtol=0, msg=lambda m, k=key, s=step: f"step {s}, {k}: {m}")


PARAMS = ["ctx", "refiner.fuse.weight", "refiner.alignment.fc1.weight", "refiner.alignment.fc1.bias",
          "refiner.alignment.norm.weight", "refiner.alignment.norm.bias", "refiner.alignment.fc2.weight", "refiner.alignment.fc2.bias"]  # fmt: skip


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_rank_holds_the_cache_of_the_joined_batch(ranks, name):
    sizes, frozen_bn, _ = SCENARIOS[name]
    want = _reference_ddp(sizes, frozen_bn)
    for rank in range(WORLD):
        _assert_states_close(ranks[rank][name], want, atol=1e-6, keys=["refiner.cache"])
        assert ranks[rank][name][-1]["refiner.cache"].dtype == torch.float32
    # the cache did move: the check is not passing on an untouched buffer
    assert not torch.allclose(want[0]["refiner.cache"], want[-1]["refiner.cache"], atol=1e-3)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_parameters_are_identical_across_ranks_and_match_one_process(ranks, name):
    sizes, frozen_bn, _ = SCENARIOS[name]
    for step in range(STEPS):
        for key in PARAMS + ["refiner.cache"]:
            assert torch.equal(ranks[0][name][step][key], ranks[1][name][step][key]), (step, key)
    _assert_states_close(ranks[0][name], _reference_ddp(sizes, frozen_bn), atol=1e-5, keys=PARAMS)


def test_ddp_step_is_sync_free_and_a_bad_slice_is_refused_on_every_rank(ranks):
    for rank in ranks:
        assert rank["syncs"]["syncs"] == {}  # no item/bool/... from textrefiner code, collectives included
        assert rank["syncs"]["unchanged"] and rank["syncs"]["refused"] == 1  # the caches stay equal


def test_strict_refusal_of_one_ranks_nan_raises_on_every_rank(ranks):
    for rank in ranks:
        assert "`local_tokens` contains NaN or Inf (on this or another rank)" in rank["strict"]["message"]
        assert rank["strict"]["unchanged"]
    assert torch.equal(ranks[0]["strict"]["cache"], ranks[1]["strict"]["cache"])


def test_batchnorm_statistics_are_per_rank(ranks):
    # per-rank BN is the default (as under DataParallel): each rank's running statistics are its own
    # slice's, while the cache, also a buffer, is equal on every rank (checked above)
    stats = "refiner.alignment.norm.running_mean"
    for name in ("uneven", "rank_local"):
        assert not torch.allclose(ranks[0][name][-1][stats], ranks[1][name][-1][stats])


def test_frozen_batchnorm_equals_the_single_process_run_on_the_joined_batch(ranks):
    sizes = SCENARIOS["frozen_bn"][0]
    want = _reference_joined(sizes)
    for rank in range(WORLD):
        _assert_states_close(ranks[rank]["frozen_bn"], want, atol=1e-6, keys=["refiner.cache"])
        _assert_states_close(ranks[rank]["frozen_bn"], want, atol=1e-5, keys=PARAMS)
    assert not torch.allclose(want[-1]["ctx"], Learner().ctx)  # training moved the parameters


def test_sync_batchnorm_on_gloo_equals_one_process_on_the_joined_batch(ranks):
    # the refiner's own synced BatchNorm (nn.SyncBatchNorm is CUDA-only): batch statistics of the
    # joined batch, gradients through them from every rank; BatchNorm in training mode
    want = _reference_joined([4, 4], frozen_bn=False)
    stats = ["refiner.alignment.norm.running_mean", "refiner.alignment.norm.running_var"]
    for rank in range(WORLD):
        _assert_states_close(ranks[rank]["sync_bn"], want, atol=1e-5, keys=PARAMS + stats + ["refiner.cache"])
    # without the sync, the same slices give other statistics (the check above can fail)
    per_rank = _reference_ddp([4, 4], frozen_bn=False)
    assert not torch.allclose(per_rank[-1][stats[1]], want[-1][stats[1]], atol=1e-4)


def test_empty_slice_is_refused_before_any_collective(ranks):
    assert "empty" in ranks[1]["empty"]["error"]
    assert "error" not in ranks[0]["empty"]
    for rank in range(WORLD):
        out = ranks[rank]["empty"]
        torch.testing.assert_close(out["cache"], out["expected"], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- SyncBatchNorm on 2 GPUs (NCCL)
def _worker_sync_bn(rank: int, init_file: str, out_dir: str) -> None:
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(SEED + rank)
        learner = Learner(sync_batchnorm=True).to(f"cuda:{rank}").train()
        model = nn.parallel.DistributedDataParallel(learner, device_ids=[rank])
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        states = []
        for step in _data([4, 4], f"cuda:{rank}"):
            batch = step[rank]
            text, refined = model(batch[0])
            loss = _loss(learner, text, refined, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            states.append(_state(learner))
        torch.save(states, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < WORLD or not dist.is_nccl_available(),
    reason=f"needs {WORLD} CUDA GPUs and NCCL",
)
def test_sync_batchnorm_on_gpus_equals_one_process_on_the_joined_batch():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker_sync_bn, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        got = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]
    want = _reference_joined([4, 4], frozen_bn=False, device="cuda:0")  # BatchNorm in training mode
    for rank in range(WORLD):
        _assert_states_close(got[rank], want, atol=1e-5, keys=["refiner.cache"])
        _assert_states_close(got[rank], want, atol=1e-4, keys=PARAMS + ["refiner.alignment.norm.running_mean"])
