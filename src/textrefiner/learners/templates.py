"""Hand-made prompt templates and the frozen text features they give (KgCoOp, PromptSRC).

Legend: C classes, K templates, d joint embedding width.

    one template   f_c = text(template.format(c))                   # (C, d), KgCoOp's hand-crafted prompt
    K templates    f_c = mean_k text(template_k.format(c))          # (C, d), PromptSRC's frozen targets
The features are the frozen model's own, computed once per set of classes, never per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# CLIP's prompt-engineering templates for ImageNet, the first 60 of the 80, as PromptSRC's
# release averages them for its frozen text targets (muzairkhattak/PromptSRC trainers/imagenet_templates.py).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.",
    "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.",
    "a photo of a hard to see {}.", "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.",
    "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
)

# CoOp's hand-made prompt per dataset, which KgCoOp's release encodes as its knowledge target
# (htyao89/KgCoOp KgCoOp/trainers/kgcoop.py CUSTOM_TEMPLATES); keys are textrefiner dataset names.
DATASET_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."
CHUNK = 1024  # prompts per text pass when encoding many (ImageNet's 1000 classes x 60 templates)


def check_template(template: str, name: str = "template") -> str:
    """``template`` itself, when it is a str with one ``{}`` for the class name.

    Raises:
        ValueError: anything else.
    """
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"expected `{name}` to be a str with one '{{}}' for the class name, got {template!r}")
    return template


@torch.no_grad()
def frozen_text_features(
    model: nn.Module, tokenizer: Any, classnames: Sequence[str], templates: Sequence[str], *, chunk: int = CHUNK
) -> torch.Tensor:
    """``mean_k model.text(templates[k].format(c))`` for every class: (C, d), unnormalised.

    Computed with the model's own text tower, ``chunk`` prompts at a time, in float32 (float64
    for a float64 model). Prompts longer than the tower's context are truncated.

    Raises:
        ValueError: empty ``classnames`` or ``templates``, or a template without one ``{}``.
    """
    if isinstance(classnames, str) or not classnames:
        raise ValueError(f"expected `classnames` to be a non-empty list of str, got {classnames!r}")
    if isinstance(templates, str) or not templates:
        raise ValueError(f"expected `templates` to be a non-empty list of str, got {templates!r}")
    for t in templates:
        check_template(t, "templates")
    weight = next(model.parameters())
    dtype = torch.promote_types(weight.dtype, torch.float32)
    siglip = "Siglip" in type(model).__name__  # trained on fixed-length text without a padding mask
    texts = [t.format(c) for c in classnames for t in templates]  # class-major: (C * K,)
    parts = []
    for start in range(0, len(texts), chunk):
        inputs = tokenizer(texts[start : start + chunk], padding="max_length" if siglip else True, truncation=True, return_tensors="pt")
        inputs = {"input_ids": inputs["input_ids"]} if siglip else dict(inputs)
        out = model.get_text_features(**{k: v.to(weight.device) for k, v in inputs.items()})
        parts.append((out.pooler_output if hasattr(out, "pooler_output") else out).to(dtype))
    features = torch.cat(parts)  # (C * K, d)
    return features.view(len(classnames), len(templates), -1).mean(dim=1)  # (C, d)
