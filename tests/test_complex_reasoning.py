"""Complex reasoning (datagen/complex_reasoning.py; Wang et al. 2024, arXiv 2405.15071, section 5):
no OOD value and no OOD x OOD pair in training, true labels, test_hard checked against an
independent brute-force solver, label balance, the authors' file format both ways, and the
symbolic / retrieval / chance baselines. Tiny configs, each test well under 3 s."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from omegaconf import OmegaConf

from datagen import build_dataset, data_config_from_dict
from datagen.complex_reasoning import balance
from datagen.config import ComplexReasoningConfig
from datagen.grokked_format import authors_tokens, read_grokked, write_grokked
from grokloop import cli
from grokloop.baselines.evaluate import default_methods, evaluate
from grokloop.baselines.symbolic import symbolic_answers

TINY = dict(
    n_entities=50,
    n_attributes=3,
    n_values=6,
    ood_fraction=0.3,
    train_fraction=0.1,
    test_id_fraction=0.1,
    valid_fraction=0.1,
    eval_size=300,
)


def tiny(**kw):
    return build_dataset(ComplexReasoningConfig(**TINY | kw))


@pytest.fixture(scope="module")
def ds():
    return tiny()


def facts(ds, idx):
    """(attribute, e1, e2 or -1, answer) token ids of examples `idx`."""
    r = ds.roles
    return [
        (int(r["attribute"][i]), int(r["entity_1"][i]), int(r["entity_2"][i]), int(ds.answers[i]))
        for i in idx
    ]


def sign_of(ds, label: int) -> int:
    return ["<lt>", "<eq>", "<gt>"].index(ds.vocab.token(label)) - 1


class BruteForce:
    """An independent solver over the training facts of `ds`, written from the definitions:
    an OOD entity may take any value 0..V-1 that satisfies every training comparison it is in;
    a pair is decided when every pair of allowed values compares the same way. Reachability
    is breadth-first search over the training comparisons (x -> y when x >= y)."""

    def __init__(self, ds):
        self.V = len(ds.vocab.range("values"))
        v0 = ds.vocab.range("values").start
        train = ds.splits["train"].tolist()
        self.value = {(a, e): ans - v0 for a, e, e2, ans in facts(ds, train) if e2 < 0}
        self.cmp = defaultdict(list)  # (a, x) -> [(y, sign(x - y))]
        self.edges = defaultdict(set)  # (a, x) -> {y: x >= y}
        for a, x, y, ans in facts(ds, train):
            if y >= 0:
                s = sign_of(ds, ans)
                self.cmp[a, x].append((y, s))
                if s >= 0:
                    self.edges[a, x].add(y)
                if s <= 0:
                    self.edges[a, y].add(x)

    def allowed(self, a, o) -> set[int]:
        out = set()
        for v in range(self.V):
            ok = True
            for y, s in self.cmp[a, o]:
                assert (a, y) in self.value, "a training comparison between two hidden values"
                ok &= int(np.sign(v - self.value[a, y])) == s
            out.add(v) if ok else None
        return out

    def signs(self, a, x, y) -> set[int]:
        return {int(np.sign(v1 - v2)) for v1 in self.allowed(a, x) for v2 in self.allowed(a, y)}

    def reaches(self, a, x, y) -> bool:
        seen, todo = {x}, [x]
        while todo:
            for z in self.edges[a, todo.pop()]:
                if z == y:
                    return True
                if z not in seen:
                    seen.add(z)
                    todo.append(z)
        return False

    def hard(self, a, x, y) -> int | None:
        """The sign of a hard pair (decided by the training facts, not by the comparisons
        alone), else None."""
        s = self.signs(a, x, y)
        if len(s) == 1 and not self.reaches(a, x, y) and not self.reaches(a, y, x):
            return s.pop()
        return None


def ood_facts(ds) -> set[tuple[int, int]]:
    return {(a, e) for a, e, _, _ in facts(ds, ds.splits["atomic_ood"])}


def test_training_holds_no_ood_value_and_no_ood_x_ood_pair(ds):
    ood = ood_facts(ds)
    E, A = ds.config["n_entities"], ds.config["n_attributes"]
    assert len(ood) == round(0.3 * E) * A  # every OOD atomic fact, none sampled away
    train = facts(ds, ds.splits["train"])
    atomic = {(a, e) for a, e, e2, _ in train if e2 < 0}
    assert not atomic & ood and len(atomic) + len(ood) == E * A
    pairs = Counter()
    for a, x, y, _ in train:
        if y >= 0:
            assert not ((a, x) in ood and (a, y) in ood), "an OOD x OOD pair in training"
            pairs[a, min(x, y), max(x, y)] += 1
    assert set(pairs.values()) == {2}  # both orders of every pair
    kinds = Counter(((a, x) in ood) + ((a, y) in ood) for a, x, y in pairs)
    assert kinds[0] and kinds[1] and not kinds[2]  # ID x ID and ID x OOD pairs train
    keys = {s: {f[:3] for f in facts(ds, ds.splits[s])} for s in ds.splits}
    for s in ("valid", "test_inferred_id", "test_inferred_ood", "test_hard", "atomic_ood"):
        assert not keys[s] & keys["train"], s
    for s in ("test_inferred_ood", "test_hard"):
        assert all((a, x) in ood and (a, y) in ood for a, x, y in keys[s]), s
    assert all((a, x) not in ood and (a, y) not in ood for a, x, y in keys["valid"])


def test_every_label_is_the_true_comparison_of_the_hidden_values(ds):
    v0 = ds.vocab.range("values").start
    truth = {(a, e): ans - v0 for a, e, e2, ans in facts(ds, np.flatnonzero(ds.answer_pos == 1))}
    for a, x, y, ans in facts(ds, np.flatnonzero(ds.answer_pos == 4)):
        assert sign_of(ds, ans) == np.sign(truth[a, x] - truth[a, y])


def test_test_hard_is_exactly_what_brute_force_calls_hard(ds):
    bf = BruteForce(ds)
    hard = facts(ds, ds.splits["test_hard"])
    assert len(hard) > 100
    for a, x, y, ans in hard:
        assert bf.hard(a, x, y) == sign_of(ds, ans), (a, x, y)
    # complete too: every hard OOD pair is a candidate (the stats count them all)
    ood = sorted(ood_facts(ds))
    counts = Counter()
    for a, x in ood:
        for b, y in ood:
            if a == b and x != y and (s := bf.hard(a, x, y)) is not None:
                counts[["<lt>", "<eq>", "<gt>"][s + 1]] += 1
    assert counts == ds.stats["hard_candidates"]
    assert Counter(ds.vocab.token(t) for *_, t in hard) == ds.stats["hard_labels"]


def test_the_notebooks_reachability_labels_agree_with_the_truth_where_they_decide(ds):
    """Their test_hard label: reachability over the cross comparisons plus the ID entities
    ordered by value. Sound (the module docstring's argument), but it decides fewer pairs."""
    bf = BruteForce(ds)
    ood = ood_facts(ds)
    for (a, e), v in bf.value.items():  # the ID values as edges
        for (b, f), w in bf.value.items():
            if a == b and v >= w:
                bf.edges[a, e].add(f)
    v0 = ds.vocab.range("values").start
    truth = {(a, e): ans - v0 for a, e, e2, ans in facts(ds, np.flatnonzero(ds.answer_pos == 1))}
    theirs = ours = 0
    for a, x in ood:
        for b, y in ood:
            if a != b or x == y:
                continue
            ge, le = bf.reaches(a, x, y), bf.reaches(a, y, x)
            decided = len(bf.signs(a, x, y)) == 1
            ours += decided
            if ge or le:
                theirs += 1
                assert (1 if not le else -1 if not ge else 0) == np.sign(truth[a, x] - truth[a, y])
                assert decided
    assert theirs < ours


def test_hard_labels_are_balanced_as_far_as_the_data_allows():
    few = tiny(eval_size=60)
    counts = Counter(few.vocab.token(t) for t in few.answers[few.splits["test_hard"]])
    assert counts == {"<lt>": 20, "<eq>": 20, "<gt>": 20}
    assert balance(1000, 1000, 1000) == (333, 167)  # thirds: 333 <, 334 =, 333 >
    assert balance(1000, 50, 1000) == (450, 50)  # scarce "=": strict pairs fill the rest
    assert balance(100, 1000, 1000) == (100, 100)  # scarce strict: "=" stops at half
    assert balance(0, 5, 30) == (0, 0)  # "=" alone would be all of the set
    for s, q in (balance(7, 3, 100), balance(40, 0, 30)):
        assert q <= s


def test_cpu_preset_has_a_thousand_hard_queries_none_above_half():
    d = OmegaConf.to_container(cli.compose("datagen", ["data=complex_reasoning_cpu"]).data)
    ds = build_dataset(data_config_from_dict(d))
    hard = ds.answers[ds.splits["test_hard"]]
    assert len(hard) >= 1000 and np.bincount(hard).max() <= len(hard) / 2
    assert min(len(v) for v in ds.splits.values()) >= 200


def records(path, name):
    return json.loads((path / f"{name}.json").read_text())


def test_authors_format_round_trip(ds, tmp_path):
    write_grokked(ds, tmp_path / "a")
    types = Counter(r["type"] for r in records(tmp_path / "a", "train"))
    assert set(types) == {"id_atomic", "train_inferred_topleft", "train_inferred_cross"}
    test_types = {r["type"] for r in records(tmp_path / "a", "test")}
    assert {
        "ood_atomic",
        "test_hard",
        "test_inferred_iid",
        "test_inferred_ood",
        "train_inferred_topleft",
        "train_inferred_cross",
    } <= test_types
    back = read_grokked(tmp_path / "a")
    assert back.task == "complex_reasoning" and set(back.splits) == set(ds.splits)

    def as_text(d, split):
        return sorted(
            ("".join(authors_tokens(d, i)[0]), authors_tokens(d, i)[1]) for i in d.splits[split]
        )

    for s in ds.splits:
        assert as_text(back, s) == as_text(ds, s), s
    hard = back.splits["test_hard"]
    assert (symbolic_answers(back, hard) == back.answers[hard]).all()  # the authors' tokens
    write_grokked(back, tmp_path / "b")
    for name in ("train", "valid", "test", "vocab"):
        a, b = records(tmp_path / "a", name), records(tmp_path / "b", name)
        assert (
            (a == b)
            if name == "vocab"
            else sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))
        ), name


