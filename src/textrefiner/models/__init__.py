"""The model glue: how a refiner meets a CLIP model, whatever its format.

:func:`textrefiner.attach` (``attach.py``) picks a capture for the model (``capture.py`` is what
every capture shares): transformers CLIP-family models, found through the one table of where each
family keeps its towers (``hf_layouts.py``), or OpenAI ``clip``-format models, recognised by
structure (``openai_layouts.py``), hooked and converted to transformers (``openai_clip.py``).
``hub.py`` loads a model from the local Hugging Face cache before asking the Hub.

Nothing here is imported by ``import textrefiner``; ``transformers`` and ``huggingface_hub`` are
imported inside the functions that use them.
"""
