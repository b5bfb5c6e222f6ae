"""The config dataclass: defaults from the release, validation, JSON round trip."""

from __future__ import annotations

import json

import pytest

from textrefiner import TextRefiner, TextRefinerConfig


def test_release_defaults():
    c = TextRefinerConfig(embed_dim=512)
    assert (c.token_dim, c.cache_size, c.alpha, c.momentum, c.top_k) == (512, 25, 0.2, 0.8, 5)
    assert (c.semantic_weight, c.regularization_weight) == (1 / 50, 20.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"embed_dim": 0}, "`embed_dim` should be positive, got 0"),
        ({"embed_dim": 8, "cache_size": 0}, "`cache_size` should be positive, got 0"),
        ({"embed_dim": 8, "token_dim": -3}, "`token_dim` should be positive"),
        ({"embed_dim": 8, "momentum": 1.5}, "`momentum` should be in [0, 1]"),
        ({"embed_dim": 8, "alpha": -0.1}, "`alpha` should be a non-negative"),
        ({"embed_dim": 8, "top_k": -1}, "`top_k`"),
        ({"embed_dim": 8, "kd_temperature": 0}, "`kd_temperature`"),
    ],
)
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as err:
        TextRefinerConfig(**kwargs)
    assert message in str(err.value)


def test_type_errors():
    with pytest.raises(TypeError, match="`embed_dim` should be an int"):
        TextRefinerConfig(embed_dim=8.0)  # type: ignore[arg-type]


def test_json_is_sorted_and_round_trips(tmp_path):
    c = TextRefinerConfig(embed_dim=16, token_dim=24, cache_size=7)
    path = c.save(tmp_path)
    text = path.read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))
    assert TextRefinerConfig.load(tmp_path) == c


def test_unknown_keys_warn_missing_required_key_raises():
    with pytest.warns(UserWarning, match="unknown TextRefinerConfig keys: \\['future_field'\\]"):
        c = TextRefinerConfig.from_dict({"embed_dim": 4, "future_field": 1})
    assert c.embed_dim == 4
    with pytest.raises(ValueError, match="needs `embed_dim`"):
        TextRefinerConfig.from_dict({"cache_size": 3})


def test_refiner_from_config():
    c = TextRefinerConfig(embed_dim=16, token_dim=24, cache_size=7, alpha=0.3)
    for r in (TextRefiner(c), TextRefiner.from_config(c)):
        assert r.config == c and r.cache.shape == (7, 16) and r.alignment.fc1.in_features == 24
