"""reports.new_entities: the seeds' questions pooled per (model, bank, split, metric), the targets
read from the frozen canonical reasoner's answer rows, and the three files written."""

import json

import pytest

from reports import new_entities


def summary(seed: int, acc_new: float, acc_old: float) -> dict:
    base = {"model": "canonical.frozen", "seed": seed, "bank": "linked", "frozen": True, "n": 1000}
    rows = [
        base | {"split": "test_new_all", "acc": acc_new},
        base | {"split": "test_old", "acc": acc_old},
        base
        | {"split": "test_old", "acc": 0.5, "hop": 1, "metric": "hop1.retrieval@1", "read_step": 1},
        base
        | {
            "model": "lookup_cosine",
            "seed": None,
            "frozen": False,
            "split": "test_old",
            "acc": 0.01,
        },
    ]
    return {
        "machine": {"cpu": "test"},
        "code_version": "abc",
        "run_dir": f"r{seed}",
        "weights_sha256": f"sha{seed}",
        "rows": rows,
    }


def test_seeds_pool_into_one_interval_and_targets_read_the_frozen_answers(tmp_path):
    out = new_entities.write(tmp_path, [summary(0, 0.95, 0.90), summary(1, 0.91, 1.0)], ["cmd"])
    pooled = {
        (r["model"], r["split"], r.get("metric")): r for r in out["rows"] if r["seed"] == "pooled"
    }
    new = pooled[("canonical.frozen", "test_new_all", None)]
    assert new["n"] == 2000 and new["acc"] == pytest.approx(0.93) and new["seeds"] == [0, 1]
    assert new["lo"] < 0.93 < new["hi"]
    assert pooled[("canonical.frozen", "test_old", "hop1.retrieval@1")]["acc"] == 0.5
    targets = {t["split"]: t for t in out["targets"]}
    assert set(targets) == {"test_new_all", "test_old"}  # not the lookup, not retrieval
    assert (
        targets["test_new_all"]["met"] and not targets["test_old"]["met"]
    )  # 0.95 target, 0.95 acc
    assert json.loads((tmp_path / "summary.json").read_text())["study"] == "new_entities"
    md = (tmp_path / "summary.md").read_text()
    assert "Seeds: 0, 1." in md and "**not met**" in md
    assert (tmp_path / "index.html").stat().st_size > 0


def variant(model: str, seed: int, valid: tuple[float, float], test: float) -> dict:
    """A frozen canonical variant's evaluation: valid_new_all, valid_old, and test splits."""
    s = summary(seed, test, test)
    base = {"model": model, "seed": seed, "bank": "valid_linked", "frozen": True, "n": 1000}
    s["rows"] = [r | {"model": model} for r in s["rows"] if r["model"] != "lookup_cosine"] + [
        base | {"split": "valid_new_all", "acc": valid[0]},
        base | {"split": "valid_old", "acc": valid[1]},
    ]
    return s


def test_the_variant_is_chosen_on_its_worse_valid_split_never_on_test(tmp_path):
    runs = [
        variant("canonical.a", 0, (0.99, 0.80), 1.0),  # best new, worst old, best test
        variant("canonical.b", 0, (0.90, 0.90), 0.5),
    ]
    out = new_entities.write(tmp_path, runs, ["cmd"])
    assert out["selection"]["chosen"] == "canonical.b"
    assert out["selection"]["variants"] == {"canonical.a": 0.80, "canonical.b": 0.90}
    chosen = {t["model"] for t in out["targets"] if t["chosen"]}
    assert chosen == {"canonical.b"}
    assert "among 2 variants: **canonical.b**" in (tmp_path / "summary.md").read_text()
