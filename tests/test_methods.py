"""CoOpMethod with and without TextRefiner on the CLIP, MetaCLIP 2 and SigLIP towers.

The packaged method is what `textrefiner train` and custom loops call: a few steps lower the
loss, only the prompts and the refiner train, the host stays frozen, and evaluation bakes the
(refined) class embeddings once.
"""

from __future__ import annotations

import pytest
import torch

from textrefiner import TextRefiner
from textrefiner.methods import build_method

from test_text_encoder import tiny_text_model, tokenizer_for

CLASSES = ["cat", "dog", "car"]
FAMILIES = ["CLIPModel", "MetaClip2Model", "SiglipModel"]


def _batch(model, n=6):
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % len(CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("refine", [True, False], ids=["textrefiner", "plain"])
@pytest.mark.parametrize("family", FAMILIES)
def test_coop_method_trains_only_prompts_and_refiner(family, refine):
    model = tiny_text_model(family)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method("coop", model, tokenizer_for(family), CLASSES, textrefiner=refine)
    assert isinstance(method.refiner, TextRefiner) == refine
    assert not any(k.startswith(("model.", "_model")) for k in method.state_dict())  # host not in the state
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.05, momentum=0.9)
    pixel_values, labels = _batch(model)
    method.train()
    losses = []
    for _ in range(8):
        out = method(pixel_values, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert set(out.parts) == ({"cls", "semantic", "regularization"} if refine else {"cls"})
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())  # host untouched

    method.eval()
    method.prepare_eval(["bird", "truck"])  # novel classes
    if refine:
        cache = method.refiner.cache.clone()
    logits = method.eval_logits(pixel_values)
    assert logits.shape == (6, 2) and torch.isfinite(logits).all()
    if refine:
        assert torch.equal(cache, method.refiner.cache) and method.refiner.local_tokens is None  # eval: no capture
    method.detach()


def test_eval_logits_need_prepare_eval():
    model = tiny_text_model("CLIPModel")
    method = build_method("coop", model, tokenizer_for("CLIPModel"), CLASSES).eval()
    with pytest.raises(RuntimeError, match="prepare_eval"):
        method.eval_logits(_batch(model)[0])
    method.detach()


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; expected one of \['cocoop', 'coop', 'kgcoop', 'maple', 'promptkd', 'promptsrc'\]"):
        build_method("nope", None, None, CLASSES)
