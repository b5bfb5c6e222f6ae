"""The Hugging Face glue behind :func:`textrefiner.attach` (``hooks.py``) and ``save_pretrained`` /
``from_pretrained``: where each model family keeps its towers (``layouts.py``), the Hub cache and
offline checks (``hub.py``), and the model card written next to a saved refiner (``card.py``).

Nothing here is imported by ``import textrefiner``; ``transformers`` and ``huggingface_hub`` are
imported inside the functions that use them.
"""
