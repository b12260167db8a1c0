"""The looped transformer: per-step hooks, TransformerLens compatibility, steps at test time."""

import pytest
import torch
from transformer_lens import patching

TOKENS = torch.randint(0, 23, (6, 5), generator=torch.Generator().manual_seed(1))


def test_hook_names_are_distinct_per_step_and_steps_differ(make_model):
    m = make_model(n_prelude=1, n_core=2, n_coda=1, n_steps=3, injection="add")
    _, cache = m.run_with_cache(TOKENS)
    names = [k for k in cache.keys() if k.endswith("hook_resid_post") and k.startswith("blocks.")]
    assert len(names) == len(set(names)) == 1 + 2 * 3 + 1 == m.cfg.n_layers
    table = m.layer_table()
    assert [r.step for r in table if r.stage == "core"] == [1, 1, 2, 2, 3, 3]
    core_out = [
        cache[f"blocks.{r.index}.hook_resid_post"]
        for r in table
        if r.stage == "core" and r.layer == 1
    ]
    assert not torch.allclose(core_out[0], core_out[1]) and not torch.allclose(
        core_out[1], core_out[2]
    )
    assert all(f"steps.{s}.hook_state" in cache.keys() for s in range(3))


def test_parameter_count_does_not_depend_on_steps(make_model):
    counts = {
        sum(p.numel() for p in make_model(n_core=2, n_steps=k).parameters()) for k in (1, 2, 8)
    }
    assert len(counts) == 1


@pytest.mark.parametrize("injection", ["none", "add", "concat"])
def test_one_step_equals_the_plain_stack_for_every_injection(make_model, injection):
    m = make_model(n_prelude=1, n_core=2, n_coda=1, n_steps=1, injection=injection)
    x = m.W_E[TOKENS] + m.W_pos[:5]
    for block in [*m.prelude, *m.cores[0], *m.coda]:
        x = block(x)
    assert torch.allclose(m(TOKENS), m.unembed(x), atol=1e-6)
    # and a second step does inject: two steps differ from the stack run twice without e
    if injection != "none":
        y = m.W_E[TOKENS] + m.W_pos[:5]
        for block in [*m.prelude, *m.cores[0], *m.cores[0], *m.coda]:
            y = block(y)
        assert not torch.allclose(m(TOKENS, n_steps=2), m.unembed(y), atol=1e-4)


HOOKED = dict(n_prelude=1, core_sizes=[1, 2], n_coda=1, n_steps=3, injection="add")


def test_every_hook_point_fires_at_most_once_per_forward(make_model):
    for kw in (HOOKED, dict(n_core=1, n_steps=4, injection="concat", moe_experts=4)):
        m = make_model(**kw)
        fired = {}
        for name, hp in m.hook_dict.items():
            hp.add_hook(lambda act, hook: fired.__setitem__(hook.name, fired.get(hook.name, 0) + 1))
        m(TOKENS, schedule=[0, 1, 1] if "core_sizes" in kw else None)
        m.readout_steps(TOKENS, positions=torch.zeros(6, dtype=torch.long), every_step=True)
        m.reset_hooks()
        assert fired and max(fired.values()) == 2 and set(fired.values()) == {2}  # two calls
        assert "blocks.0.ln1.hook_scale" in fired and "steps.1.hook_injected" in fired


def test_logit_lens_equals_accumulated_resid_at_every_layer(make_model):
    m = make_model(**HOOKED)
    _, cache = m.run_with_cache(TOKENS)
    S, _ = m.residual_states(TOKENS)
    acc = cache.accumulated_resid()  # [V + 1, batch, pos, d_model]
    assert acc.shape == S.shape and torch.allclose(acc, S, atol=1e-6)
    lens = cache.accumulated_resid(apply_ln=True)
    assert torch.allclose(lens @ m.W_U + m.b_U, m.unembed(S), atol=1e-5)
    # resid_pre of a step's first layer is the state before injection; the core reads
    # steps.{s}.hook_injected = state + e
    first_of_step2 = next(r.index for r in m.layer_table() if r.step == 2)
    assert torch.allclose(
        cache["steps.1.hook_state"], cache[f"blocks.{first_of_step2}.hook_resid_pre"]
    )
    e = cache["blocks.0.hook_resid_post"]
    assert torch.allclose(
        cache["steps.1.hook_injected"], cache["steps.1.hook_state"] + e, atol=1e-6
    )


