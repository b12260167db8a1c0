"""Canonical entity keys and banks that add entities (issue 37): keys are fixed, seeded and the
same for any count drawn; every reader of an entity reads its key; learned embeddings change
nothing; a model reads new entity ids beyond its vocabulary without a weight changing;
`add-entities` writes a bank that records what it extends, and a bank that does not fit is
refused in one line naming the fix; the synthetic new facts and questions are what their split
names say; a grown learned model keeps its old logits."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datagen.new_entities import new_facts
from grokloop import cli
from grokloop.bank.__main__ import main as bank_main
from grokloop.bank.entities import weights_sha256
from grokloop.bank.grow import grow
from grokloop.config import ModelConfig, run_config_from_dict
from grokloop.entity_keys import draw_keys
from grokloop.memory import FactBank
from grokloop.model import LoopedTransformer
from grokloop.train import train
from tests.test_memory import TINY_DATA

# composition_vocab(10, 11): <pad> </a>, entities 2..11, relations 12..22
BASE = dict(
    d_vocab=23,
    n_ctx=3,
    d_model=32,
    n_heads=4,
    d_mlp=64,
    memory="facts",
    memory_top_k=3,
    memory_d_key=8,
    n_core=2,
    n_steps=2,
)
KEYS = dict(entity_keys="canonical", n_entities=10, key_noise=1.0)


def model(**kw):
    torch.manual_seed(0)
    m = LoopedTransformer(ModelConfig(**(BASE | kw)).resolved()).eval()
    m.memory.attach(FactBank([2, 3, 4, 5], [12, 13, 14, 15], [6, 7, 8, 9]))
    return m


# --- keys -------------------------------------------------------------------------------------
def test_keys_are_a_pure_function_of_seed_and_ordinal_at_the_embedding_scale():
    whole = draw_keys(3, 0, 2500, 16, 0.5)
    assert torch.equal(whole[1500:], draw_keys(3, 1500, 1000, 16, 0.5))  # any count, any start
    assert torch.allclose(whole.norm(dim=1), torch.full((2500,), 0.5))
    assert not torch.equal(whole[:10], draw_keys(4, 0, 10, 16, 0.5))
    m = model(**KEYS)
    assert torch.allclose(m.entity_keys.key.norm(dim=1), torch.full((10,), 0.02 * 32**0.5))
    assert "entity_keys.key" not in dict(m.named_parameters())  # not trained


def test_every_reader_of_an_entity_reads_its_key_and_the_rest_is_learned():
    m = model(**KEYS)
    E, key = m.embedding_matrix(), m.entity_keys.key
    assert torch.equal(E[2:12], key) and torch.equal(E[12:], m.W_E[12:])
    assert torch.equal(m.W_U[:, 2:12], key.T) and torch.equal(m.W_U[:, 12:], m.W_U_own[:, 12:])
    assert (m.output_bias()[2:12] == 0).all()
    x = torch.randn(5, 32)
    logits = m.unembed(x)  # nearest key: the entity logits are the final state against each key
    assert torch.allclose(logits[:, 2:12], m.ln_final(x) @ key.T, atol=1e-6)
    assert torch.allclose(m.memory.embeddings()[2:12], torch.nn.functional.layer_norm(key, (32,)))


def test_learned_embeddings_are_the_model_as_before():
    m = model()
    assert m.entity_keys is None and m.embedding_matrix() is m.W_E and m.output_bias() is m.b_U
    assert m.W_U is m.W_U_own and not any("entity" in k for k in m.state_dict())
    with pytest.raises(ValueError, match="model.entity_keys=canonical"):
        m.extend_entities(3)


def test_key_noise_is_drawn_once_per_pass_in_training_only():
    m = model(**KEYS)
    tokens = torch.tensor([[2, 12, 13], [4, 14, 15]])
    assert torch.equal(m(tokens), m(tokens))  # eval: the keys themselves
    m.train()
    seen = {}
    out = m.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, hook: seen.update(x=a))])
    assert torch.equal(seen["x"][0, 0], m.embedding_matrix()[2])  # the memory reads this draw
    assert not torch.equal(m.embedding_matrix()[2], m.entity_keys.key[0])
    assert not torch.equal(out, m(tokens))  # a new draw each pass
    fresh = model(**(KEYS | dict(key_noise=float("inf")))).train()
    fresh(tokens)  # inf: a fresh random key, nothing of the entity's own
    E, key = fresh.embedding_matrix()[2:12], fresh.entity_keys.key
    assert torch.allclose(E.norm(dim=1), key.norm(dim=1))
    assert torch.nn.functional.cosine_similarity(E, key).abs().max() < 0.8


def test_a_model_reads_entities_beyond_its_vocabulary_and_no_weight_changes():
    m = model(**KEYS)
    before = weights_sha256(m)
    m.extend_entities(5)  # ids 23..27: ordinals 10..14
    assert m.vocab_size == 28
    assert torch.equal(m.embedding_matrix()[23:], draw_keys(0, 10, 5, 32, 0.02 * 32**0.5))
    m.memory.attach(FactBank([23, 24, 2], [12, 13, 14], [24, 2, 27]))
    logits = m(torch.tensor([[23, 12, 13]]))
    assert logits.shape == (1, 3, 28) and (m.output_bias()[23:] == 0).all()
    assert weights_sha256(m) == before and "entity_keys.new_key" not in m.state_dict()


def test_phantom_facts_join_the_bank_in_training_only_with_fresh_keys():
    m = model(**KEYS, key_phantoms=6)
    bank = m.memory.bank
    assert len(m.memory.facts()[0]) == 4 and m.embedding_matrix().shape[0] == 23  # eval
    m.train()
    head, rel, tail = m.memory.facts()
    assert len(head) == 4 + 6 and torch.equal(head[:4], bank.head)  # slot i < 4: the bank's
    assert set(head[4:].tolist()) == set(range(23, 29)) and set(rel[4:].tolist()) <= {
        12,
        13,
        14,
        15,
    }
    m(torch.tensor([[2, 12, 13]]))
    first = m.embedding_matrix()[23:].clone()
    assert first.shape == (6, 32) and m(torch.tensor([[2, 12, 13]])).shape == (1, 3, 29)
    assert not torch.equal(first, m.embedding_matrix()[23:])  # a new draw each pass
    assert not any("phantom" in k for k in m.state_dict())


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(entity_keys="canonical"), "needs the entity tokens"),
        (dict(entity_keys="canonical", n_entities=30), "past model.d_vocab=23"),
        (dict(key_noise=-1.0), "model.key_noise=-1.0 must be >= 0"),
        (dict(entity_keys="keys"), "model.entity_keys='keys' is not one of"),
        (dict(key_phantoms=5), "needs model.entity_keys=canonical"),
    ],
)
def test_key_config_errors_name_the_key(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        ModelConfig(**(BASE | kw))


def test_a_grown_learned_model_keeps_its_old_logits():
    m = model()
    g = grow(m, 4)
    g.memory.attach(m.memory.bank)
    tokens = torch.tensor([[2, 12, 13], [5, 15, 14]])
    assert g.vocab_size == 27 and torch.equal(g(tokens)[..., :23], m(tokens))


# --- the synthetic new facts ---------------------------------------------------------------------
def test_new_facts_and_questions_are_what_their_splits_say():
    rng = np.random.default_rng(0)
    head = np.repeat(np.arange(30), 5)
    rel = rng.random((30, 8)).argsort(1)[:, :5].ravel()
    tail = rng.integers(0, 30, 150)
    nf = new_facts(
        head,
        rel,
        tail,
        30,
        8,
        40,
        2,
        np.random.default_rng(1),
        link=True,
        link_degree=2,
        n_questions=50,
    )
    again = new_facts(
        head,
        rel,
        tail,
        30,
        8,
        40,
        2,
        np.random.default_rng(1),
        link=True,
        link_degree=2,
        n_questions=50,
    )
    assert all(np.array_equal(nf.questions[s], again.questions[s]) for s in nf.questions)
    h, r, t = (np.concatenate(x) for x in ((head, nf.head), (rel, nf.relation), (tail, nf.tail)))
    fact = {(a, b): c for a, b, c in zip(h, r, t)}
    assert len(fact) == len(h)  # each (head, relation) once: nothing replaced
    new = {
        "test_new_all": (1, 1, 1),
        "test_new_head": (1, 0, 0),
        "test_new_bridge": (0, 1, 0),
        "test_new_answer": (0, 0, 1),
    }
    for split, q in nf.questions.items():
        assert len(q) > 0
        for hd, r1, r2, ans in q:
            b = fact[(hd, r1)]
            assert fact[(b, r2)] == ans
            assert tuple(int(x >= 30) for x in (hd, b, ans)) == new[split]


# --- the command ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny canonical-key memory run and a learned one on the same data (a few seconds)."""
    tmp = tmp_path_factory.mktemp("new_entities")
    cache = f"data_cache={tmp / 'cache'}"
    for name, over in (
        ("canonical", ["experiment=new_entities_canonical", "model.key_phantoms=20"]),
        ("learned", ["experiment=new_entities_learned"]),
    ):
        d = OmegaConf.to_container(
            cli.compose("train", [*over, "debug=tiny", *TINY_DATA, "data.n_relations=6", cache]),
            resolve=True,
        )
        d.pop("out_dir"), d.pop("resume")
        train(run_config_from_dict(d), tmp / name)
    return tmp, cache


