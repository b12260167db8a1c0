"""Wilson intervals: published values, edge cases, and the results row."""

import pytest

from grokloop.stats import acc_row, wilson


def test_wilson_matches_published_values():
    # 50/100: 0.4038-0.5962; 1/18 (the old OOD split's one correct answer): 0.0099-0.2576
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(1, 18) == pytest.approx((0.0099, 0.2576), abs=1e-4)


def test_wilson_edges_stay_inside_zero_one_and_shrink_with_n():
    lo, hi = wilson(0, 18)
    assert lo == 0 and 0.17 < hi < 0.18
    assert wilson(1000, 1000)[1] == 1 and wilson(1000, 1000)[0] > 0.996
    assert wilson(0, 0) == (0.0, 1.0)
    widths = [wilson(0.9 * n, n)[1] - wilson(0.9 * n, n)[0] for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson(11, 10)


def test_acc_row_carries_interval_and_n():
    row = acc_row(0.5, 100, model="vanilla", split="test")
    assert row["model"] == "vanilla" and row["n"] == 100
    assert (row["lo"], row["hi"]) == pytest.approx((0.4038, 0.5962), abs=1e-4)


def test_mean_interval_uses_students_t():
    from grokloop.stats import mean_interval

    m = mean_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert m["mean"] == 2.0 and m["n"] == 3
    assert m["hi"] - m["mean"] == pytest.approx(4.303 / 3**0.5)
    assert mean_interval([0.5])["lo"] is None  # one seed: no spread to measure
    with pytest.raises(ValueError):
        mean_interval([])