def test_transformer_lens_cache_methods_work_on_a_looped_model(make_model):
    m = make_model(n_core=1, n_steps=3)  # no injection: the stream is a plain sum
    logits, cache = m.run_with_cache(TOKENS)
    V = m.cfg.n_layers
    for layer in range(1, V + 1):
        acc = cache.accumulated_resid(layer=layer, apply_ln=True)
        assert acc.shape == (layer + 1, 6, 5, 32)
    parts = cache.decompose_resid()  # embed, pos, attn and mlp out per layer
    assert parts.shape[0] == 2 + 2 * V
    assert torch.allclose(parts.sum(0), cache[f"blocks.{V - 1}.hook_resid_post"], atol=1e-5)
    heads = cache.stack_head_results(layer=V)  # [V * heads, batch, pos, d_model]
    attn = torch.stack([cache[f"blocks.{v}.hook_attn_out"] for v in range(V)])
    b_O = torch.stack([m.blocks[v].attn.b_O for v in range(V)])
    assert heads.shape[0] == V * 4
    assert torch.allclose(heads.view(V, 4, 6, 5, 32).sum(1) + b_O[:, None, None], attn, atol=1e-5)
    # per-head weight views reproduce the cached queries and the output projection
    q = (
        torch.einsum(
            "bpd,hde->bphe",
            cache["blocks.2.ln1.hook_normalized"] * m.cores[0][0].ln1.w + m.cores[0][0].ln1.b,
            m.blocks[2].attn.W_Q,
        )
        + m.blocks[2].attn.b_Q
    )
    assert torch.allclose(q, cache["blocks.2.attn.hook_q"], atol=1e-5)
    assert m.blocks[0].attn.W_O.data_ptr() == m.blocks[2].attn.W_O.data_ptr()  # shared weights


def test_return_types(make_model):
    m = make_model(n_core=1, n_steps=2)
    logits, loss = m(TOKENS, return_type="both")
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 23), TOKENS[:, 1:].reshape(-1)
    )
    assert torch.allclose(loss, ref) and torch.allclose(m(TOKENS, return_type="loss"), ref)
    assert m(TOKENS, return_type=None) is None
    with pytest.raises(ValueError, match="return_type"):
        m(TOKENS, return_type="probs")


def test_step_primitive_matches_the_unrolled_forward(make_model):
    for kw in (
        dict(n_prelude=1, n_core=2, n_coda=1, n_steps=3, injection="concat"),
        dict(n_core=1, n_steps=3, injection="add", init_state="zeros"),
    ):
        m = make_model(**kw)
        pos = torch.tensor([4, 3, 2, 4, 1, 0])
        e, state = m.enter_loop(TOKENS)
        for s in range(3):
            state = m.step(state, e, s)
            assert torch.allclose(
                m.read(state, pos), m(TOKENS, n_steps=s + 1)[torch.arange(6), pos], atol=1e-5
            )


def test_steps_change_at_test_time_beyond_training_without_rebuilding(make_model):
    m = make_model(n_core=1, n_steps=2, injection="add")
    n_params = sum(p.numel() for p in m.parameters())
    out8 = m(TOKENS, n_steps=8)
    assert out8.shape == (6, 5, 23) and not torch.allclose(out8, m(TOKENS))
    m.set_n_steps(12)
    _, cache = m.run_with_cache(TOKENS)
    assert m.cfg.n_layers == 12 and "blocks.11.hook_resid_pre" in cache.keys()
    assert sum(p.numel() for p in m.parameters()) == n_params


