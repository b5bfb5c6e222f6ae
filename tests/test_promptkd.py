"""PromptKD: teacher logits are the teacher CLIP's own, the loss is PromptKD's KL, TextRefiner
refines the teacher's text with the student's tokens, training without labels, engine."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from textrefiner.testing import save_tiny_clip, tiny_clip, tiny_tokenizer
from textrefiner.learners.promptkd import PromptKDStudent, teacher_image_features, teacher_text_features
from textrefiner.losses import kl_to_teacher
from textrefiner.methods import build_method
from textrefiner.methods.promptkd import PromptKDMethod

NAMES = ["cat", "dog", "golden retriever", "x-ray"]
D_STUDENT, D_TEACHER, N = 24, 40, 64


def teacher_model(**kwargs):
    return tiny_clip(seed=1, projection_dim=D_TEACHER, hidden_size=48, **kwargs)


def pixels(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def method(textrefiner=True, **kwargs) -> PromptKDMethod:
    return PromptKDMethod(tiny_clip(), tiny_tokenizer(), NAMES, teacher=teacher_model(), teacher_tokenizer=tiny_tokenizer(),
                          textrefiner=textrefiner, **kwargs)


def test_teacher_logits_are_the_teacher_clips_own():
    m = method(textrefiner=False)
    x = pixels()
    inputs = tiny_tokenizer()([f"a photo of a {c}." for c in NAMES], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = m.teacher(**inputs, pixel_values=x).logits_per_image  # (B, C)
    torch.testing.assert_close(m.teacher_logits(x), expected, atol=1e-5, rtol=1e-5)
    assert m.teacher_text.shape == (len(NAMES), D_TEACHER)
    torch.testing.assert_close(m.teacher_text.norm(dim=-1), torch.ones(len(NAMES)))


def test_teacher_with_another_image_size_sees_resized_pixels():
    teacher = tiny_clip(seed=1, projection_dim=D_TEACHER, image_size=48)
    x = pixels()
    resized = F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=False)
    with torch.no_grad():
        expected = F.normalize(teacher.get_image_features(pixel_values=resized).pooler_output, dim=-1)
    torch.testing.assert_close(teacher_image_features(teacher, x), expected)


def test_student_without_prompts_is_the_projected_clip_feature():
    model, plain = tiny_clip(), tiny_clip()
    student = PromptKDStudent(model, D_TEACHER, prompt_depth=0)
    x = pixels()
    with torch.no_grad():
        expected = student.projector(plain.get_image_features(pixel_values=x).pooler_output)
        assert torch.equal(student(x), expected)
    assert sorted(n for n, _ in student.named_parameters()) == [f"projector.{i}.{w}" for i in (0, 1, 3) for w in ("bias", "weight")]
    prompted = PromptKDStudent(tiny_clip(), D_TEACHER, n_ctx=3)  # default depth: 2 of 2 layers
    assert [tuple(p.shape) for p in prompted.prompts] == [(3, 32), (3, 32)]
    with torch.no_grad():
        assert not torch.allclose(prompted(x), student(x), atol=1e-4)


def test_loss_is_kd_weight_times_promptkds_kl():
    m = method(textrefiner=False, kd_weight=3.0)
    x = pixels()
    out = m.training_step(x, torch.full((3,), -1))  # unlabelled
    with torch.no_grad():
        student = m.student(x)
        logits = m.model.logit_scale.exp() * F.normalize(student, dim=-1) @ m.teacher_text.T
        expected = 3.0 * kl_to_teacher(logits, m.teacher_logits(x))
    torch.testing.assert_close(out.loss.detach(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits.detach(), logits, atol=1e-5, rtol=1e-5)


def test_refiner_refines_teacher_text_with_student_tokens():
    m = method(kd_weight=2.0)
    refiner = m.refiner
    assert (refiner.token_dim, refiner.embed_dim) == (D_STUDENT, D_TEACHER)
    assert refiner.config.semantic_weight == pytest.approx(2.0 / 100)
    assert refiner.config.regularization_weight == pytest.approx(2.0 / 50)
    m.train()
    x = pixels(4)
    out = m.training_step(x, torch.full((4,), -1))
    assert refiner.local_tokens.shape == (4, N + 1, D_STUDENT)  # the prompt tokens sliced off
    assert refiner.cls_attention.shape == (4, N)
    assert refiner.aligned_tokens.shape == (4, N + 1, D_TEACHER)
    parts = {k: v.item() for k, v in out.parts.items()}  # scalar tensors: the engine reads them when it logs
    expected = 2.0 * parts["kd"] + 2.0 / 100 * parts["semantic"] + 2.0 / 50 * parts["regularization"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    # the semantic loss is the KL variant: the teacher's logits are its target
    from textrefiner.losses import select_tokens, semantic_loss

    with torch.no_grad():
        selected = select_tokens(refiner.aligned_tokens, refiner.cls_attention, refiner.config.top_k)
        sem = semantic_loss(selected, m.teacher_text, m.teacher_logits(x), logit_scale=m.model.logit_scale.exp())
    assert parts["semantic"] == pytest.approx(sem.item(), rel=1e-5)


def test_user_refiner_options_override_the_promptkd_weights():
    m = method(textrefiner={"semantic_weight": 0.5, "cache_size": 7})
    assert m.refiner.config.semantic_weight == 0.5 and m.refiner.config.cache_size == 7
    assert m.refiner.config.regularization_weight == pytest.approx(1 / 50)


@pytest.mark.parametrize("textrefiner", [False, True])
def test_training_lowers_the_loss_and_leaves_both_models_frozen(textrefiner):
    student, teacher = tiny_clip(), teacher_model()
    frozen_s = {k: v.clone() for k, v in student.state_dict().items()}
    frozen_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    m = build_method("promptkd", student, tiny_tokenizer(), NAMES, textrefiner=textrefiner, teacher=teacher,
                     teacher_tokenizer=tiny_tokenizer())
    assert not any(k.startswith(("teacher", "model")) for k in m.state_dict())
    optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    x = pixels(8)
    m.train()
    losses = []
    for _ in range(6):
        out = m.training_step(x, torch.full((8,), -1))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    for k, v in student.state_dict().items():
        assert torch.equal(v, frozen_s[k]), k
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, frozen_t[k]), k
    m.eval()
    m.prepare_eval(["owl", "zebra"])
    logits = m.eval_logits(x)
    assert logits.shape == (8, 2)
    text = teacher_text_features(teacher, tiny_tokenizer(), ["owl", "zebra"])
    classifier = text if m.refiner is None else m.refiner.bake(text)
    with torch.no_grad():
        torch.testing.assert_close(logits, m.model.logit_scale.exp() * F.normalize(m.student(x), dim=-1) @ classifier.T)
    m.detach()


def test_teacher_loaded_from_a_folder(tmp_path):
    path = save_tiny_clip(tmp_path / "teacher", seed=1, projection_dim=D_TEACHER, hidden_size=48)
    m = PromptKDMethod(tiny_clip(), tiny_tokenizer(), NAMES, teacher=str(path))
    assert m.refiner.embed_dim == D_TEACHER and not any(p.requires_grad for p in m.teacher.parameters())
    assert m.training_step(pixels(), torch.full((3,), -1)).loss.isfinite()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="teacher"):
        build_method("promptkd", tiny_clip(), tiny_tokenizer(), NAMES)
    with pytest.raises(ValueError, match="teacher_tokenizer"):
        PromptKDMethod(tiny_clip(), tiny_tokenizer(), NAMES, teacher=teacher_model())
    with pytest.raises(TypeError, match="teacher"):
        PromptKDMethod(tiny_clip(), tiny_tokenizer(), NAMES, teacher=3)
    with pytest.raises(ValueError, match="prompt_depth"):
        PromptKDStudent(tiny_clip(), D_TEACHER, prompt_depth=5)
    with pytest.raises(ValueError, match="template"):
        teacher_text_features(teacher_model(), tiny_tokenizer(), NAMES, template="a photo")


def test_engine_trains_one_epoch(tiny_clip_dir, tmp_path):
    from textrefiner.data import make_fake_dataset
    from textrefiner.engine import RunConfig, train

    teacher = save_tiny_clip(tmp_path / "teacher", seed=1, projection_dim=D_TEACHER, hidden_size=48)
    make_fake_dataset(tmp_path / "data", "eurosat", num_classes=4, images_per_class=8)
    cfg = RunConfig(
        dataset="eurosat", root=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), model=str(tiny_clip_dir),
        method="promptkd", teacher=str(teacher), shots=2, epochs=1, batch_size=2, num_workers=0, progress=False,
        eval_batch_size=8, method_options={"ctx_init": "a photo of a"},
    )
    results = train(cfg)
    assert results["method"] == "promptkd" and 0.0 <= results["hm"] <= 100.0
    from textrefiner import TextRefiner

    refiner = TextRefiner.from_pretrained(tmp_path / "run" / "refiner")
    assert (refiner.token_dim, refiner.embed_dim) == (D_STUDENT, D_TEACHER)


def test_projector_is_the_releases_two_layer_module():
    """Linear(d->D) -> BatchNorm(D) -> ReLU -> Linear(D->D): against a float64 re-derivation and
    against the release's form (1x1 convolutions around a BatchNorm2d), in training and eval mode."""
    student = PromptKDStudent(tiny_clip(), D_TEACHER, prompt_depth=0)
    p = student.projector
    assert [type(m) for m in p] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    assert (p[0].in_features, p[0].out_features, p[1].num_features, p[3].in_features, p[3].out_features) == (
        D_STUDENT, D_TEACHER, D_TEACHER, D_TEACHER, D_TEACHER)  # student width -> teacher width, hidden = teacher width
    assert p[0].bias is not None and p[3].bias is not None  # nn.Conv2d(in, out, 1) has a bias
    release = torch.nn.Sequential(
        torch.nn.Conv2d(D_STUDENT, D_TEACHER, 1), torch.nn.BatchNorm2d(D_TEACHER), torch.nn.ReLU(), torch.nn.Conv2d(D_TEACHER, D_TEACHER, 1)
    )
    with torch.no_grad():
        for ours, theirs in ((p[0], release[0]), (p[3], release[3])):
            theirs.weight.copy_(ours.weight[:, :, None, None])
            theirs.bias.copy_(ours.bias)
        p[1].weight.uniform_(0.5, 1.5), p[1].bias.uniform_(-0.5, 0.5)
        release[1].weight.copy_(p[1].weight), release[1].bias.copy_(p[1].bias)
    x = torch.randn(6, D_STUDENT, generator=torch.Generator().manual_seed(0))

    def by_hand(x, mean, var):
        x, w1, b1, w2, b2 = (t.double() for t in (x, p[0].weight, p[0].bias, p[3].weight, p[3].bias))
        h = x @ w1.T + b1
        h = (h - mean) / torch.sqrt(var + p[1].eps) * p[1].weight.double() + p[1].bias.double()
        return h.clamp_min(0) @ w2.T + b2

    p.train(), release.train()
    out = p(x)
    h = x.double() @ p[0].weight.double().T + p[0].bias.double()
    torch.testing.assert_close(out.double(), by_hand(x, h.mean(0), h.var(0, unbiased=False)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, release(x[:, :, None, None])[:, :, 0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p[1].running_mean, release[1].running_mean)  # the same running statistics
    torch.testing.assert_close(p[1].running_var, release[1].running_var)
    p.eval(), release.eval()
    out = p(x)
    torch.testing.assert_close(out.double(), by_hand(x, p[1].running_mean.double(), p[1].running_var.double()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, release(x[:, :, None, None])[:, :, 0, 0], atol=1e-5, rtol=1e-5)
    assert {"projector.1.running_mean", "projector.1.running_var"} <= set(student.state_dict())  # saved with the method


@pytest.mark.parametrize(
    "dataset, weight",
    [("imagenet", 1000), ("caltech101", 1000), ("eurosat", 1000), ("food101", 1000), ("oxford_pets", 1000),
     ("stanford_cars", 1000), ("sun397", 1000), ("ucf101", 1000),
     ("fgvc_aircraft", 200), ("oxford_flowers", 200), ("dtd", 200), ("FGVCAircraft", 200), ("DescribableTextures", 200)],
)
def test_kd_weight_defaults_to_the_releases_value_per_dataset(dataset, weight):
    from textrefiner.engine import RunConfig

    cfg = RunConfig(dataset=dataset, root="r", output_dir="o", method="promptkd")
    assert cfg.kd_weight == weight
    assert RunConfig(dataset=dataset, root="r", output_dir="o", method="promptkd", kd_weight=7.0).kd_weight == 7.0
    assert RunConfig(dataset=dataset, root="r", output_dir="o").kd_weight is None  # CoOp has none


def test_kd_weight_reaches_the_method_and_its_refiner_weights(tiny_clip_dir, tmp_path):
    from textrefiner import engine
    from textrefiner.engine import RunConfig

    with pytest.raises(ValueError, match="only used by --method promptkd"):
        RunConfig(dataset="dtd", root="r", output_dir="o", kd_weight=5.0)
    teacher = save_tiny_clip(tmp_path / "teacher", seed=3, hidden_size=48, projection_dim=40)
    cfg = RunConfig(dataset="dtd", root="r", output_dir="o", model=str(tiny_clip_dir), method="promptkd", teacher=str(teacher))
    m, _ = engine._build(cfg, torch.device("cpu"), NAMES)
    assert m.kd_weight == 200.0
    assert m.refiner.config.semantic_weight == pytest.approx(2.0) and m.refiner.config.regularization_weight == pytest.approx(4.0)
    m.detach()


def test_siglip_teacher_text_is_padded_to_its_length_without_a_mask():
    """A SigLIP teacher's logits are its own zero-shot ones (fixed-length text, no padding mask), less the bias."""
    from test_text_encoder import SIGLIP_LENGTH, tiny_text_model, tokenizer_for

    teacher, tokenizer = tiny_text_model("SiglipModel", seed=1), tokenizer_for("SiglipModel")
    m = PromptKDMethod(tiny_clip(), tiny_tokenizer(), NAMES, teacher=teacher, teacher_tokenizer=tokenizer, textrefiner=False)
    texts = [f"a photo of a {c}." for c in NAMES]
    ids = tokenizer(texts, padding="max_length", max_length=SIGLIP_LENGTH, return_tensors="pt").input_ids
    x = pixels()
    with torch.no_grad():
        expected = teacher(input_ids=ids, pixel_values=x).logits_per_image - teacher.logit_bias  # (B, C)
        masked = tokenizer(texts, padding="max_length", max_length=SIGLIP_LENGTH, return_tensors="pt")
        with_mask = F.normalize(teacher.get_text_features(**masked).pooler_output, dim=-1)
    torch.testing.assert_close(m.teacher_logits(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(m.teacher_text, with_mask, atol=1e-3)  # a padding mask would give other features


@pytest.mark.parametrize("family", ["SiglipModel", "Siglip2Model"])
def test_siglip_teacher_text_features_are_the_models_own(family):
    from test_text_encoder import reference_features, tiny_text_model, tokenizer_for

    teacher, tokenizer = tiny_text_model(family, seed=1), tokenizer_for(family)
    texts = [f"a photo of a {c}." for c in NAMES]
    with torch.no_grad():
        expected = F.normalize(reference_features(teacher, tokenizer, texts), dim=-1)  # fixed length, no mask
    torch.testing.assert_close(teacher_text_features(teacher, tokenizer, NAMES), expected, rtol=0, atol=1e-6)
