"""The fact memory (model.memory=facts) and knowledge banks: the read against a hand computation,
per-step hooks, bank files, swaps and edits that act only through the memory, refusals, config
errors, and memory=none computing what it computed before the memory existed."""
import json
import math

import pytest
import torch

from datagen.composition import composition_vocab
from grokloop.bank import attach_bank, load_bank, main as bank_main, save_bank, vocab_sha256
from grokloop.config import ModelConfig
from grokloop.memory import FactBank
from grokloop.model import LoopedTransformer

BASE = dict(d_vocab=23, n_ctx=5, d_model=32, n_heads=4, d_mlp=64)
MEM = dict(memory="facts", memory_top_k=3, memory_d_key=8)
VOCAB = composition_vocab(10, 11)   # 2 specials, entities 2..11, relations 12..22: 23 tokens
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
    m = model(d_model=4, n_heads=1, d_mlp=8, n_core=1, normalization="none", memory="facts",
              memory_top_k=2, memory_d_key=4)
    mem = m.memory
    with torch.no_grad():
        m.W_E.copy_(torch.randn(23, 4, generator=torch.Generator().manual_seed(5)))
        mem.W_Q.weight.copy_(torch.eye(4)); mem.W_Q.bias.zero_()
        mem.W_K_head.weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 1, 0, 0]]))
        mem.W_K_rel.weight.copy_(torch.tensor([[0., 0, 1, 0], [0, 0, 0, 1]]))
        mem.W_V.weight.copy_(2 * torch.eye(4))
    bank = FactBank([2, 3, 4, 5, 2], [12, 13, 14, 15, 16], [6, 7, 8, 9, 10])
    mem.attach(bank)
    x = torch.tensor([[0.5, -1.0, 2.0, 0.3], [1.0, 1.0, -1.0, 0.0]])
    E = torch.nn.functional.layer_norm(m.W_E.detach(), (4,))   # slots see normalised embeddings
    for row in range(2):   # by hand: key_i = [n(E[h_i])[:2], n(E[r_i])[2:]], score = q . key / sqrt(4)
        scores = [float(x[row] @ torch.cat([E[h][:2], E[r][2:]])) / math.sqrt(4)
                  for h, r in zip(bank.head.tolist(), bank.relation.tolist())]
        top = sorted(range(5), key=lambda i: -scores[i])[:2]
        w = torch.tensor([scores[i] for i in top]).softmax(0)
        expected = 2 * sum(w[j] * E[bank.tail[i]] for j, i in enumerate(top))
        assert torch.allclose(mem(x[row:row + 1])[0], expected, atol=1e-6)
        # a fact outside the top-k does not change the read; one inside does
        out_tail = bank.tail.clone()
        out_tail[next(i for i in range(5) if i not in top)] = 11
        mem.attach(FactBank(bank.head, bank.relation, out_tail))
        assert torch.equal(mem(x[row:row + 1])[0], mem(x[row:row + 1])[0])
        assert torch.allclose(mem(x[row:row + 1])[0], expected, atol=1e-6)
        in_tail = bank.tail.clone()
        in_tail[top[0]] = 11
        mem.attach(FactBank(bank.head, bank.relation, in_tail))
        assert not torch.allclose(mem(x[row:row + 1])[0], expected, atol=1e-3)
        mem.attach(bank)


