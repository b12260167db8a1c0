"""The fact memory (model.memory=facts) and knowledge banks: the read against a hand computation,
per-step hooks, bank files, swaps and edits that act only through the memory, refusals, config
errors, and memory=none computing what it computed before the memory existed."""

import json
import math

import pytest
import torch

from datagen.composition import composition_vocab
from grokloop.bank import attach_bank, load_bank, save_bank, vocab_sha256
from grokloop.bank.__main__ import main as bank_main
from grokloop.config import ModelConfig
from grokloop.memory import FactBank
from grokloop.model import LoopedTransformer

BASE = dict(d_vocab=23, n_ctx=5, d_model=32, n_heads=4, d_mlp=64)
MEM = dict(memory="facts", memory_top_k=3, memory_d_key=8)
VOCAB = composition_vocab(10, 11)  # 2 specials, entities 2..11, relations 12..22: 23 tokens
TOKENS = torch.randint(0, 23, (4, 5), generator=torch.Generator().manual_seed(3))
MEM_HOOKS = ("hook_query", "hook_scores", "hook_slots", "hook_weights", "hook_read")


def model(**kw):
    torch.manual_seed(0)
    return LoopedTransformer(ModelConfig(**(BASE | kw)).resolved()).eval()


def random_bank(n: int = 40, seed: int = 0) -> FactBank:
    """n distinct (head, relation) pairs of VOCAB with random tails, as a graph has."""
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(110, generator=g)[:n]
    return FactBank(2 + pairs // 11, 12 + pairs % 11, torch.randint(2, 12, (n,), generator=g))


def memory_model(bank=None, **kw):
    m = model(**(MEM | dict(n_core=2, n_steps=3) | kw))
    m.memory.attach(bank if bank is not None else random_bank())
    return m


# --- the read -------------------------------------------------------------------------------------
def test_read_is_the_softmax_over_the_top_k_and_matches_a_hand_computed_case():
    m = model(
        d_model=4,
        n_heads=1,
        d_mlp=8,
        n_core=1,
        normalization="none",
        memory="facts",
        memory_top_k=2,
        memory_d_key=4,
    )
    mem = m.memory
    with torch.no_grad():
        m.W_E.copy_(torch.randn(23, 4, generator=torch.Generator().manual_seed(5)))
        mem.W_Q.weight.copy_(torch.eye(4))
        mem.W_Q.bias.zero_()
        mem.W_K_head.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0]]))
        mem.W_K_rel.weight.copy_(torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]]))
        mem.W_V.weight.copy_(2 * torch.eye(4))
    bank = FactBank([2, 3, 4, 5, 2], [12, 13, 14, 15, 16], [6, 7, 8, 9, 10])
    mem.attach(bank)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3], [1.0, 1.0, -1.0, 0.0]])
    E = torch.nn.functional.layer_norm(m.W_E.detach(), (4,))  # slots see normalised embeddings
    for row in range(
        2
    ):  # by hand: key_i = [n(E[h_i])[:2], n(E[r_i])[2:]], score = q . key / sqrt(4)
        scores = [
            float(x[row] @ torch.cat([E[h][:2], E[r][2:]])) / math.sqrt(4)
            for h, r in zip(bank.head.tolist(), bank.relation.tolist())
        ]
        top = sorted(range(5), key=lambda i: -scores[i])[:2]
        w = torch.tensor([scores[i] for i in top]).softmax(0)
        expected = 2 * sum(w[j] * E[bank.tail[i]] for j, i in enumerate(top))
        assert torch.allclose(mem(x[row : row + 1])[0], expected, atol=1e-6)
        # a fact outside the top-k does not change the read; one inside does
        out_tail = bank.tail.clone()
        out_tail[next(i for i in range(5) if i not in top)] = 11
        mem.attach(FactBank(bank.head, bank.relation, out_tail))
        assert torch.equal(mem(x[row : row + 1])[0], mem(x[row : row + 1])[0])
        assert torch.allclose(mem(x[row : row + 1])[0], expected, atol=1e-6)
        in_tail = bank.tail.clone()
        in_tail[top[0]] = 11
        mem.attach(FactBank(bank.head, bank.relation, in_tail))
        assert not torch.allclose(mem(x[row : row + 1])[0], expected, atol=1e-3)
        mem.attach(bank)


