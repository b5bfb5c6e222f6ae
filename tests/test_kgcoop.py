"""KgCoOp: CoOp's step plus W * (1 - mean cos(prompted, hand-made prompt embeddings)), re-derived."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textrefiner.engine import RunConfig
from textrefiner.learners.templates import frozen_text_features
from textrefiner.methods import build_method
from textrefiner.methods.kgcoop import RELEASE_WEIGHT, knowledge_guidance_loss
from textrefiner.testing import tiny_clip, tiny_tokenizer

CLASSES = ["cat", "dog", "car"]


def _build(name: str, refine: bool = False, **options):
    torch.manual_seed(0)
    return build_method(name, tiny_clip(), tiny_tokenizer(), CLASSES, textrefiner=refine, **options).train()


def test_guidance_loss_matches_a_rederivation_in_float64():
    g = torch.Generator().manual_seed(0)
    text, hand = (torch.randn(5, 16, generator=g, dtype=torch.float64) for _ in range(2))
    cos = [float(text[c] @ hand[c]) / (float(text[c].norm()) * float(hand[c].norm())) for c in range(5)]
    expected = 1 - sum(cos) / 5
    assert float(knowledge_guidance_loss(text, hand)) == pytest.approx(expected, abs=1e-12)
    assert float(knowledge_guidance_loss(text, 3 * text)) == pytest.approx(0, abs=1e-12)


def test_hand_made_prompt_features_are_the_frozen_models_own():
    method = _build("kgcoop", template="a photo of a {}, a type of pet.")
    twin, tokenizer = tiny_clip(), tiny_tokenizer()
    rows = [twin.get_text_features(**tokenizer(f"a photo of a {c}, a type of pet.", return_tensors="pt")) for c in CLASSES]
    rows = [r.pooler_output if hasattr(r, "pooler_output") else r for r in rows]
    torch.testing.assert_close(method.hand_features, F.normalize(torch.cat(rows), dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("refine", [False, True], ids=["plain", "textrefiner"])
def test_step_is_coops_plus_the_weighted_guidance_term(refine):
    kg, coop = _build("kgcoop", refine, template="a {}."), _build("coop", refine)
    torch.testing.assert_close(kg.learner.ctx, coop.learner.ctx)  # the same context, the same refiner start
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        text = F.normalize(kg.learner.text_features(), dim=-1)
        hand = F.normalize(frozen_text_features(tiny_clip(), tiny_tokenizer(), CLASSES, ["a {}."]), dim=-1)
        term = RELEASE_WEIGHT * (1 - (text * hand).sum(-1).mean())
    out_kg, out_coop = kg(x, y), coop(x, y)
    torch.testing.assert_close(out_kg.parts["kg"], term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_kg.loss.detach(), out_coop.loss.detach() + term, rtol=1e-5, atol=1e-6)
    assert float(term) > 0


def test_release_setting_starts_at_zero_guidance_loss():
    """The release's context is "a photo of a" and its default prompt "a photo of a {}.": at the start they coincide."""
    out = _build("kgcoop")(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert float(out.parts["kg"]) == pytest.approx(0, abs=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="expected `kg_weight` to be a finite number >= 0, got -1"):
        _build("kgcoop", kg_weight=-1)
    with pytest.raises(ValueError, match="expected `template` to be a str with one"):
        _build("kgcoop", template="a photo")
    with pytest.raises(ValueError, match="--kg-weight only acts on --method kgcoop"):
        RunConfig(dataset="eurosat", root="r", output_dir="o", method="maple", method_options={"kg_weight": 2.0})


@pytest.mark.parametrize("family", ["CLIPModel", "MetaClip2Model", "SiglipModel"])
def test_every_text_family_starts_at_zero_guidance_and_trains(family):
    """The hand-made prompt is tokenised as the family is used (SigLIP: padded to 64), so it equals the prompted start."""
    from test_text_encoder import tiny_text_model, tokenizer_for

    torch.manual_seed(0)
    model = tiny_text_model(family)
    method = build_method("kgcoop", model, tokenizer_for(family), CLASSES, textrefiner=True).train()
    size = model.config.vision_config.image_size
    out = method(torch.randn(2, 3, size, size), torch.tensor([0, 1]))
    assert float(out.parts["kg"]) == pytest.approx(0, abs=1e-5)
    out.loss.backward()
    assert method.learner.ctx.grad is not None