def test_chunked_search_equals_one_chunk():
    m = memory_model(random_bank(50), memory_top_k=5)
    q = 50 * torch.randn(7, 3, 8, generator=torch.Generator().manual_seed(2))
    whole = m.memory.search(q)
    m.memory.chunk = 6
    chunked = m.memory.search(q)
    assert torch.allclose(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert whole[1].shape == (7, 3, 5) and (whole[0][..., :-1] >= whole[0][..., 1:]).all()


def test_more_slots_than_tokens_sums_the_weights_per_tail_token_first():
    m = memory_model(random_bank(60), memory_top_k=40)      # 40 slots > 23 tokens
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
    assert bank.slots_of(torch.tensor([2 + missing // 11]), torch.tensor([12 + missing % 11])).item() == -1
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
    shapes = {"hook_query": (4, 5, 8), "hook_scores": (4, 5, 3), "hook_slots": (4, 5, 3),
              "hook_weights": (4, 5, 3), "hook_read": (4, 5, 32)}
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
    assert {k: v for k, v in fired.items() if ".memory." in k} == \
        {f"steps.{s}.memory.{h}": 1 for s in range(3) for h in MEM_HOOKS}
    assert not any(".memory." in k for k in model(n_core=2, n_steps=3).hook_dict)


def test_every_path_reads_the_memory_alike():
    m = memory_model()
    pos = torch.tensor([1, 2, 3, 4])
    full = m(TOKENS)[torch.arange(4), pos]
    fast = m.readout_steps(TOKENS, positions=pos, every_step=False, answer_only=True)[-1]
    e, state = m.enter_loop(TOKENS)
    for s in range(3):
        state = m.step(state, e, s)
    assert torch.allclose(full, fast, atol=1e-5) and torch.allclose(full, m.read(state, pos), atol=1e-5)


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
    assert all(torch.equal(p, before[k]) for k, p in m.named_parameters())   # byte-identical
    # with the read patched to zero, the two banks give the same answers
    zero = [(f"steps.{s}.memory.hook_read", lambda act, hook: torch.zeros_like(act)) for s in range(3)]
    b0 = m.run_with_hooks(TOKENS, fwd_hooks=zero)
    m.memory.attach(random_bank(40, seed=0))
    assert torch.equal(m.run_with_hooks(TOKENS, fwd_hooks=zero), b0)
    assert torch.allclose(m(TOKENS), a)


def test_editing_one_fact_changes_the_read_exactly_where_that_fact_is_read():
    bank = random_bank(40)
    m = memory_model(bank, n_steps=1)
    _, cache = m.run_with_cache(TOKENS)
    slots, read = cache["steps.0.memory.hook_slots"], cache["steps.0.memory.hook_read"]
    i = int(slots[0, 0, 0])            # the top fact at some position
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
@pytest.mark.parametrize("kw, needle", [
    (dict(memory="fact"), "model.memory='fact' is not one of"),
    (dict(memory="facts", memory_top_k=0), "model.memory_top_k=0"),
    (dict(memory="facts", memory_d_key=7), "model.memory_d_key=7 must be even"),
    (dict(memory="facts", n_core=0, n_steps=1), "model.n_core / core_sizes=[0] has none"),
])
def test_config_errors_name_the_key_and_the_fix(kw, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        ModelConfig(**kw)


# --- memory=none is what it was ------------------------------------------------------------------
# Logits at the last position (first 4 tokens of 3 examples), their sum, and the number of hook
# points, computed by this test's configs at commit ea6f86d, before the memory existed.
BEFORE = [
    (dict(n_prelude=1, n_core=2, n_coda=1, n_steps=3, injection="add"), 154, -2.33671,
     [-0.029167, -0.007672, -0.052109, 0.143889, -0.182368, -0.005368, -0.139443, 0.114825,
      0.064343, 0.015171, -0.103431, 0.028988]),
    (dict(n_core=1, n_steps=4, injection="concat", feedback="argmax", core_sizes=[1, 2]), 84, 2.44765,
     [0.060577, 0.048173, 0.204876, -0.069057, -0.08897, -0.061389, 0.142233, -0.072072, 0.08975,
      -0.093373, 0.16149, 0.025601]),
    (dict(n_core=2, n_steps=2, moe_experts=4, init_state="zeros", injection="add"), 80, 1.58028,
     [0.14302, -0.065457, 0.018416, 0.055737, 0.094421, 0.020989, 0.012127, 0.026821, 0.049942,
      0.039108, 0.01467, -0.00809]),
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
        "memory.ln.w", "memory.ln.b", "memory.W_Q.weight", "memory.W_Q.bias",
        "memory.W_K_head.weight", "memory.W_K_rel.weight", "memory.W_V.weight"}


def test_a_memory_on_a_task_without_atomic_facts_is_refused_before_any_run_dir():
    from grokloop import cli
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cli.compose("train", ["data.p=11", "model.memory=facts"]), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    with pytest.raises(ValueError, match="no atomic facts"):
        prepare(run_config_from_dict(d))


# --- training, checkpoints and the command ------------------------------------------------------
TINY_DATA = ["data.n_entities=12", "data.n_relations=4", "data.out_degree=4", "data.phi=2.0",
             "data.ood_fraction=0.25", "data.eval_size=40"]


def test_trained_memory_model_carries_its_bank_and_evaluates_a_swapped_one(tmp_path):
    from grokloop import cli
    from grokloop.checkpoint import load_model
    from grokloop.config import run_config_from_dict
    from grokloop.train import train
    from omegaconf import OmegaConf

    cache = f"data_cache={tmp_path / 'cache'}"
    d = OmegaConf.to_container(cli.compose("train", ["experiment=composition_cpu_loop2_memory",
                                                     "debug=tiny", *TINY_DATA, cache]), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    run = tmp_path / "run"
    train(run_config_from_dict(d), run)
    loaded, ds, _ = load_model(run)
    assert torch.equal(loaded.memory.bank.ids(), FactBank.from_dataset(ds).ids())   # the checkpoint's
    bank_main(["build", "data=composition_cpu", *TINY_DATA, "data.seed=1", cache,
               f"out={tmp_path / 'g2'}"])
    bank_main(["eval", f"run_dir={run}", f"bank={tmp_path / 'g2'}", "data=composition_cpu",
               *TINY_DATA, "data.seed=1", cache, f"out={tmp_path / 'ev'}"])
    swapped = LoopedTransformer.from_run(run, bank=tmp_path / "g2")   # bank= at load time
    assert torch.equal(swapped.memory.bank.ids(), load_bank(tmp_path / "g2", ds.vocab)[0].ids())
    assert all(torch.equal(p, q) for p, q in zip(swapped.parameters(), loaded.parameters()))
    rows = json.loads((tmp_path / "ev" / "summary.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"composition_cpu_loop2_memory.swap"}
    assert {"test_inferred_id", "test_OI", "atomic_id"} <= {r["split"] for r in rows}
    assert any(r.get("metric") == "retrieval" for r in rows)
    # a bank over another vocabulary is refused before any work
    bank_main(["build", "data=composition_cpu", "data.n_entities=13", "data.n_relations=4",
               "data.out_degree=4", "data.phi=2.0", "data.eval_size=40", cache,
               f"out={tmp_path / 'other'}"])
    with pytest.raises(SystemExit) as e:
        bank_main(["eval", f"run_dir={run}", f"bank={tmp_path / 'other'}", cache,
                   f"out={tmp_path / 'ev2'}"])
    assert e.value.code == 2 and not (tmp_path / "ev2").exists()
    with pytest.raises(SystemExit):
        bank_main(["eval", f"out={tmp_path / 'ev3'}"])          # run_dir is required
    with pytest.raises(SystemExit):
        bank_main(["build", f"run_dir={run}", f"bank={tmp_path / 'g2'}", f"out={tmp_path / 'x'}"])


def test_training_with_the_address_loss_teaches_retrieval_and_needs_a_memory(tmp_path):
    from grokloop import cli
    from grokloop.config import run_config_from_dict
    from grokloop.train import prepare, train
    from omegaconf import OmegaConf

    def cfg(*over):
        d = OmegaConf.to_container(cli.compose("train", [
            "experiment=composition_cpu_loop2_memory_address", "debug=tiny", *TINY_DATA,
            f"data_cache={tmp_path / 'cache'}", "train.stop_at_grok=null", *over]), resolve=True)
        d.pop("out_dir"), d.pop("resume")
        return run_config_from_dict(d)

    with pytest.raises(ValueError, match="has none \\(set model.memory=facts\\)"):
        prepare(cfg("model.memory=none"))
    # The same seed with and without the addressing loss: only the loss differs, so the runs do.
    runs = {w: train(cfg(f"train.memory_address_loss={w}", "train.steps=30"), tmp_path / f"w{w}")
            for w in (0.0, 1.0)}
    assert runs[0.0]["final"]["loss/train"] != runs[1.0]["final"]["loss/train"]
