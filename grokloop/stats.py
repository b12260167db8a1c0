"""Intervals for accuracies: every accuracy a study reports carries its Wilson 95% interval and
its n (Wilson 1927; better behaved than the normal approximation near 0 and 1 and at small n)."""

from __future__ import annotations

import math


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) for `correct` successes out of `n` (0 <= correct <= n).
    `correct` may be an accuracy times n that is not an integer (pooled means); n = 0 gives
    (0, 1): nothing was measured."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= correct <= n:
        raise ValueError(f"correct={correct} must be between 0 and n={n}")
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def acc_row(acc: float, n: int, **fields) -> dict:
    """A results row: {**fields, acc, lo, hi, n} with the Wilson interval of acc over n facts."""
    lo, hi = wilson(round(acc * n), n)
    return fields | {"acc": acc, "lo": lo, "hi": hi, "n": n}


# Two-sided 95% quantiles of Student's t with df = 1..10 degrees of freedom (df > 10: 2.2 to 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def mean_interval(values: list[float]) -> dict:
    """Mean of per-seed values with its 95% t interval (seeds are few, so t, not the normal):
    {mean, lo, hi, n, values}; one value gives lo = hi = None (no spread to measure)."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(v) / n
    if n == 1:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "values": v}
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96 + 2.4 / (n - 1)
    half = t * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "values": v}
