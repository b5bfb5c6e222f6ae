"""Mean and 95% confidence interval over seeds, and paired differences between two methods.

    mean, half = mean_ci([82.2, 81.9, 84.0])          # 82.7, 2.8: "82.7 ± 2.8"
    diff = paired_difference({1: 70.0, 2: 71.0}, {1: 68.0, 2: 68.5})   # per seed: a - b

The interval is Student's t over seeds (the seeds are the samples): ``mean ± t * s / sqrt(n)``
with ``s`` the sample standard deviation and ``t`` the two-sided 97.5% quantile at ``n - 1``
degrees of freedom. One seed has no interval (``None``). A paired difference is taken seed
by seed (the same few-shot draw and initialisation for both methods), which removes the
variation the two share.
"""

from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, the normal's 1.96 is within 2%.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` (>= 1) degrees of freedom."""
    if df < 1:
        raise ValueError(f"expected at least 1 degree of freedom, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """``(mean, half-width of the 95% interval)``; the half-width is None for a single value."""
    if not values:
        raise ValueError("expected at least one value, got none")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float | int | None]:
    """``a - b`` over the seeds both have: mean, 95% half-width (None for one seed) and the seed count."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"no seed in common: {sorted(a)} vs {sorted(b)}")
    mean, half = mean_ci([a[s] - b[s] for s in seeds])
    return {"mean": mean, "ci95": half, "seeds": len(seeds)}


def format_ci(mean: float, half: float | None, digits: int = 1) -> str:
    """``"82.7 ± 2.8"``, or ``"82.7"`` without an interval."""
    return f"{mean:.{digits}f}" if half is None else f"{mean:.{digits}f} ± {half:.{digits}f}"
