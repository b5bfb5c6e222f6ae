"""textrefiner.results, the statistics: mean ± 95% interval over seeds and paired differences, against hand-worked values."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textrefiner.results import format_ci, mean_ci, paired_difference, t_quantile


def test_interval_golden_values():
    # 3 seeds: mean 82.7, sample std 1.1358, t(0.975, 2) = 4.303 -> 4.303 * 1.1358 / sqrt(3) = 2.8217
    mean, half = mean_ci([82.2, 81.9, 84.0])
    assert mean == pytest.approx(82.7) and half == pytest.approx(2.8217, abs=1e-3)
    assert mean_ci([50.0]) == (50.0, None)  # one seed: no interval
    assert mean_ci([70.0, 70.0, 70.0]) == (70.0, 0.0)
    assert t_quantile(4) == 2.776 and t_quantile(1000) == 1.96
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([])


def test_paired_difference_uses_the_seeds_both_have():
    d = paired_difference({1: 90.0, 2: 92.0, 3: 91.0, 9: 0.0}, {1: 85.0, 2: 86.0, 3: 88.0})
    diffs = [5.0, 6.0, 3.0]
    assert d["seeds"] == 3 and d["mean"] == pytest.approx(statistics.fmean(diffs))
    assert d["ci95"] == pytest.approx(4.303 * statistics.stdev(diffs) / math.sqrt(3))
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({1: 1.0}, {2: 1.0})


def test_format():
    assert format_ci(82.7, 2.8217) == "82.7 ± 2.8" and format_ci(82.7, None) == "82.7"
    assert format_ci(85.0, 63.5301, digits=2) == "85.00 ± 63.53"


@settings(deadline=None, max_examples=50)
@given(st.lists(st.integers(0, 100), min_size=2, max_size=12), st.integers(-20, 20))
def test_interval_contains_the_mean_and_shifts_with_the_data(values, shift):
    mean, half = mean_ci([float(v) for v in values])
    shifted, half2 = mean_ci([float(v + shift) for v in values])
    assert half >= 0 and shifted == pytest.approx(mean + shift) and half2 == pytest.approx(half)