def test_add_entities_extends_the_bank_and_vocabulary_and_records_it(runs):
    tmp, cache = runs
    from grokloop.checkpoint import load_model

    g1 = load_model(tmp / "canonical")[0].memory.bank
    free = next(
        r for r in range(6) if (g1.slots_of(torch.tensor([6]), torch.tensor([14 + r])) < 0).all()
    )  # a relation e_4 (token 6) has no fact for
    (tmp / "facts.txt").write_text(
        f"alice r_1 e_3\nbob r_2 alice  # bob -> alice -> e_3\ne_4 r_{free} bob\n"
    )
    bank_main(
        [
            "add-entities",
            f"run_dir={tmp / 'canonical'}",
            f"facts={tmp / 'facts.txt'}",
            f"out={tmp / 'people'}",
        ]
    )
    manifest = json.loads((tmp / "people" / "manifest.json").read_text())
    ext = manifest["extends"]
    assert ext["new_entities"] == 2 and ext["first_new_id"] == 20 and ext["key_seed"] == 0
    assert ext["added_facts"] == 3 and manifest["vocab"]["tokens"][20:] == ["<alice>", "<bob>"]
    assert ext["weights_sha256"] == weights_sha256(load_model(tmp / "canonical")[0])
    (tmp / "q.txt").write_text(f"people bob r_2 r_1 e_3\npeople e_4 r_{free} r_2 alice\n")
    bank_main(
        [
            "eval",
            f"run_dir={tmp / 'canonical'}",
            f"bank={tmp / 'people'}",
            f"questions={tmp / 'q.txt'}",
            "baselines=true",
            cache,
            f"out={tmp / 'ask'}",
        ]
    )
    summary = json.loads((tmp / "ask" / "summary.json").read_text())
    answers = [r for r in summary["rows"] if r["model"].endswith(".frozen") and "hop" not in r]
    assert [(r["split"], r["n"], r["frozen"]) for r in answers] == [("people", 2, True)]
    assert summary["weights_sha256"]["before"] == summary["weights_sha256"]["after"]
    assert {r["model"] for r in summary["rows"]} >= {"symbolic", "lookup_cosine"}
    assert next(r for r in summary["rows"] if r["model"] == "symbolic")["acc"] == 1.0