def test_logit_lens_at_last_layer_equals_logits(make_model):
    for kw in (dict(n_core=2, n_steps=3), dict(n_core=1, n_steps=2, normalization="none")):
        m = make_model(**kw)
        logits, cache = m.run_with_cache(TOKENS)
        lens = cache.accumulated_resid(apply_ln=True)  # [layers + 1, batch, pos, d_model]
        assert lens.shape[0] == m.cfg.n_layers + 1
        assert torch.allclose(lens[-1] @ m.W_U + m.b_U, logits, atol=1e-5)


def test_patching_clean_into_clean_changes_nothing(make_model):
    m = make_model(n_core=1, n_steps=3, injection="add")
    _, cache = m.run_with_cache(TOKENS)
    metric = lambda logits: logits[:, -1, 0].mean()
    effect = patching.get_act_patch_resid_pre(m, TOKENS, cache, metric) - metric(m(TOKENS))
    assert effect.shape == (3, 5) and effect.abs().max() < 1e-5
    heads = patching.get_act_patch_attn_head_out_by_pos(m, TOKENS, cache, metric) - metric(
        m(TOKENS)
    )
    assert heads.shape == (3, 5, 4) and heads.abs().max() < 1e-5


def test_run_with_hooks_ablation_changes_output(make_model):
    m = make_model(n_core=1, n_steps=2)
    zero = lambda act, hook: torch.zeros_like(act)
    out = m.run_with_hooks(TOKENS, fwd_hooks=[("blocks.1.hook_mlp_out", zero)])
    assert not torch.allclose(out, m(TOKENS))


def test_readout_last_step_equals_forward_and_answer_only_path(make_model):
    m = make_model(n_prelude=1, n_core=1, n_coda=1, n_steps=3, injection="concat")
    pos = torch.tensor([4, 3, 2, 4, 1, 0])
    steps = m.readout_steps(TOKENS, positions=pos)  # [3, batch, vocab]
    assert steps.shape == (3, 6, 23)
    assert torch.allclose(steps[-1], m(TOKENS)[torch.arange(6), pos], atol=1e-5)
    fast = m.readout_steps(TOKENS, positions=pos, every_step=False, answer_only=True)[-1]
    assert torch.allclose(fast, steps[-1], atol=1e-5)
    for t in range(3):
        assert torch.allclose(steps[t], m(TOKENS, n_steps=t + 1)[torch.arange(6), pos], atol=1e-5)


@pytest.mark.parametrize(
    "positional,kw",
    [
        ("learned", {}),
        ("rotary", {}),
        ("none", dict(alibi=True)),
        ("rotary", dict(attention_window=2)),
    ],
)
def test_tokens_after_the_answer_do_not_change_it(make_model, positional, kw):
    # Training and evaluation cut k-hop batches to the answer prefix; this is why that is exact.
    m = make_model(n_prelude=1, n_core=1, n_coda=1, n_steps=3, positional=positional, **kw)
    pos = torch.tensor([2, 1, 2, 0, 1, 2])
    full = m.readout_steps(TOKENS, positions=pos)
    cut = m.readout_steps(TOKENS[:, :3], positions=pos)
    assert torch.allclose(full, cut, atol=1e-5)
    changed = TOKENS.clone()
    changed[:, 3:] = 0
    assert torch.allclose(m.readout_steps(changed, positions=pos), full, atol=1e-5)