def test_symbolic_is_the_bound_and_retrieval_is_near_chance(ds):
    rows = {
        (r["model"], r["split"]): r
        for r in evaluate(ds, ["symbolic", "retrieval", "chance"], splits=ds.eval_splits)
    }
    assert rows["symbolic", "test_hard"]["acc"] == 1.0
    assert rows["symbolic", "test_hard"]["coverage"] == 1.0
    ood = ds.splits["test_inferred_ood"]
    pred = symbolic_answers(ds, ood)
    assert 0 < (pred >= 0).mean() < 1 and (pred[pred >= 0] == ds.answers[ood][pred >= 0]).all()
    assert rows["retrieval", "test_hard"]["acc"] <= 0.45
    assert rows["retrieval", "test_hard"]["coverage"] == 0.0
    for split in ("atomic_id", "train_inferred", "valid", "test_inferred_id"):
        assert rows["retrieval", split]["acc"] == 1.0, split  # one step is enough in ID
    assert 0.2 <= rows["chance", "test_hard"]["acc"] <= 0.47
    assert rows["chance", "test_hard"]["chance"] == pytest.approx(1 / 3)
    for r in rows.values():
        assert r["lo"] - 1e-9 <= r["acc"] <= r["hi"] + 1e-9
        assert r["n"] == len(ds.splits[r["split"]])


