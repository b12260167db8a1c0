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