@pytest.fixture(scope="module")
def synthetic(runs):
    tmp, cache = runs
    bank_main(
        [
            "add-entities",
            f"run_dir={tmp / 'canonical'}",
            "new_entities=20",
            "new_degree=2",
            "link=true",
            "link_degree=2",
            "n_questions=10",
            f"out={tmp / 'synthetic'}",
        ]
    )
    return tmp / "synthetic"


def test_a_synthetic_graph_writes_its_facts_and_questions(synthetic):
    splits = {line.split()[0] for line in (synthetic / "questions.txt").read_text().splitlines()}
    assert splits == {
        "test_new_all",
        "test_new_head",
        "test_new_bridge",
        "test_new_answer",
        "test_old",
    }
    tokens = json.loads((synthetic / "manifest.json").read_text())["vocab"]["tokens"]
    assert tokens[20:] == [f"<new_{i}>" for i in range(20)]  # new_i is ordinal 12 + i


def test_a_validation_bank_asks_the_runs_valid_questions_under_valid_names(runs, synthetic):
    tmp, cache = runs
    out = tmp / "synthetic_valid"
    args = [f"run_dir={tmp / 'canonical'}", "new_entities=20", "new_degree=2", "link=true"]
    bank_main(["add-entities", *args, "link_degree=2", "new_seed=1", "role=valid", f"out={out}"])
    lines = [line.split() for line in (out / "questions.txt").read_text().splitlines()]
    assert {w[0] for w in lines} == {
        f"valid_{s}" for s in ("new_all", "new_head", "new_bridge", "new_answer", "old")
    }
    test_old = [
        w[1:]
        for w in map(str.split, (synthetic / "questions.txt").read_text().splitlines())
        if w[0] == "test_old"
    ]
    valid_old = [w[1:] for w in lines if w[0] == "valid_old"]
    assert valid_old and not set(map(tuple, valid_old)) & set(map(tuple, test_old))
    assert (out / "facts_added.txt").read_text() != (synthetic / "facts_added.txt").read_text()


