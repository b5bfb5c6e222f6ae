"""A model's image processor, with or without torchvision.

transformers 5 chooses between two backends of each image processor: torchvision's, when it is
installed, else Pillow's. Releases up to at least 5.17 guard ``AutoImageProcessor`` itself behind
torchvision, so without it (the CPU installs this package is tested on) it raises before looking
at the folder. Then the Pillow class named by the folder's ``preprocessor_config.json`` is
loaded directly: the same settings, the same preprocessing.
"""

from __future__ import annotations

from typing import Any


def load_image_processor(name_or_path: str, **kwargs: Any) -> Any:
    """``AutoImageProcessor.from_pretrained(name_or_path, **kwargs)``, or its Pillow backend.

    Raises:
        ImportError: torchvision is needed and the folder names no Pillow-backed processor.
        OSError, ValueError: as ``from_pretrained`` (no such folder or Hub id, a bad config).
    """
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except ImportError as err:
        if "torchvision" not in str(err).lower():
            raise
        guarded = err
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(name_or_path, **kwargs)
    name = str(config.get("image_processor_type") or "").removesuffix("Fast")
    cls = getattr(transformers, f"{name}Pil", None) if name else None
    if cls is None:
        raise ImportError(f"{name_or_path}: its image processor {name or '(unnamed)'} has no Pillow backend here; {guarded}")
    return cls.from_pretrained(name_or_path, **kwargs)