def test_baselines_command_runs_the_complex_reasoning_methods(tmp_path):
    from grokloop.baselines.__main__ import main

    main(
        [
            "lookup",
            "data=complex_reasoning_cpu",
            "data.n_entities=50",
            "data.n_attributes=2",
            "data.eval_size=100",
            "methods=[symbolic,retrieval,chance]",
            f"out={tmp_path}",
            "data_cache=null",
        ]
    )
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"symbolic", "retrieval", "chance"}
    assert default_methods("complex_reasoning") == [
        "lookup_cosine",
        "lookup_digit",
        "scattershot",
        "symbolic",
        "retrieval",
        "chance",
    ]
    assert default_methods("composition") == [
        "lookup_cosine",
        "lookup_digit",
        "scattershot",
        "symbolic",
    ]
    sym = {r["split"]: r["acc"] for r in rows if r["model"] == "symbolic"}
    assert sym["test_hard"] == 1.0


@pytest.mark.parametrize(
    "bad,key",
    [
        (dict(n_values=1), "data.n_values"),
        (dict(ood_fraction=1.5), "data.ood_fraction"),
        (dict(ood_fraction=0.001), "data.ood_fraction"),
        (dict(train_fraction=0.0), "data.train_fraction"),
        (dict(n_entities=0), "data.n_entities"),
        (dict(test_id_fraction=0.6, valid_fraction=0.5), "data.test_id_fraction"),
        (dict(phi=3.0), "data.phi"),
    ],
)
def test_config_errors_name_the_key(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
        data_config_from_dict({"task": "complex_reasoning"} | bad)
    assert "\n" not in str(e.value)


def test_same_seed_same_bytes():
    assert tiny().content_hash() == tiny().content_hash() != tiny(seed=1).content_hash()