@pytest.mark.parametrize(
    "kw", [dict(alibi=True), dict(attention_window=2), dict(alibi=True, attention_window=3)]
)
def test_alibi_window_bias_and_every_attention_path_agree(make_model, kw):
    from grokloop.model import attention_bias

    bias = attention_bias(4, 4, alibi=True, window=0)
    assert bias[0, 2, 0] == -2 * 2**-2 and bias[3, 1, 0] == -(2**-8) and bias[1, 2, 2] == 0
    assert torch.isinf(bias[:, 0, 1:]).all()
    window = attention_bias(4, 4, alibi=False, window=2)
    assert torch.isinf(window[:, 3, :2]).all() and (window[:, 3, 2:] == 0).all()
    m = make_model(n_prelude=1, n_core=1, n_coda=1, n_steps=2, positional="rotary", **kw)
    plain = make_model(n_prelude=1, n_core=1, n_coda=1, n_steps=2, positional="rotary")
    plain.load_state_dict(m.state_dict())
    assert not torch.allclose(m(TOKENS), plain(TOKENS), atol=1e-4)  # the bias is applied
    if "alibi" not in kw:  # a window as long as the input changes nothing
        wide = make_model(
            n_prelude=1,
            n_core=1,
            n_coda=1,
            n_steps=2,
            positional="rotary",
            attention_window=TOKENS.shape[1],
        )
        wide.load_state_dict(m.state_dict())
        assert torch.allclose(wide(TOKENS), plain(TOKENS), atol=1e-5)
    logits, _ = m.run_with_cache(TOKENS)  # hooked path == fused path
    assert torch.allclose(logits, m(TOKENS), atol=1e-5)
    pos = torch.tensor([4, 3, 2, 4, 1, 0])  # one-query path
    fast = m.readout_steps(TOKENS, positions=pos, every_step=False, answer_only=True)[-1]
    assert torch.allclose(fast, m(TOKENS)[torch.arange(6), pos], atol=1e-5)
    x = torch.randn(6, 5, m.cfg.d_model)  # causal tracing's path
    block = m.cores[0][0]
    assert torch.allclose(block(x, from_pos=2), block(x)[:, 2:], atol=1e-5)


def test_truncated_backprop_stops_gradient_to_early_steps(make_model):
    m = make_model(n_core=1, n_steps=4, init_state="prelude", injection="add")
    grads = {}

    def spy(step):
        def hook(act, hook):
            if act.requires_grad:  # returns None: act unchanged
                act.register_hook(lambda g: grads.setdefault(step, g))

        return hook

    # hook_injected of step 1 is state + e: its only path to the loss is through the state,
    # which is cut before step 3 (e itself still gets gradient through step 3's injection)
    m.steps[1].hook_injected.add_hook(spy(1))
    m.steps[3].hook_injected.add_hook(spy(3))
    m.readout_steps(TOKENS, 4, grad_last_k=1, every_step=False)[-1].sum().backward()
    m.reset_hooks()
    assert 3 in grads and 1 not in grads


def test_bank_schedule_runs_the_cores_it_names(make_model):
    m = make_model(core_sizes=[1, 2], n_steps=3)
    calls = []
    for c, core in enumerate(m.cores):
        for block in core:
            block.register_forward_hook(lambda mod, i, o, c=c: calls.append(c))
    m(TOKENS, schedule=[1, 0, 1])
    assert calls == [1, 1, 0, 1, 1]
    m.set_schedule([1, 0])
    assert [r.core for r in m.layer_table()] == [1, 1, 0] and m.cfg.n_layers == 3
    with pytest.raises(ValueError, match="bank has 2 cores"):
        m(TOKENS, schedule=[2])


@pytest.mark.parametrize(
    "kw",
    [
        dict(injection="concat", init_state="random"),
        dict(injection="add", init_state="zeros"),
        dict(positional="rotary", tied_embeddings=True, dropout=0.1),
        dict(act_fn="gelu", normalization="none"),
    ],
)
def test_options_run(make_model, kw):
    m = make_model(n_core=1, n_steps=2, **kw).train()
    out = m(TOKENS)
    out.sum().backward()
    assert out.shape == (6, 5, 23) and torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["argmax", "soft"])
