"""docs/method.md §2: the token-wise alignment MLP."""

from __future__ import annotations

import torch

from textrefiner.alignment import FeatureAlignment


def test_formula_and_batchnorm_over_all_tokens():
    mlp = FeatureAlignment(6, 4).train()
    tokens = torch.randn(3, 5, 6)
    out = mlp(tokens)
    x = tokens.reshape(15, 6).double() @ mlp.fc1.weight.double().T + mlp.fc1.bias.double()
    mean, var = x.mean(0), x.var(0, unbiased=False)  # statistics over all B*(N+1) tokens
    x = (x - mean) / torch.sqrt(var + mlp.norm.eps) * mlp.norm.weight.double() + mlp.norm.bias.double()
    ref = torch.relu(x) @ mlp.fc2.weight.double().T + mlp.fc2.bias.double()
    torch.testing.assert_close(out.double(), ref.reshape(3, 5, 4), atol=1e-5, rtol=0)


def test_token_dim_may_differ_from_embed_dim():
    mlp = FeatureAlignment(768, 512)
    assert tuple(mlp.fc1.weight.shape) == (512, 768) and tuple(mlp.fc2.weight.shape) == (512, 512)


def test_any_leading_dims():
    mlp = FeatureAlignment(4, 3).eval()
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(mlp(x), mlp(x.reshape(-1, 4)).reshape(2, 3, 5, 3))


def test_factory_kwargs():
    mlp = FeatureAlignment(4, 3, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in mlp.parameters())


def test_sync_batchnorm_option():
    norm = FeatureAlignment(4, 3, sync_batchnorm=True).norm
    assert norm.sync and isinstance(norm, torch.nn.BatchNorm1d)
    assert not FeatureAlignment(4, 3).norm.sync