def test_chunked_search_equals_one_chunk():
    m = memory_model(random_bank(50), memory_top_k=5)
    q = 50 * torch.randn(7, 3, 8, generator=torch.Generator().manual_seed(2))
    whole = m.memory.search(q)
    m.memory.chunk = 6
    chunked = m.memory.search(q)
    assert torch.allclose(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert whole[1].shape == (7, 3, 5) and (whole[0][..., :-1] >= whole[0][..., 1:]).all()


@pytest.mark.parametrize("n_facts", [110, 40, 7])  # every pair, a sparse bank, fewer than 2k
def test_product_key_search_finds_exactly_what_scoring_every_fact_finds(n_facts):
    from grokloop.memory import exhaustive_top_k, product_top_k

    m = memory_model(random_bank(n_facts, seed=n_facts), memory_top_k=3)
    ix = m.memory.index()
    assert ix.table is not None and (ix.table >= 0).sum() == n_facts
    g = torch.Generator().manual_seed(1)
    # sharp queries certify at the first grid; flat ones (scale 0.1) need the retries
    q = torch.cat([30 * torch.randn(50, 8, generator=g), 0.1 * torch.randn(50, 8, generator=g)])
    s_head, s_rel = m.memory.subkey_scores(q, ix)
    want = exhaustive_top_k(s_head, s_rel, ix, 3, chunk=1 << 16, chunk_scores=1 << 24)
    for max_grid in (1 << 16, 36):  # 36: rows that fail the first grid score every fact
        got = product_top_k(s_head, s_rel, ix, 3, max_grid=max_grid)
        assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])
    m.memory.product_min_facts = 0  # the module's search takes the product path and agrees
    assert torch.equal(m.memory.search(q.view(10, 10, 8))[1], want[1].view(10, 10, 3))


def test_product_key_search_is_differentiable_and_a_bank_with_a_repeated_pair_scores_every_fact():
    bank = random_bank(40)
    m = memory_model(bank, memory_top_k=3)
    m.memory.product_min_facts = 0
    x = torch.randn(2, 5, 32, requires_grad=True)
    m.memory(x).sum().backward()
    assert x.grad.abs().sum() > 0 and m.memory.W_K_head.weight.grad.abs().sum() > 0
    twice = FactBank(
        torch.cat([bank.head, bank.head[:1]]),
        torch.cat([bank.relation, bank.relation[:1]]),
        torch.cat([bank.tail, bank.tail[:1]]),
    )
    m.memory.attach(twice)
    assert m.memory.index().table is None  # one table cell cannot hold two slots
    q = torch.randn(4, 8)
    assert torch.equal(m.memory.search(q)[1], m.memory.all_scores(q).topk(3, dim=-1).indices)


def test_more_slots_than_tokens_sums_the_weights_per_tail_token_first():
    m = memory_model(random_bank(60), memory_top_k=40)  # 40 slots > 23 tokens
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        scores, slots = m.memory.search(m.memory.W_Q(m.memory.ln(x)))
        E = m.memory.embeddings()
        mixed = (scores.softmax(-1)[..., None] * E[m.memory.bank_tail[slots]]).sum(-2)
        assert torch.allclose(m.memory(x), m.memory.W_V(mixed), atol=1e-6)


def test_a_bank_smaller_than_top_k_reads_every_fact_and_no_bank_is_an_error():
    m = memory_model(random_bank(2), memory_top_k=4)
    assert m.memory.search(torch.randn(3, 8))[1].shape == (3, 2)
    m.memory.attach(FactBank([], [], []))
    with pytest.raises(RuntimeError, match="no bank attached"):
        m(TOKENS)