def test_feedback_adds_the_embedding_of_the_decoded_token_from_step_two(make_model, mode):
    m = make_model(n_core=1, n_steps=3, injection="add", feedback=mode)
    plain = make_model(n_core=1, n_steps=3, injection="add")
    plain.load_state_dict(m.state_dict())
    assert torch.allclose(m(TOKENS, n_steps=1), plain(TOKENS, n_steps=1))  # step 1: nothing to feed
    assert not torch.allclose(m(TOKENS, n_steps=2), plain(TOKENS, n_steps=2), atol=1e-5)
    _, cache = m.run_with_cache(TOKENS, n_steps=2)
    state = cache["steps.1.hook_state"]
    lens = m.unembed(state)
    fed = m.W_E[lens.argmax(-1)] if mode == "argmax" else lens.softmax(-1) @ m.W_E
    e = cache["steps.0.hook_state"]  # init_state=prelude: e is step 0's state
    assert torch.allclose(cache["steps.1.hook_injected"], state + fed + e, atol=1e-5)


def test_feedback_replace_makes_the_state_the_decoded_tokens_input_embedding(make_model):
    m = make_model(
        n_core=1, n_steps=3, injection="none", feedback="replace", feedback_positions=[1]
    )
    _, cache = m.run_with_cache(TOKENS, n_steps=2)
    state, fed = cache["steps.1.hook_state"], cache["steps.1.hook_injected"]
    token = m.unembed(state[:, 1]).argmax(-1)
    assert torch.allclose(fed[:, 1], m.W_E[token] + m.W_pos[1], atol=1e-6)  # as if input there
    keep = [0, 2, 3, 4]
    assert torch.equal(fed[:, keep], state[:, keep])  # every other position untouched
    # argmax at the same positions adds instead, elsewhere nothing
    m.config.feedback = "argmax"
    _, cache = m.run_with_cache(TOKENS, n_steps=2)
    assert torch.allclose(
        cache["steps.1.hook_injected"][:, 1], state[:, 1] + m.W_E[token], atol=1e-5
    )
    assert torch.equal(cache["steps.1.hook_injected"][:, keep], state[:, keep])


def test_feedback_replace_keeps_the_last_position_of_queries_that_end_there(make_model):
    m = make_model(
        n_core=1, n_steps=2, feedback="replace", feedback_positions=[1], feedback_keep_last=True
    )
    tokens = TOKENS.clone()
    tokens[:3, 2:] = 0  # rows 0-2 end at position 1 (then padding, pad_id 0): an atomic query
    tokens[3:, 2] = 5
    _, cache = m.run_with_cache(tokens)
    state, fed = cache["steps.1.hook_state"], cache["steps.1.hook_injected"]
    assert torch.equal(fed[:3], state[:3])  # ended at 1: nothing replaced
    token = m.unembed(state[3:, 1]).argmax(-1)
    assert torch.allclose(fed[3:, 1], m.W_E[token] + m.W_pos[1], atol=1e-6)


def test_feedback_positions_past_a_short_input_are_skipped(make_model):
    """A batch cut after its deepest answer (k-hop chains) is shorter than n_ctx: the feedback
    acts at the positions it has, as a model naming only those would."""
    every = make_model(n_core=1, n_steps=3, feedback="replace", feedback_positions=[1, 2, 3, 4])
    first = make_model(n_core=1, n_steps=3, feedback="replace", feedback_positions=[1, 2])
    short = TOKENS[:, :3]
    assert torch.equal(every(short), first(short))
    assert not torch.equal(every(TOKENS), first(TOKENS))  # the full input reaches 3 and 4


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(feedback="argmax", feedback_keep_last=True), "applies to model.feedback=replace"),
        (dict(feedback="replace"), "feedback=replace needs model.feedback_positions"),
        (dict(feedback="argmax", feedback_positions=[7]), "must lie in"),
        (dict(feedback_positions=[1]), "model.feedback=none"),
        (dict(layer_scale=-1.0), "layer_scale=-1.0 must be >= 0"),
    ],
)
def test_feedback_and_layer_scale_options_are_checked(make_model, kw, message):
    with pytest.raises(ValueError, match=message):
        make_model(n_core=1, n_steps=2, **kw)


