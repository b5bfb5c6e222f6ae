"""CoCoOp: per-image context, exactness against CoOp, one cache write per step, training, engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textrefiner.testing import tiny_clip, tiny_tokenizer
from textrefiner.learners.cocoop import CoCoOp
from textrefiner.learners.coop import CoOp
from textrefiner.losses import select_tokens, semantic_loss
from textrefiner.methods import build_method
from textrefiner.methods.cocoop import CoCoOpMethod, per_image_semantic_loss
from textrefiner.methods.coop import CoOpMethod

NAMES = ["cat", "dog", "golden retriever", "x-ray"]
D = 24  # the tiny CLIP's joint width
N = 64  # patches of a 32 px image in 4 px patches


def pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def zero_meta_net(learner: CoCoOp) -> None:
    with torch.no_grad():
        learner.meta_net[2].weight.zero_()
        learner.meta_net[2].bias.zero_()


def test_meta_net_and_state_dict_are_cocoops():
    learner = CoCoOp(tiny_clip(), tiny_tokenizer(), NAMES)
    linear1, relu, linear2 = learner.meta_net
    assert (linear1.in_features, linear1.out_features) == (D, max(1, D // 16))
    assert isinstance(relu, torch.nn.ReLU)
    assert (linear2.in_features, linear2.out_features) == (max(1, D // 16), learner.encoder.width)
    assert sorted(learner.state_dict()) == ["ctx", "meta_net.0.bias", "meta_net.0.weight", "meta_net.2.bias", "meta_net.2.weight"]
    assert not any(p.requires_grad for p in learner.model.parameters())
    torch.testing.assert_close(learner.ctx.data, learner.encoder.embed_words("a photo of a"))


def test_zero_meta_net_gives_coops_logits():
    model = tiny_clip()
    cocoop = CoCoOp(model, tiny_tokenizer(), NAMES)
    coop = CoOp(model, tiny_tokenizer(), NAMES)
    with torch.no_grad():
        cocoop.ctx.add_(0.1 * torch.randn_like(cocoop.ctx))
        coop.ctx.copy_(cocoop.ctx)
    zero_meta_net(cocoop)
    images = torch.randn(5, D)
    with torch.no_grad():
        torch.testing.assert_close(cocoop(images), coop(images), atol=1e-5, rtol=1e-5)
        # and at the method level, through the image tower
        a = CoCoOpMethod(model, tiny_tokenizer(), NAMES, textrefiner=False)
        b = CoOpMethod(model, tiny_tokenizer(), NAMES, textrefiner=False)
        zero_meta_net(a.learner)
        a.eval(), b.eval()
        a.prepare_eval(), b.prepare_eval()
        torch.testing.assert_close(a.eval_logits(pixels()), b.eval_logits(pixels()), atol=1e-5, rtol=1e-5)


def test_batched_per_image_prompts_equal_one_image_at_a_time():
    learner = CoCoOp(tiny_clip(), tiny_tokenizer(), NAMES)
    with torch.no_grad():
        learner.meta_net[2].weight.normal_(std=0.5)  # a shift that matters
        images = torch.randn(3, D)
        batched = learner.text_features(images)  # (B, C, d)
        assert batched.shape == (3, len(NAMES), D)
        for b in range(3):
            ctx_b = learner.ctx + learner.meta_net(F.normalize(images[b : b + 1], dim=-1))  # (n, w)
            torch.testing.assert_close(batched[b], learner.encoder.encode(ctx_b), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(batched[0], batched[1], atol=1e-4)  # the images differ: so do their prompts


def test_chunked_logits_equal_one_pass():
    model = tiny_clip()
    whole = CoCoOp(model, tiny_tokenizer(), NAMES)
    chunked = CoCoOp(model, tiny_tokenizer(), NAMES, max_prompts=len(NAMES) * 2)  # two images per pass
    chunked.load_state_dict(whole.state_dict())
    images = torch.randn(5, D)
    with torch.no_grad():
        torch.testing.assert_close(chunked(images), whole(images), atol=1e-5, rtol=1e-5)


def test_per_image_semantic_loss_is_the_spec_loss_when_text_is_shared():
    selected, text, labels = torch.randn(3, 7, D), F.normalize(torch.randn(4, D), dim=-1), torch.tensor([0, 3, 1])
    shared = per_image_semantic_loss(selected, text.expand(3, 4, D), labels, 10.0)
    torch.testing.assert_close(shared, semantic_loss(selected, text, labels, logit_scale=10.0))


def test_refiner_writes_the_cache_once_per_step_over_all_rows(monkeypatch):
    method = CoCoOpMethod(tiny_clip(), tiny_tokenizer(), NAMES, textrefiner=True).train()
    refiner = method.refiner
    writes, reads = [], []
    real_write, real_refine = refiner._write, refiner.refine
    monkeypatch.setattr(refiner, "_write", lambda t, *a: (writes.append(t.shape), real_write(t, *a))[1])
    monkeypatch.setattr(refiner, "refine", lambda e, t=None: (reads.append(e.shape), real_refine(e, t))[1])
    out = method.training_step(pixels(3), torch.tensor([0, 1, 2]))
    assert reads == [(3 * len(NAMES), D)]  # the B*C rows in one call
    assert writes == [(3, N + 1, D)]  # one write: the step's aligned tokens
    assert out.logits.shape == (3, len(NAMES))
    assert set(out.parts) == {"cls", "semantic", "regularization"}
    # the loss is CE + w_sem * L_sem (per image, unrefined text) + w_reg * L_reg
    c = refiner.config
    parts = {k: v.item() for k, v in out.parts.items()}  # scalar tensors: the engine reads them when it logs
    expected = parts["cls"] + c.semantic_weight * parts["semantic"] + c.regularization_weight * parts["regularization"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    selected = select_tokens(refiner.aligned_tokens, refiner.cls_attention, c.top_k)
    assert selected.shape == (3, c.top_k + 2, D)


def test_eval_bakes_per_image_with_the_frozen_cache():
    method = CoCoOpMethod(tiny_clip(), tiny_tokenizer(), NAMES, textrefiner=True).train()
    method.training_step(pixels(4), torch.tensor([0, 1, 2, 3]))
    method.eval()
    with pytest.raises(RuntimeError, match="prepare_eval"):
        method.eval_logits(pixels())
    novel = ["owl", "zebra"]
    method.prepare_eval(novel)
    cache = method.refiner.cache.clone()
    x = pixels(3, seed=5)
    logits = method.eval_logits(x)
    assert torch.equal(method.refiner.cache, cache)  # evaluation never writes
    assert method.refiner.local_tokens is None  # the hooks did no work in eval mode
    with torch.no_grad():
        images = method.model.get_image_features(pixel_values=x).pooler_output
        scale = method.model.logit_scale.exp()
        for b in range(3):  # one image at a time: its own text, refined from the frozen cache
            text = F.normalize(method.learner.text_features(images[b : b + 1])[0], dim=-1)
            expected = scale * F.normalize(images[b], dim=-1) @ method.refiner.bake(text).T
            torch.testing.assert_close(logits[b], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("textrefiner", [False, True])
def test_training_lowers_the_loss_and_leaves_clip_frozen(textrefiner):
    model = tiny_clip()
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("cocoop", model, tiny_tokenizer(), NAMES, textrefiner=textrefiner, ctx_init=None)
    params = [p for p in method.parameters() if p.requires_grad]
    assert {n for n, _ in method.named_parameters()} >= {"learner.ctx", "learner.meta_net.0.weight", "learner.meta_net.2.weight"}
    optimizer = torch.optim.SGD(params, lr=0.5)
    x, y = pixels(8), torch.arange(8) % len(NAMES)
    method.train()
    losses = []
    for _ in range(6):
        out = method.training_step(x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert all(p.grad is None for p in model.parameters())
    method.detach()


def test_bad_inputs_raise():
    learner = CoCoOp(tiny_clip(), tiny_tokenizer(), NAMES)
    with pytest.raises(ValueError, match=r"expected `image_features` of shape \(B, 24\)"):
        learner(torch.randn(2, 7))
    with pytest.raises(TypeError, match="image_features"):
        learner([[0.0] * D])
    with pytest.raises(ValueError, match="max_prompts"):
        CoCoOp(learner.model, tiny_tokenizer(), NAMES, max_prompts=0)


@pytest.mark.slow
def test_engine_trains_one_epoch(tiny_clip_dir, tmp_path):
    from textrefiner.data import make_fake_dataset
    from textrefiner.engine import RunConfig, train

    make_fake_dataset(tmp_path / "data", "eurosat", num_classes=4, images_per_class=8)
    cfg = RunConfig(
        dataset="eurosat", root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), model=str(tiny_clip_dir),
        method="cocoop", shots=2, epochs=1, batch_size=2, num_workers=0, progress=False, eval_batch_size=8,
    )
    results = train(cfg)
    assert results["method"] == "cocoop" and results["protocol"] == "base2novel"
    assert 0.0 <= results["base"] <= 100.0 and 0.0 <= results["novel"] <= 100.0
    assert (tmp_path / "run" / "method.safetensors").is_file() and (tmp_path / "run" / "refiner").is_dir()


def _double_pair(textrefiner: bool, max_prompts: int) -> tuple[CoCoOpMethod, CoCoOpMethod]:
    """Two float64 CoCoOp methods with the same weights: one pass (default max_prompts) and chunked."""
    one, chunked = (
        CoCoOpMethod(tiny_clip().double(), tiny_tokenizer(), NAMES, textrefiner=textrefiner, max_prompts=m).double().train()
        for m in (4096, max_prompts)
    )
    with torch.no_grad():  # a meta-net shift that matters, so its gradients are not trivially zero
        one.learner.meta_net[0].weight.normal_(std=0.5, generator=torch.Generator().manual_seed(3))
        one.learner.meta_net[2].weight.normal_(std=0.5, generator=torch.Generator().manual_seed(4))
    chunked.load_state_dict(one.state_dict())
    return one, chunked


@pytest.mark.parametrize("textrefiner", [False, True], ids=["plain", "textrefiner"])
def test_chunked_training_step_equals_one_pass(textrefiner):
    """B=5 images in chunks of k=2 (max_prompts = 2C): 2 + 2 + 1, checkpointed; every result is one pass's."""
    one, chunked = _double_pair(textrefiner, max_prompts=2 * len(NAMES))
    x, y = pixels(5).double(), torch.tensor([0, 1, 2, 3, 0])
    for step in range(2):  # the second step reads the cache the first one wrote
        a, b = one.training_step(x, y), chunked.training_step(x, y)
        a.loss.backward()
        b.loss.backward()
        exact = dict(atol=1e-10, rtol=0)
        torch.testing.assert_close(b.loss, a.loss, **exact)
        torch.testing.assert_close(b.logits, a.logits, **exact)
        assert set(b.parts) == set(a.parts)
        for name in a.parts:
            torch.testing.assert_close(b.parts[name], a.parts[name], **exact)
        trained = {n: p for n, p in one.named_parameters() if p.requires_grad}
        assert {"learner.ctx", "learner.meta_net.0.weight"} <= set(trained)
        assert any(n.startswith("refiner.") for n in trained) == textrefiner
        for name, p in chunked.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and trained[name].grad.abs().sum() > 0, name
                torch.testing.assert_close(p.grad, trained[name].grad, **exact, msg=f"{name} at step {step}")
        buffers = dict(one.named_buffers())  # the cache, its BatchNorm statistics, the refused-write counter
        for name, buf in chunked.named_buffers():
            torch.testing.assert_close(buf, buffers[name], **exact, msg=f"{name} at step {step}")
        if textrefiner:
            assert one.refiner.cache.abs().sum() > 0  # the write happened
    one.detach(), chunked.detach()


