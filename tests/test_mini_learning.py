"""End-to-end learning on the mini CLIP: prompt learning must beat zero-shot, and every learnt part must learn.

These fail if a gradient stops reaching the context vectors (CoOp's accuracy stays at
zero-shot's) or the refiner (its parameters stay where they started), or if the refiner's
trained state stops mattering at inference (its refined class embeddings equal the plain ones).
"""

from __future__ import annotations

import pytest
import torch

from textrefiner.data import ImageDataset, load_dataset, transforms_from_processor
from textrefiner.methods import build_method
from textrefiner.mini import load_clip, make_dataset

DATASET = "mini-colours"  # the mini task where the shipped CLIP's features carry the class (see README)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: this tiny model runs ~10x faster than on two contended ones (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """16-shot base-class training pictures and the base test pictures of mini-colours, as tensors."""
    root = tmp_path_factory.mktemp("mini-data")
    make_dataset(root, DATASET, images_per_class=40, seed=0)
    model, tokenizer, processor = load_clip()
    transform = transforms_from_processor(processor, train=False)
    data = load_dataset(DATASET, root, shots=16, seed=1, subsample="base")

    def tensors(items):
        pixels, labels = zip(*(ImageDataset(items, transform)[i] for i in range(len(items))))
        return torch.stack(pixels), torch.tensor(labels)

    return model, tokenizer, data.classnames, tensors(data.train), tensors(data.test)


def _accuracy(method, classnames, test) -> float:
    method.eval()
    method.prepare_eval(classnames)
    pixels, labels = test
    return 100.0 * (method.eval_logits(pixels).argmax(-1) == labels).float().mean().item()


def _train(method, train, steps=40, lr=0.05, batch=16, seed=0):
    torch.manual_seed(seed)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    pixels, labels = train
    method.train()
    for _ in range(steps):
        idx = torch.randint(len(labels), (batch,))
        out = method(pixels[idx], labels[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return method


def test_coop_beats_zero_shot_on_base_classes(task):
    model, tokenizer, classnames, train, test = task
    torch.manual_seed(1)
    method = build_method("coop", model, tokenizer, classnames, textrefiner=False, ctx_init="a photo of a")
    zero_shot = _accuracy(method, classnames, test)  # the context is "a photo of a" before any step
    ctx_before = [p.detach().clone() for p in method.parameters() if p.requires_grad]
    learnt = _accuracy(_train(method, train), classnames, test)
    ctx_after = [p.detach() for p in method.parameters() if p.requires_grad]
    assert all((a - b).norm() > 1e-3 for a, b in zip(ctx_before, ctx_after)), "the context vectors did not move"
    assert learnt >= zero_shot + 8.0, (zero_shot, learnt)
    method.detach()


def test_textrefiner_learns_and_its_state_matters(task):
    model, tokenizer, classnames, train, test = task
    torch.manual_seed(1)
    method = build_method("coop", model, tokenizer, classnames, textrefiner=True, ctx_init="a photo of a")
    refiner = method.refiner
    zero_shot_text = method.text_embeddings().detach()
    before = {k: v.detach().clone() for k, v in refiner.state_dict().items() if v.is_floating_point()}
    ctx_before = method.learner.ctx.detach().clone()
    learnt = _accuracy(_train(method, train), classnames, test)
    after = refiner.state_dict()
    assert (method.learner.ctx - ctx_before).norm() > 1e-3, "the context vectors did not move"
    # every learnt tensor of the refiner moved: alignment MLP, fuse Linear, BN statistics and the cache
    # (fc1's bias feeds BatchNorm, which subtracts it again: its gradient is zero by design)
    for name, value in before.items():
        if name == "alignment.fc1.bias":
            continue
        assert not torch.allclose(value, after[name]), f"refiner {name} did not change in training"
    assert (refiner.cache - before["cache"]).norm() > 0.1
    # ... and matters: the baked classifier differs from the plain text embeddings by a visible amount
    method.eval()
    text = method.text_embeddings().detach()
    refined = refiner.bake(text)
    assert (refined - text).norm(dim=-1).mean() > 0.02
    with torch.no_grad():
        refiner.fuse.weight.zero_()  # fuse off: E_hat = E; the predictions change
    plain = _accuracy(method, classnames, test)
    assert plain != learnt or not torch.equal(refined, text)
    assert learnt >= _zero_shot_accuracy(model, tokenizer, classnames, test, zero_shot_text) + 8.0
    method.detach()


def _zero_shot_accuracy(model, tokenizer, classnames, test, text) -> float:
    from textrefiner.methods._base import cosine_logits, image_features, logit_scale

    pixels, labels = test
    with torch.no_grad():
        logits = cosine_logits(logit_scale(model), image_features(model, pixels), text)
    return 100.0 * (logits.argmax(-1) == labels).float().mean().item()
