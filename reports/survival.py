"""Time-to-event statistics for runs that may never reach their gate (a censored run stops at its
budget without the event): Kaplan-Meier medians and the log-rank test, through lifelines. A mean
or a t interval over censored steps is not an estimate of anything; these are.

    km_median([400, 900, 10000], [True, True, False])   # 900.0
"""

from __future__ import annotations

import math

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from scipy.stats import spearmanr


def km_median(times: list[float], events: list[bool]) -> float | None:
    """The Kaplan-Meier median time to the event; None when more than half the runs are
    censored before it (the median lies beyond every budget)."""
    if not times:
        return None
    fit = KaplanMeierFitter().fit(np.asarray(times, float), np.asarray(events, bool))
    median = float(fit.median_survival_time_)
    return None if math.isinf(median) else median


def km_curve(times: list[float], events: list[bool]) -> dict:
    """The Kaplan-Meier estimate as a step function: {"t": [...], "surviving": [...]}, the share
    of runs not yet at the event just after each time (starting at t = 0, 1.0)."""
    fit = KaplanMeierFitter().fit(np.asarray(times, float), np.asarray(events, bool))
    sf = fit.survival_function_.iloc[:, 0]
    return {"t": [float(t) for t in sf.index], "surviving": [float(v) for v in sf.to_numpy()]}


def logrank(times_a, events_a, times_b, events_b) -> float:
    """The log-rank test's p value for two groups of (possibly censored) times to the event."""
    return float(
        logrank_test(
            np.asarray(times_a, float),
            np.asarray(times_b, float),
            np.asarray(events_a, bool),
            np.asarray(events_b, bool),
        ).p_value
    )


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation of x and y; None with fewer than three points or no spread."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)