def test_layer_scale_starts_every_block_near_the_identity_and_learns(make_model):
    m = make_model(n_core=2, n_steps=2, layer_scale=1e-4).train()
    block = m.cores[0][0]
    assert torch.equal(block.ls_attn, torch.full((32,), 1e-4)) and block.ls_mlp is not None
    _, cache = m.run_with_cache(TOKENS)
    for v in range(4):  # each block writes ~1e-4 of what it would: the stream barely moves
        moved = cache[f"blocks.{v}.hook_resid_post"] - cache[f"blocks.{v}.hook_resid_pre"]
        assert moved.abs().max() < 1e-3 * cache[f"blocks.{v}.hook_resid_pre"].abs().max()
    m(TOKENS).sum().backward()
    assert block.ls_attn.grad.abs().sum() > 0  # learned gains
    # the fast training path (one query) computes what the hooked path does
    plain = make_model(n_core=2, n_steps=2, layer_scale=0.5)
    pos = torch.full((6,), 4)
    full = plain(TOKENS)[:, 4]
    fast = plain.readout_steps(TOKENS, positions=pos, every_step=False, answer_only=True)[-1]
    assert torch.allclose(full, fast, atol=1e-5)


def test_authors_head_options_tanh_gelu_and_no_output_bias(make_model):
    m = make_model(n_core=1, act_fn="gelu_tanh", unembed_bias=False, tied_embeddings=True)
    assert "b_U" not in dict(m.named_parameters()) and (m.b_U == 0).all()
    assert m.cores[0][0].mlp.act.approximate == "tanh"
    m(TOKENS).sum().backward()


def test_from_run_loads_a_trained_run_at_any_checkpoint(tmp_path):
    from grokloop.checkpoint import list_checkpoints
    from grokloop.config import run_config_from_dict
    from grokloop.model import LoopedTransformer
    from grokloop.train import train
    from tests.test_train import TINY, compose_dict

    _, _, d = compose_dict(TINY + ["train.steps=20"])
    train(run_config_from_dict(d), tmp_path / "run")
    steps = list_checkpoints(tmp_path / "run")
    last, first = (
        LoopedTransformer.from_run(tmp_path / "run"),
        LoopedTransformer.from_run(tmp_path / "run", step=steps[0], device="cpu"),
    )
    assert not last.training and last.cfg.n_layers == 1  # the default task: Nanda's 1 layer
    tokens = torch.tensor([[0, 1, 2, 3]])
    assert not torch.allclose(last(tokens), first(tokens))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        LoopedTransformer.from_run(tmp_path)


@pytest.mark.parametrize(
    "extra", [{}, {"alibi": True}, {"attention_window": 2}, {"positional": "rotary"}]
)
def test_explicit_attention_computes_what_the_fused_kernel_does(monkeypatch, extra):
    # The CPU in bf16 takes the explicit path (fused_attention_pays): every way the model calls
    # attention (all positions, one query per example, queries from a position on) must give
    # the fused kernel's result, forward and backward, whatever the mask.
    import grokloop.model as model_module
    from grokloop.model import Attention, ModelConfig, fused_attention_pays

    assert fused_attention_pays(torch.device("cpu"), torch.float32)
    assert not fused_attention_pays(torch.device("cpu"), torch.bfloat16)
    assert fused_attention_pays(torch.device("cuda"), torch.bfloat16)
    torch.manual_seed(0)
    attn = Attention(
        ModelConfig(d_vocab=23, n_ctx=5, d_model=32, n_heads=4, d_mlp=64, **extra).resolved()
    ).train()
    x = torch.randn(6, 5, 32, requires_grad=True)
    query_pos = torch.tensor([4, 2, 3, 4, 1, 4])
    outs = {}
    for fused in (True, False):
        monkeypatch.setattr(model_module, "fused_attention_pays", lambda *a, f=fused: f)
        got = [attn(x, None), attn(x, None, query_pos=query_pos), attn(x, None, from_pos=2)]
        x.grad = None
        sum(g.square().mean() for g in got).backward()
        outs[fused] = [g.detach() for g in got] + [x.grad.clone()]
    for a, b in zip(outs[True], outs[False]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
