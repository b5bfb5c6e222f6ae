"""Re-exports :func:`attach` and its helpers; the code lives in ``textrefiner/models/attach.py``."""

from .models.attach import SUPPORTED, Capture, VisionCapture, attach, cls_attention_row

__all__ = ["SUPPORTED", "Capture", "VisionCapture", "attach", "cls_attention_row"]
