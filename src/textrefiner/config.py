"""The refiner's hyper-parameters, as one validated, serialisable dataclass."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import read_json_object

CONFIG_NAME = "textrefiner_config.json"


@dataclass
class TextRefinerConfig:
    """Hyper-parameters of TextRefiner; defaults are the reference release's (docs/method.md §3–§6)."""

    embed_dim: int  # d: width of the joint image/text embedding space (512 for ViT-B/16)
    token_dim: int | None = None  # width of the local tokens fed to the alignment MLP; None = embed_dim
    cache_size: int = 25  # M: number of local-cache slots
    alpha: float = 0.2  # weight of the fused aggregate in the refined embedding (docs/method.md §4)
    momentum: float = 0.8  # gamma: how much of a cache slot survives one write (docs/method.md §3)
    top_k: int = 5  # k: patches with the highest CLS attention used by the semantic loss (at most N, else refused)
    semantic_weight: float = 0.02  # lambda_1: weight of the semantic loss (1/50)
    regularization_weight: float = 20.0  # lambda_2: weight of the regularisation loss
    kd_temperature: float = 1.0  # temperature of the semantic KL when targets are teacher logits

    def __post_init__(self) -> None:
        if self.token_dim is None:
            self.token_dim = self.embed_dim
        for name in ("embed_dim", "token_dim", "cache_size", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` should be an int, got {type(value).__name__} ({value!r})")
            if value < (0 if name == "top_k" else 1):
                raise ValueError(f"`{name}` should be {'non-negative' if name == 'top_k' else 'positive'}, got {value}")
        for name in ("alpha", "momentum", "semantic_weight", "regularization_weight", "kd_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{name}` should be a number, got {type(value).__name__} ({value!r})")
            if not math.isfinite(value):
                raise ValueError(f"`{name}` should be a finite number, got {value!r}")
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"`momentum` should be in [0, 1], got {self.momentum}")
        for name in ("alpha", "semantic_weight", "regularization_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be a non-negative number, got {getattr(self, name)!r}")
        if not self.kd_temperature > 0:
            raise ValueError(f"`kd_temperature` should be positive, got {self.kd_temperature}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextRefinerConfig:
        """Build a config from a dict; unknown keys warn and are dropped, missing required keys raise."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown TextRefinerConfig keys: {unknown}", stacklevel=2)
        if "embed_dim" not in data:
            raise ValueError(f"TextRefinerConfig needs `embed_dim`; got keys {sorted(data)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TextRefinerConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
        data = read_json_object(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{path}: {err}") from err