def test_slots_of_finds_each_fact_and_the_address_loss_teaches_the_memory_its_slots():
    from grokloop.memory import address_loss

    bank = random_bank(40)
    assert torch.equal(bank.slots_of(bank.head, bank.relation), torch.arange(40))
    missing = next(p for p in range(110) if p not in (bank.head - 2) * 11 + bank.relation - 12)
    assert (
        bank.slots_of(torch.tensor([2 + missing // 11]), torch.tensor([12 + missing % 11])).item()
        == -1
    )
    m = memory_model(bank, n_core=1, n_steps=1, memory_top_k=1)
    tokens = bank.ids()[:, :2]
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = address_loss(m, tokens).item()
    for _ in range(60):
        opt.zero_grad()
        address_loss(m, tokens).backward()
        opt.step()
    assert address_loss(m, tokens).item() < first / 4
    _, cache = m.run_with_cache(tokens)
    assert (cache["steps.0.memory.hook_slots"][:, 1, 0] == torch.arange(40)).float().mean() > 0.9


# --- hooks ------------------------------------------------------------------------------------------
def test_memory_hooks_fire_once_per_step_with_their_shapes_and_the_lens_sees_the_read():
    m = memory_model()
    logits, cache = m.run_with_cache(TOKENS)
    shapes = {
        "hook_query": (4, 5, 8),
        "hook_scores": (4, 5, 3),
        "hook_slots": (4, 5, 3),
        "hook_weights": (4, 5, 3),
        "hook_read": (4, 5, 32),
    }
    for s in range(3):
        for name, shape in shapes.items():
            assert cache[f"steps.{s}.memory.{name}"].shape == shape
    assert not torch.allclose(cache["steps.0.memory.hook_read"], cache["steps.1.memory.hook_read"])
    # the read is inside the block: resid_post includes it, and the lens's last layer is the logits
    lens = cache.accumulated_resid(apply_ln=True)
    assert torch.allclose(lens[-1] @ m.W_U + m.b_U, logits, atol=1e-5)
    fired = {}
    for name, hp in m.hook_dict.items():
        hp.add_hook(lambda act, hook: fired.__setitem__(hook.name, fired.get(hook.name, 0) + 1))
    m(TOKENS)
    m.reset_hooks()
    assert {k: v for k, v in fired.items() if ".memory." in k} == {
        f"steps.{s}.memory.{h}": 1 for s in range(3) for h in MEM_HOOKS
    }
    assert not any(".memory." in k for k in model(n_core=2, n_steps=3).hook_dict)


def test_every_path_reads_the_memory_alike():
    m = memory_model()
    pos = torch.tensor([1, 2, 3, 4])
    full = m(TOKENS)[torch.arange(4), pos]
    fast = m.readout_steps(TOKENS, positions=pos, every_step=False, answer_only=True)[-1]
    e, state = m.enter_loop(TOKENS)
    for s in range(3):
        state = m.step(state, e, s)
    assert torch.allclose(full, fast, atol=1e-5) and torch.allclose(
        full, m.read(state, pos), atol=1e-5
    )


# --- banks: files, swaps, edits, refusals ------------------------------------------------------
def test_a_bank_round_trips_through_its_files_exactly(tmp_path):
    bank = random_bank(30)
    save_bank(bank, tmp_path / "b", VOCAB, {"kind": "test"})
    back, manifest = load_bank(tmp_path / "b", VOCAB)
    assert torch.equal(back.ids(), bank.ids())
    assert manifest["n_facts"] == 30 and manifest["vocab"]["sha256"] == vocab_sha256(VOCAB)
    h, r, t = bank.ids()[0].tolist()
    assert manifest["facts"][0] == f"{VOCAB.token(h)} {VOCAB.token(r)} {VOCAB.token(t)}"
    assert not list(tmp_path.glob("b/*.tmp*"))
    (tmp_path / "b" / "bank.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_bank(tmp_path / "b", VOCAB)


def test_swapping_a_bank_changes_answers_only_through_the_memory(tmp_path):
    m = memory_model(random_bank(40, seed=0))
    before = {k: v.clone() for k, v in m.named_parameters()}
    a = m(TOKENS)
    save_bank(random_bank(40, seed=1), tmp_path / "g2", VOCAB, {"kind": "test"})
    attach_bank(m, tmp_path / "g2", VOCAB)
    b = m(TOKENS)
    assert not torch.allclose(a, b, atol=1e-4)
    assert all(torch.equal(p, before[k]) for k, p in m.named_parameters())  # byte-identical
    # with the read patched to zero, the two banks give the same answers
    zero = [
        (f"steps.{s}.memory.hook_read", lambda act, hook: torch.zeros_like(act)) for s in range(3)
    ]
    b0 = m.run_with_hooks(TOKENS, fwd_hooks=zero)
    m.memory.attach(random_bank(40, seed=0))
    assert torch.equal(m.run_with_hooks(TOKENS, fwd_hooks=zero), b0)
    assert torch.allclose(m(TOKENS), a)


def test_editing_one_fact_changes_the_read_exactly_where_that_fact_is_read():
    bank = random_bank(40)
    m = memory_model(bank, n_steps=1)
    _, cache = m.run_with_cache(TOKENS)
    slots, read = cache["steps.0.memory.hook_slots"], cache["steps.0.memory.hook_read"]
    i = int(slots[0, 0, 0])  # the top fact at some position
    h, r, t = bank.ids()[i].tolist()
    m.memory.attach(bank.edited(h, r, 2 + (t - 2 + 1) % 10))
    _, edited = m.run_with_cache(TOKENS)
    changed = (edited["steps.0.memory.hook_read"] - read).abs().amax(-1) > 0
    assert torch.equal(changed, (slots == i).any(-1))
    assert bank.edited(h, r, t).ids().equal(bank.ids()) and len(bank.edited(2, 22, 3)) in (40, 41)


def test_a_bank_that_does_not_fit_is_refused(tmp_path):
    save_bank(random_bank(), tmp_path / "b", VOCAB, {"kind": "test"})
    other = composition_vocab(10, 12)
    with pytest.raises(ValueError, match="another vocabulary"):
        attach_bank(memory_model(), tmp_path / "b", other)
    with pytest.raises(ValueError, match="has no memory"):
        attach_bank(model(n_core=2, n_steps=2), tmp_path / "b", VOCAB)
    with pytest.raises(FileNotFoundError, match="not a bank"):
        attach_bank(memory_model(), tmp_path, VOCAB)
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        memory_model().memory.attach(FactBank([2], [12], [23]))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest | {"format": "other/9"}))
    with pytest.raises(ValueError, match="has format"):
        attach_bank(memory_model(), tmp_path / "b", VOCAB)


# --- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(memory="fact"), "model.memory='fact' is not one of"),
        (dict(memory="facts", memory_top_k=0), "model.memory_top_k=0"),
        (dict(memory="facts", memory_d_key=7), "model.memory_d_key=7 must be even"),
        (dict(memory="facts", n_core=0, n_steps=1), "model.n_core / core_sizes=[0] has none"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        ModelConfig(**kw)


# --- memory=none is what it was ------------------------------------------------------------------
# Logits at the last position (first 4 tokens of 3 examples), their sum, and the number of hook
# points, computed by this test's configs at commit ea6f86d, before the memory existed.
BEFORE = [
    (
        dict(n_prelude=1, n_core=2, n_coda=1, n_steps=3, injection="add"),
        154,
        -2.33671,
        [
            -0.029167,
            -0.007672,
            -0.052109,
            0.143889,
            -0.182368,
            -0.005368,
            -0.139443,
            0.114825,
            0.064343,
            0.015171,
            -0.103431,
            0.028988,
        ],
    ),
    (
        dict(n_core=1, n_steps=4, injection="concat", feedback="argmax", core_sizes=[1, 2]),
        84,
        2.44765,
        [
            0.060577,
            0.048173,
            0.204876,
            -0.069057,
            -0.08897,
            -0.061389,
            0.142233,
            -0.072072,
            0.08975,
            -0.093373,
            0.16149,
            0.025601,
        ],
    ),
    (
        dict(n_core=2, n_steps=2, moe_experts=4, init_state="zeros", injection="add"),
        80,
        1.58028,
        [
            0.14302,
            -0.065457,
            0.018416,
            0.055737,
            0.094421,
            0.020989,
            0.012127,
            0.026821,
            0.049942,
            0.039108,
            0.01467,
            -0.00809,
        ],
    ),
]


@pytest.mark.parametrize("kw, n_hooks, total, first", BEFORE)
def test_memory_none_computes_what_it_computed_before(kw, n_hooks, total, first):
    tokens = torch.randint(0, 23, (3, 5), generator=torch.Generator().manual_seed(7))
    m = model(**kw)
    with torch.no_grad():
        logits = m(tokens)
    assert torch.allclose(logits[:, -1, :4].flatten(), torch.tensor(first), atol=2e-6)
    assert abs(logits.double().sum().item() - total) < 1e-4 and len(m.hook_dict) == n_hooks
    # a memory adds its own weights, drawn last: every other weight is the same seed's
    mem = dict(model(**kw, memory="facts").named_parameters())
    assert all(torch.equal(p, mem[k]) for k, p in m.named_parameters())
    assert set(mem) - dict(m.named_parameters()).keys() == {
        "memory.ln.w",
        "memory.ln.b",
        "memory.W_Q.weight",
        "memory.W_Q.bias",
        "memory.W_K_head.weight",
        "memory.W_K_rel.weight",
        "memory.W_V.weight",
    }


def test_a_memory_on_a_task_without_atomic_facts_is_refused_before_any_run_dir():
    from omegaconf import OmegaConf

    from grokloop import cli
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare

    d = OmegaConf.to_container(
        cli.compose("train", ["data.p=11", "model.memory=facts"]), resolve=True
    )
    d.pop("out_dir"), d.pop("resume")
    with pytest.raises(ValueError, match="no atomic facts"):
        prepare(run_config_from_dict(d))


# --- training, checkpoints and the command ------------------------------------------------------
TINY_DATA = [
    "data.n_entities=12",
    "data.n_relations=4",
    "data.out_degree=4",
    "data.phi=2.0",
    "data.ood_fraction=0.25",
    "data.eval_size=40",
]


def test_trained_memory_model_carries_its_bank_and_evaluates_a_swapped_one(tmp_path):
    from omegaconf import OmegaConf

    from grokloop import cli
    from grokloop.checkpoint import load_model
    from grokloop.config import run_config_from_dict
    from grokloop.train import train

    cache = f"data_cache={tmp_path / 'cache'}"
    d = OmegaConf.to_container(
        cli.compose(
            "train", ["experiment=composition_cpu_loop2_memory", "debug=tiny", *TINY_DATA, cache]
        ),
        resolve=True,
    )
    d.pop("out_dir"), d.pop("resume")
    run = tmp_path / "run"
    train(run_config_from_dict(d), run)
    loaded, ds, _ = load_model(run)
    assert torch.equal(
        loaded.memory.bank.ids(), FactBank.from_dataset(ds).ids()
    )  # the checkpoint's
    bank_main(
        [
            "build",
            "data=composition_cpu",
            *TINY_DATA,
            "data.seed=1",
            cache,
            f"out={tmp_path / 'g2'}",
        ]
    )
    bank_main(
        [
            "eval",
            f"run_dir={run}",
            f"bank={tmp_path / 'g2'}",
            "data=composition_cpu",
            *TINY_DATA,
            "data.seed=1",
            cache,
            f"out={tmp_path / 'ev'}",
        ]
    )
    swapped = LoopedTransformer.from_run(run, bank=tmp_path / "g2")  # bank= at load time
    assert torch.equal(swapped.memory.bank.ids(), load_bank(tmp_path / "g2", ds.vocab)[0].ids())
    assert all(torch.equal(p, q) for p, q in zip(swapped.parameters(), loaded.parameters()))
    rows = json.loads((tmp_path / "ev" / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"composition_cpu_loop2_memory.swap"}
    assert {"test_inferred_id", "test_OI", "atomic_id"} <= {r["split"] for r in rows}
    assert any(r.get("metric", "").startswith("retrieval@") for r in rows)
    # a bank over another vocabulary is refused before any work
    bank_main(
        [
            "build",
            "data=composition_cpu",
            "data.n_entities=13",
            "data.n_relations=4",
            "data.out_degree=4",
            "data.phi=2.0",
            "data.eval_size=40",
            cache,
            f"out={tmp_path / 'other'}",
        ]
    )
    with pytest.raises(SystemExit) as e:
        bank_main(
            [
                "eval",
                f"run_dir={run}",
                f"bank={tmp_path / 'other'}",
                cache,
                f"out={tmp_path / 'ev2'}",
            ]
        )
    assert e.value.code == 2 and not (tmp_path / "ev2").exists()
    with pytest.raises(SystemExit):
        bank_main(["eval", f"out={tmp_path / 'ev3'}"])  # run_dir is required
    with pytest.raises(SystemExit):
        bank_main(["build", f"run_dir={run}", f"bank={tmp_path / 'g2'}", f"out={tmp_path / 'x'}"])


def test_training_with_the_address_loss_teaches_retrieval_and_needs_a_memory(tmp_path):
    from omegaconf import OmegaConf

    from grokloop import cli
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare, train

    def cfg(*over):
        d = OmegaConf.to_container(
            cli.compose(
                "train",
                [
                    "experiment=composition_cpu_loop2_memory_address",
                    "debug=tiny",
                    *TINY_DATA,
                    f"data_cache={tmp_path / 'cache'}",
                    "train.stop_at_grok=null",
                    *over,
                ],
            ),
            resolve=True,
        )
        d.pop("out_dir"), d.pop("resume")
        return run_config_from_dict(d)

    with pytest.raises(ValueError, match="has none \\(set model.memory=facts\\)"):
        prepare(cfg("model.memory=none"))
    # The same seed with and without the addressing loss: only the loss differs, so the runs do.
    runs = {
        w: train(cfg(f"train.memory_address_loss={w}", "train.steps=30"), tmp_path / f"w{w}")
        for w in (0.0, 1.0)
    }
    assert runs[0.0]["final"]["loss/train"] != runs[1.0]["final"]["loss/train"]


# --- edit propagation and slim banks --------------------------------------------------------------
# A hand-made complete graph over entities A..D (tokens 2..5) and relations r, s (12, 13).
A, B, C, D, R, S = 2, 3, 4, 5, 12, 13
HAND = {(A, R): B, (A, S): C, (B, R): C, (B, S): D, (C, R): D, (C, S): A, (D, R): A, (D, S): B}
HAND_BANK = FactBank(*map(torch.tensor, zip(*[(h, r, t) for (h, r), t in HAND.items()])))
HAND_QUERIES = torch.tensor([[h, r1, r2] for h in (A, B, C, D) for r1 in (R, S) for r2 in (R, S)])


def test_edit_plans_on_a_hand_made_graph_know_the_right_answers():
    import numpy as np

    from grokloop.bank import compose, fact_table, plan_edits

    table = fact_table(HAND_BANK, 23)
    assert compose(table, torch.tensor([[A, R, S], [D, S, R]])).tolist() == [D, C]
    # hop 1: (A r) -> C instead of B; A r r = C r = D, A r s = C s = A
    (e,) = plan_edits(
        table,
        torch.tensor([[A, R, R], [A, R, S]]),
        1,
        5,
        0,
        torch.tensor([B, C]),
        np.random.default_rng(0),
    )
    assert (e.head, e.relation, e.old, e.new) == (A, R, B, C)
    assert e.through.tolist() == [0, 1] and e.new_answers.tolist() == [D, A] and e.unchanged == 0
    # a self-loop: (A r) -> A makes A r r = (A r) r = A, read from the EDITED graph (not B)
    (e,) = plan_edits(
        table,
        torch.tensor([[A, R, R], [A, R, S]]),
        1,
        5,
        0,
        torch.tensor([A]),
        np.random.default_rng(0),
    )
    assert e.new == A and e.new_answers.tolist() == [A, C]
    # hop 2: the queries whose bridge is A and second relation r (C s r, D r r) now answer t'
    queries = HAND_QUERIES
    keys2 = [(HAND[h, r1], r2) for h, r1, r2 in queries.tolist()]
    pick = [i for i, k in enumerate(keys2) if k == (A, R)]
    edits = plan_edits(table, queries[pick], 2, 5, 0, torch.tensor([D]), np.random.default_rng(0))
    assert [(x.head, x.relation, x.new) for x in edits] == [(A, R, D)]
    assert sorted(map(tuple, queries[pick].tolist())) == [(C, S, R), (D, R, R)]
    assert edits[0].new_answers.tolist() == [D, D]
    # locality: unrelated queries are those with (A, r) on neither hop, drawn without repeats
    edits = plan_edits(table, queries, 1, 8, 100, torch.tensor([C, D]), np.random.default_rng(0))
    e = next(x for x in edits if (x.head, x.relation) == (A, R))
    assert len(e.through) == 2 and len(e.locality) == 16 - 4
    on_path = {(h, r1) for h, r1, _ in queries[e.locality].tolist()} | {
        (HAND[h, r1], r2) for h, r1, r2 in queries[e.locality].tolist()
    }
    assert (A, R) not in on_path and len(set(e.locality.tolist())) == 12
    assert len(edits) == 8  # every distinct first-hop fact of the pool, once
    with pytest.raises(ValueError, match="no entity other than"):
        plan_edits(table, queries, 1, 8, 0, torch.tensor([B]), np.random.default_rng(0))


class SymbolicReasoner(torch.nn.Module):
    """A stand-in for a perfect memory model: it answers atomic and two-hop queries by looking
    them up in the bank it reads, so a bank edit must carry through every answer."""

    def __init__(self, bank):
        super().__init__()
        self.dummy, self.n_steps = torch.nn.Parameter(torch.zeros(1)), 1
        self.__dict__["memory"] = self  # model.memory.attach / .bank, not a submodule
        self.attach(bank)

    def attach(self, bank):
        from grokloop.bank import fact_table

        self.bank, self.table = bank, fact_table(bank, 23)

    def readout_steps(self, tokens, n_steps=None, positions=None):
        ans = self.table[tokens[:, 0], tokens[:, 1]]
        two = positions == 2
        if two.any():
            ans[two] = self.table[ans[two], tokens[two, 2]]
        return torch.nn.functional.one_hot(ans, 23).float()[None]


def test_a_reasoner_that_reads_its_bank_propagates_every_edit_and_a_no_op_edit_none():
    import numpy as np

    from grokloop.bank import bank_editor, fact_table, measure_edits, plan_edits

    table = fact_table(HAND_BANK, 23)
    classes = torch.ones(23, 23, dtype=torch.int8)
    classes[C] = 2  # facts with head C are OOD
    ents = torch.tensor([A, B, C, D])
    for position in (1, 2):
        edits = plan_edits(table, HAND_QUERIES, position, 8, 6, ents, np.random.default_rng(1))
        m = SymbolicReasoner(HAND_BANK)
        got = measure_edits(m, edits, HAND_QUERIES, table, classes, *bank_editor(m, HAND_BANK))
        for metric in ("success", "propagation", "locality", "before"):
            k, n = got[metric, "atomic" if metric == "success" else "two_hop"]
            assert k == n > 0, (position, metric, k, n)
        assert got["success", "atomic_ood"][1] == sum(e.head == C for e in edits)
        assert {s for _, s in got} >= {"two_hop_II", "two_hop_OI", "two_hop_IO"}
        assert torch.equal(m.bank.ids(), HAND_BANK.ids())  # each edit undone
        none = measure_edits(m, edits, HAND_QUERIES, table, classes, lambda e: None, lambda: None)
        assert none["success", "atomic"][0] == none["propagation", "two_hop"][0] == 0
        assert none["locality", "two_hop"][0] == none["locality", "two_hop"][1]
        assert got["spill", "two_hop"][0] == none["spill", "two_hop"][0] == 0


def test_finetune_edits_train_the_edited_fact_and_are_undone():
    from grokloop.bank import Edit, finetune_editor

    m = memory_model(HAND_BANK, n_steps=2)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    apply, restore = finetune_editor(m, steps=30, lr=1e-2)
    e = Edit(
        1,
        A,
        R,
        B,
        D,
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        0,
        torch.zeros(0, dtype=torch.long),
    )
    apply(e)
    logits = m.readout_steps(torch.tensor([[A, R]]), 2, positions=torch.tensor([1]))[-1]
    assert int(logits.argmax()) == D and not m.training
    assert not torch.equal(m.W_E, start["W_E"])
    restore()
    assert all(torch.equal(v, start[k]) for k, v in m.state_dict().items())


@pytest.fixture(scope="module")
def tiny_memory_run(tmp_path_factory):
    """A tiny composition run with a fact memory (a few seconds), and its data cache."""
    from omegaconf import OmegaConf

    from grokloop import cli
    from grokloop.config import run_config_from_dict
    from grokloop.train import train

    tmp = tmp_path_factory.mktemp("edit")
    cache = f"data_cache={tmp / 'cache'}"
    d = OmegaConf.to_container(
        cli.compose(
            "train", ["experiment=composition_cpu_loop2_memory", "debug=tiny", *TINY_DATA, cache]
        ),
        resolve=True,
    )
    d.pop("out_dir"), d.pop("resume")
    train(run_config_from_dict(d), tmp / "run")
    return tmp, cache


def test_edit_eval_writes_rows_for_both_methods_and_refuses_bad_options(tiny_memory_run):
    tmp, cache = tiny_memory_run
    run = tmp / "run"
    for method, extra in (("bank", []), ("finetune", ["finetune_steps=2"])):
        bank_main(
            [
                "edit_eval",
                f"run_dir={run}",
                f"method={method}",
                "n_edits=3",
                "n_locality=4",
                *extra,
                cache,
                f"out={tmp / method}",
            ]
        )
        summary = json.loads((tmp / method / "summary.json").read_text())
        rows = summary["rows"]
        models = {r["model"] for r in rows}
        assert {
            f"composition_cpu_loop2_memory.{method}_edit.hop{p}.{m}"
            for p in (1, 2)
            for m in ("success", "propagation", "locality", "before", "spill")
        } == models
        assert all(r["lo"] - 1e-9 <= r["acc"] <= r["hi"] + 1e-9 and r["n"] > 0 for r in rows)
        assert [p["n_edits"] for p in summary["plans"]] == [3, 3]
        assert (tmp / method / "summary.md").read_text().startswith("# bank_edit/")
    bad = [
        (["method=foo"], "method='foo'"),
        (["positions=3"], "positions=[3]"),
        (["n_edits=0"], "n_edits=0"),
        (["finetune_lr=0.1"], "options of method=finetune"),
        (["splits=atomic_id"], "holds no two-hop queries"),
        (["needed_by=test_OI"], "is an option of `build`"),
        (["method=finetune", "finetune_steps=0"], "finetune_steps=0"),
    ]
    for args, needle in bad:
        with pytest.raises(SystemExit) as e:
            bank_main(["edit_eval", f"run_dir={run}", *args, cache, f"out={tmp / 'bad'}"])
        assert e.value.code == 2 and needle in str(e.value), (args, str(e.value))
    assert not (tmp / "bad").exists()
    # a run without a memory: method=bank is refused, naming method=finetune
    plain = tmp / "plain"
    plain.mkdir()
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["memory"] = "none"
    (plain / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as e:
        bank_main(["edit_eval", f"run_dir={plain}", cache])
    assert "method=finetune" in str(e.value)
    with pytest.raises(SystemExit) as e:
        bank_main(["eval", f"run_dir={run}", "n_edits=3", cache])
    assert "is an option of `edit_eval`, not of `eval`" in str(e.value)


def test_a_slim_bank_keeps_exactly_the_facts_its_queries_need(tiny_memory_run):
    import numpy as np

    from datagen import data_config_from_dict, load_or_build

    tmp, cache = tiny_memory_run
    run = tmp / "run"
    bank_main(
        [
            "build",
            f"run_dir={run}",
            "needed_by=[test_inferred_id,test_OI]",
            cache,
            f"out={tmp / 'slim'}",
        ]
    )
    cfg = json.loads((run / "config.json").read_text())
    ds = load_or_build(data_config_from_dict(cfg["data"]), cache.split("=", 1)[1])
    idx = np.concatenate([ds.splits["test_inferred_id"], ds.splits["test_OI"]])
    roles = ds.roles
    want = {(int(h), int(r)) for h, r in zip(roles["head"][idx], roles["relation_1"][idx])} | {
        (int(h), int(r)) for h, r in zip(roles["bridge_1"][idx], roles["relation_2"][idx])
    }
    full = FactBank.from_dataset(ds)
    slim, manifest = load_bank(tmp / "slim", ds.vocab)
    assert {(h, r) for h, r, _ in slim.ids().tolist()} == want and len(slim) == len(want)
    keep = [i for i, (h, r, _) in enumerate(full.ids().tolist()) if (h, r) in want]
    assert torch.equal(slim.ids(), full.ids()[keep])  # the whole bank's facts, in order
    assert manifest["source"]["needed_by"] == ["test_inferred_id", "test_OI"]
    assert manifest["source"]["n_facts_before"] == len(full) > len(slim)
    bank_main(
        [
            "eval",
            f"run_dir={run}",
            f"bank={tmp / 'slim'}",
            "splits=test_inferred_id",
            cache,
            f"out={tmp / 'slim_ev'}",
        ]
    )
    rows = json.loads((tmp / "slim_ev" / "summary.json").read_text())["rows"]
    assert {r["bank_facts"] for r in rows} == {len(slim)}
    assert {r["bank_bytes"] for r in rows} == {(tmp / "slim" / "bank.safetensors").stat().st_size}
    with pytest.raises(SystemExit) as e:
        bank_main(["build", f"run_dir={run}", "needed_by=test_XY", cache, f"out={tmp / 'x'}"])
    assert "needed_by names 'test_XY'" in str(e.value)
    few = tmp / "few.txt"
    few.write_text("\n".join(manifest["facts"][:3]))
    with pytest.raises(SystemExit) as e:
        bank_main(
            [
                "build",
                f"run_dir={run}",
                f"facts={few}",
                "needed_by=test_inferred_id",
                cache,
                f"out={tmp / 'x'}",
            ]
        )
    assert "the bank lacks" in str(e.value) and not (tmp / "x").exists()


def test_a_bank_with_knowledge_missing_keeps_a_seeded_random_share(tiny_memory_run):
    from datagen import data_config_from_dict, load_or_build

    tmp, cache = tiny_memory_run
    run = tmp / "run"
    cfg = json.loads((run / "config.json").read_text())
    ds = load_or_build(data_config_from_dict(cfg["data"]), cache.split("=", 1)[1])
    full = FactBank.from_dataset(ds).ids().tolist()
    for seed, name in ((0, "half0"), (0, "again0"), (1, "half1")):
        bank_main(
            [
                "build",
                f"run_dir={run}",
                "keep_fraction=0.5",
                f"keep_seed={seed}",
                cache,
                f"out={tmp / name}",
            ]
        )
    half0, manifest = load_bank(tmp / "half0", ds.vocab)
    half1, _ = load_bank(tmp / "half1", ds.vocab)
    assert torch.equal(load_bank(tmp / "again0", ds.vocab)[0].ids(), half0.ids())  # seeded
    kept = half0.ids().tolist()
    assert len(kept) == round(len(full) / 2)
    assert kept == [f for f in full if f in kept]  # a subset, in the whole bank's order
    assert kept != half1.ids().tolist()  # another seed, another share
    assert manifest["source"]["keep_fraction"] == 0.5 and manifest["source"]["keep_seed"] == 0
    for bad in ("keep_fraction=0", "keep_fraction=1.5"):
        with pytest.raises(SystemExit) as e:
            bank_main(["build", f"run_dir={run}", bad, cache, f"out={tmp / 'x'}"])
        assert "must be in (0, 1]" in str(e.value) and not (tmp / "x").exists()


def test_the_selector_reads_the_memory_margin_of_each_step_it_runs():
    from grokloop.adaptive.selector import HaltingConfig, Selector, retrieval_margin, rollout

    assert torch.equal(
        retrieval_margin(torch.tensor([[[3.0, 1.0, 0.5]], [[2.0, 2.0, 1.0]]])),
        torch.tensor([[2.0], [0.0]]),
    )
    assert torch.equal(retrieval_margin(torch.tensor([[[3.0]]])), torch.tensor([[3.0]]))
    m = memory_model()
    seen = []

    class Spy(Selector):  # records the memory features it is given
        def forward(self, feats):
            seen.append(feats[:, -self.n_memory :].clone())
            return super().forward(feats)

    sel = Spy(32, 1, n_memory=2 * 5)
    with torch.no_grad():  # continue while allowed: every step is read
        sel.net[-1].bias.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    pos, targets = torch.full((4,), 4), torch.zeros(4, dtype=torch.long)
    out = rollout(m, sel, TOKENS, pos, targets, HaltingConfig(max_steps=3), greedy=True)
    assert out["steps"].tolist() == [3] * 4 and len(seen) == 3
    # by hand: each step's top-k scores through the model's own hooks, in a whole forward pass
    _, cache = m.run_with_cache(TOKENS, n_steps=3, names_filter=lambda n: n.endswith("hook_scores"))
    margins = [retrieval_margin(cache[f"steps.{s}.memory.hook_scores"]) for s in range(3)]
    for s in range(3):
        least = torch.stack(margins[: s + 1]).min(0).values
        assert torch.allclose(seen[s], torch.cat([margins[s], least], dim=-1), atol=1e-5)
    # a shorter prefix (an atomic fact's tokens in a longer task) fills its own positions only
    seen.clear()
    rollout(
        m, sel, TOKENS[:, :3], torch.full((4,), 2), targets, HaltingConfig(max_steps=2), greedy=True
    )
    assert len(seen) == 2 and (seen[0][:, 3:5] == 0).all() and (seen[0][:, :3] != 0).any()
    # the trajectory of the exit rules and the signals probe reads the same margins, and
    # reading them changes nothing else
    from grokloop.adaptive.rules import trajectory

    plain = trajectory(m, TOKENS, pos, targets, 3)
    read = trajectory(m, TOKENS, pos, targets, 3, margins=True)
    assert torch.allclose(read.pop("margin"), torch.stack(margins), atol=1e-5)
    assert all(torch.equal(plain[k], read[k]) for k in plain)


def test_a_selector_reading_its_history_sees_every_step_run_so_far_and_nothing_after():
    from grokloop.adaptive.rules import trajectory
    from grokloop.adaptive.selector import HaltingConfig, Selector, history_width, rollout

    m = memory_model()
    T, n_pos = 3, 5
    seen = []

    class Spy(Selector):  # records the history features it is given
        def forward(self, feats):
            seen.append(feats[:, -self.n_history :].clone())
            return super().forward(feats)

    sel = Spy(32, 1, n_memory=2 * n_pos, read_state=False, n_history=history_width(T, n_pos))
    assert sel.net[0].in_features == 4 + 2 * n_pos + T * (3 + n_pos)
    with torch.no_grad():  # continue while allowed: every step is read
        sel.net[-1].bias.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    pos, targets = torch.full((4,), 4), torch.zeros(4, dtype=torch.long)
    rollout(
        m, sel, TOKENS, pos, targets, HaltingConfig(max_steps=T, read_history=True), greedy=True
    )
    traj = trajectory(m, TOKENS, pos, targets, T, margins=True)
    assert len(seen) == T
    for t in range(T):
        h = seen[t].view(4, T, 3 + n_pos)
        for s in range(t + 1):  # steps run: top, -entropy, margins, agrees with step t's answer
            assert torch.allclose(h[:, s, 0], traj["top"][s], atol=1e-5)
            assert torch.allclose(h[:, s, 1], -traj["entropy"][s], atol=1e-5)
            assert torch.allclose(h[:, s, 2 : 2 + n_pos], traj["margin"][s], atol=1e-5)
            assert torch.equal(h[:, s, -1], (traj["argmax"][s] == traj["argmax"][t]).float())
        assert (h[:, t + 1 :] == 0).all()  # steps not yet run: nothing
    with pytest.raises(ValueError, match="run it with the max_steps it was trained with"):
        rollout(m, sel, TOKENS, pos, targets, HaltingConfig(max_steps=T + 1), greedy=True)