def _saved_bytes_and_text_passes(max_prompts: int, batch: int = 6) -> tuple[int, int]:
    """Bytes the training step's forward saves for backward (outside checkpointed regions), text passes run."""
    method = CoCoOpMethod(tiny_clip(), tiny_tokenizer(), NAMES, textrefiner=True, max_prompts=max_prompts).train()
    passes = [0]
    real_encode = method.learner.encoder.encode
    method.learner.encoder.encode = lambda *a, **k: (passes.__setitem__(0, passes[0] + 1), real_encode(*a, **k))[1]
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = method.training_step(pixels(batch), torch.arange(batch) % len(NAMES))
    out.loss.backward()
    method.detach()
    return saved[0], passes[0]


def test_chunked_training_keeps_only_the_chunks_inputs_and_outputs_for_backward():
    """Checkpointing bounds what the backward pass holds: the text tower's activations are recomputed.

    The saved-tensor hooks see what stays alive until the backward pass; inside a checkpointed
    chunk torch keeps only the chunk's inputs, so the chunked step saves far fewer bytes. Chunking
    without checkpointing would save as much as one pass and fail here.
    """
    whole, whole_passes = _saved_bytes_and_text_passes(max_prompts=4096)  # 6 x 4 prompts in one pass
    chunked, chunked_passes = _saved_bytes_and_text_passes(max_prompts=2 * len(NAMES))  # chunks of 2 images
    singles, _ = _saved_bytes_and_text_passes(max_prompts=1)  # C > max_prompts: one image per chunk
    assert whole_passes == 1
    assert chunked_passes == 3 + 3  # three chunks forward, each recomputed once in backward
    assert chunked < whole / 4, (chunked, whole)  # measured ~8x fewer on this tiny model
    assert singles < whole / 4, (singles, whole)


def test_training_more_prompts_than_fit_is_chunked_and_evaluation_chunks(monkeypatch):
    method = CoCoOpMethod(tiny_clip(), tiny_tokenizer(), NAMES, textrefiner=True, max_prompts=2 * len(NAMES)).train()
    refiner = method.refiner
    writes, reads = [], []
    real_write, real_refine = refiner._write, refiner.refine
    monkeypatch.setattr(refiner, "_write", lambda t, *a: (writes.append(t.shape), real_write(t, *a))[1])
    monkeypatch.setattr(refiner, "refine", lambda e, t=None: (reads.append(e.shape), real_refine(e, t))[1])
    out = method.training_step(pixels(3), torch.tensor([0, 1, 2]))  # 3 x C = 12 prompts > 8: chunks of 2 + 1 images
    out.loss.backward()
    assert reads == [(3 * len(NAMES), D)]  # the refiner still reads all B*C rows at once
    assert writes == [(3, N + 1, D)]  # and writes once per step
    assert out.logits.shape == (3, len(NAMES))
    assert method.learner.ctx.grad is not None
    method.eval()
    method.prepare_eval()
    assert method.eval_logits(pixels(3)).shape == (3, len(NAMES))  # evaluation chunks too
