"""Log-spaced schedules: evaluate and checkpoint densely early and sparsely late, because
grokking happens on a log time axis."""


def log_schedule(total: int, min_gap: int, max_gap: int, n_per_decade: int = 20) -> list[int]:
    """Steps in 1..total: about `n_per_decade` per factor of 10, gaps clamped to
    [min_gap, max_gap], always including the last step."""
    if min_gap < 1 or max_gap < 1:
        # A zero gap never advances: without this check the loop below would not end.
        raise ValueError(
            f"log_schedule: min_gap={min_gap} and max_gap={max_gap} must be at "
            "least 1 (train.eval_every_min / eval_every_max / checkpoint_every_max)"
        )
    steps, s = set(), float(min_gap)
    while s < total:
        steps.add(int(s))
        s = s + min(max(s * (10 ** (1 / n_per_decade) - 1), min_gap), max_gap)
    steps.add(total)
    return sorted(x for x in steps if x >= 1)