def test_a_role_other_than_test_or_valid_is_refused_before_anything_is_written(runs):
    tmp, cache = runs
    args = [f"run_dir={tmp / 'canonical'}", "new_entities=5", "role=train", f"out={tmp / 'role'}"]
    refused(["add-entities", *args], "give role=test", cache)
    assert not (tmp / "role").exists()


@pytest.mark.parametrize("steps", [0, 2])  # the learned run: untrained rows, two steps
def test_a_learned_run_grows_rows_for_new_entities_and_fine_tunes_them(runs, synthetic, steps):
    tmp, cache = runs
    out = tmp / f"ft{steps}"
    bank_main(
        [
            "eval",
            f"run_dir={tmp / 'learned'}",
            f"bank={synthetic}",
            f"questions={synthetic / 'questions.txt'}",
            "method=finetune",
            f"finetune_steps={steps}",
            cache,
            f"out={out}",
        ]
    )
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert all(r["frozen"] is (steps == 0) and r["finetune_steps"] == steps for r in rows)


def refused(args, needle, cache):
    with pytest.raises(SystemExit) as e:
        bank_main([*args, cache])
    assert e.value.code == 2 and needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "facts, run, needle",
    [
        ("carol e_2 e_3", "canonical", "is not a relation of the run"),
        ("r_1 r_1 e_3", "canonical", "is a token of the run but not an entity"),
        ("alice r_1 e_3", "learned", "train with model.entity_keys=canonical"),
    ],
)
def test_facts_a_run_cannot_add_are_refused_in_one_line(runs, facts, run, needle):
    tmp, cache = runs
    (tmp / "bad.txt").write_text(facts + "\n")
    refused(
        [
            "add-entities",
            f"run_dir={tmp / run}",
            f"facts={tmp / 'bad.txt'}",
            f"out={tmp / 'refused'}",
        ],
        needle,
        cache,
    )
    assert not (tmp / "refused" / "manifest.json").exists()


@pytest.mark.parametrize(
    "key, value, needle",
    [
        (None, None, "a new entity has no embedding in it"),  # the learned run
        ("key_seed", 7, "model.key_seed=7"),
        ("vocab_sha256", "0" * 64, "adds entities to another vocabulary"),
    ],
)
def test_a_bank_that_does_not_fit_the_run_is_refused_naming_the_fix(
    runs, synthetic, key, value, needle
):
    tmp, cache = runs
    q, run, bank = f"questions={synthetic / 'questions.txt'}", tmp / "canonical", synthetic
    if key is None:
        run = tmp / "learned"
    else:
        bank = tmp / f"other_{key}"
        bank.mkdir(exist_ok=True)
        for f in ("bank.safetensors", "facts_added.txt"):
            (bank / f).write_bytes((synthetic / f).read_bytes())
        manifest = json.loads((synthetic / "manifest.json").read_text())
        manifest["extends"][key] = value
        (bank / "manifest.json").write_text(json.dumps(manifest))
    refused(["eval", f"run_dir={run}", f"bank={bank}", q], needle, cache)
    if key is not None:
        refused(["eval", f"run_dir={run}", f"bank={bank}", q], "add-entities run_dir=RUN", cache)
