"""The speed work of issue 38: the mode rule (train.precision=auto / train.compile=auto, tested
on faked machines), every mode training to the same results within tolerance, and the faster
code paths computing what the slower ones did (bench/README.md, "Studies")."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from grokloop import accelerate, cli
from grokloop.config import ModelConfig, TrainConfig, run_config_from_dict
from grokloop.evaluate import evaluate
from grokloop.losses import cross_entropy
from grokloop.model import LoopedTransformer, rotary
from grokloop.optim import grokfast_ema, perpendicular_grad
from grokloop.train import train

TINY = [
    "data.p=11",
    "data.train_fraction=0.5",
    "model.d_model=16",
    "model.n_heads=2",
    "model.d_mlp=32",
    "train.steps=8",
    "train.eval_every_min=4",
    "train.eval_every_max=4",
    "train.checkpoint_every_max=4",
    "train.progress=false",
    "train.stop_at_grok=null",
    "train.report=false",
]
AMX = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # a Sapphire Rapids' flags
# Tolerances of a tiny run's metrics against fp32 eager, per mode: bf16 keeps 8 bits of
# mantissa in the matmuls (losses within 2%); compiled is fp32 with other kernels (1e-4)
TOLERANCE = {"bf16": 0.02, "compiled": 1e-4}


def run(tmp_path, name, overrides, resume=False):
    d = OmegaConf.to_container(cli.compose("train", TINY + overrides), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    train(run_config_from_dict(d), tmp_path / name, resume=resume)
    rows = [json.loads(r) for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((tmp_path / name / "config.json").read_text())


def fake_machine(monkeypatch, flags: set[str]):
    monkeypatch.setattr(accelerate, "cpu_flags", lambda: flags)


@pytest.mark.parametrize(
    "flags,precision",
    [
        (AMX, "bf16"),
        ({"avx512f", "avx512_bf16"}, "fp32"),
        ({"avx2", "fma"}, "fp32"),
        (set(), "fp32"),
    ],
)
def test_the_rule_picks_bf16_only_with_amx_and_never_compiles_on_a_cpu(flags, precision):
    mode = accelerate.choose_mode("cpu", flags)
    assert (mode.precision, mode.compile) == (precision, False) and mode.why


def test_auto_is_opt_in_and_validated():
    assert (TrainConfig().precision, TrainConfig().compile) == ("fp32", False)
    TrainConfig(precision="auto", compile="auto")
    with pytest.raises(ValueError, match="train.compile"):
        TrainConfig(compile="sometimes")
    assert accelerate.resolve_mode("fp32", False, "cpu") == ("fp32", False, None)


def test_auto_is_resolved_recorded_and_said_first(tmp_path, monkeypatch, capsys):
    fake_machine(monkeypatch, AMX)
    _, config = run(tmp_path, "amx", ["train.precision=auto", "train.compile=auto"])
    assert config["train"]["precision"] == "bf16" and config["train"]["compile"] is False
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("run directory:") and "bf16 autocast, eager" in first
    assert "train.precision=auto" in first and "AMX-BF16" in first
    fake_machine(monkeypatch, {"avx2"})
    _, config = run(tmp_path, "avx2", ["train.precision=auto"])
    assert config["train"]["precision"] == "fp32" and "fp32, eager" in capsys.readouterr().out
    run(tmp_path, "default", [])  # the default (fp32, eager, not auto): the line as it was
    assert capsys.readouterr().out.splitlines()[0].endswith(str((tmp_path / "default").resolve()))


def test_a_resumed_run_keeps_the_mode_it_started_with(tmp_path, monkeypatch):
    """An fp32 run resumed with precision=auto on a machine whose rule says bf16 goes on in fp32
    (its numerics do not change), and records no change."""
    run(tmp_path, "r", [])
    fake_machine(monkeypatch, AMX)
    rows, config = run(tmp_path, "r", ["train.precision=auto", "train.steps=12"], resume=True)
    assert config["train"]["precision"] == "fp32" and rows[-1]["step"] == 12
    log = (tmp_path / "r" / "resume_log.jsonl").read_text()
    assert "precision" not in log


def test_bf16_trains_to_the_fp32_results_within_tolerance(tmp_path, monkeypatch):
    fake_machine(monkeypatch, AMX)  # bf16 autocast runs on any CPU (emulated without AMX)
    fp32, _ = run(tmp_path, "fp32", [])
    bf16, config = run(tmp_path, "bf16", ["train.precision=bf16"])
    assert config["train"]["precision"] == "bf16"
    assert [r["step"] for r in fp32] == [r["step"] for r in bf16]
    for a, b in zip(fp32, bf16):
        for k in ("loss/train", "loss/test", "weight_norm"):
            assert b[k] == pytest.approx(a[k], rel=TOLERANCE["bf16"]), k
    assert fp32[-1]["loss/train"] != bf16[-1]["loss/train"]  # bf16 really ran


def test_evaluation_in_the_training_precision_changes_only_the_evaluations(tmp_path, monkeypatch):
    """train.eval_precision=train evaluates a bf16 run under bf16 autocast: the same training
    (bit for bit), evaluation losses within bf16's tolerance of fp32's and not identical; an
    fp32 run's evaluations do not change; a resume may switch it, and logs that it did."""
    fake_machine(monkeypatch, AMX)
    bf16 = ["train.precision=bf16"]
    fp32_eval, _ = run(tmp_path, "fp32_eval", bf16)
    bf16_eval, config = run(tmp_path, "bf16_eval", bf16 + ["train.eval_precision=train"])
    assert config["train"]["eval_precision"] == "train"
    for a, b in zip(fp32_eval, bf16_eval, strict=True):
        assert (a["loss/train"], a["weight_norm"]) == (b["loss/train"], b["weight_norm"])
        assert b["loss/test"] == pytest.approx(a["loss/test"], rel=TOLERANCE["bf16"])
    assert any(a["loss/test"] != b["loss/test"] for a, b in zip(fp32_eval, bf16_eval))
    plain, _ = run(tmp_path, "plain", [])
    same, _ = run(tmp_path, "same", ["train.eval_precision=train"])
    assert plain == [r | {"wall_time_s": p["wall_time_s"]} for p, r in zip(plain, same)]
    run(tmp_path, "fp32_eval", bf16 + ["train.eval_precision=train", "train.steps=12"], True)
    log = (tmp_path / "fp32_eval" / "resume_log.jsonl").read_text()
    assert '"train.eval_precision": {"old": "fp32", "new": "train"}' in log
    with pytest.raises(ValueError, match="train.eval_precision"):
        TrainConfig(eval_precision="bf16")


@pytest.mark.slow  # ~30-60 s on 1 loaded thread: inductor compiles a forward and a backward
def test_compiled_trains_to_the_fp32_results_within_tolerance(tmp_path):
    eager, _ = run(tmp_path, "eager", [])
    compiled, _ = run(tmp_path, "compiled", ["train.compile=true"])
    for a, b in zip(eager, compiled):
        for k in ("loss/train", "loss/test", "weight_norm"):
            assert b[k] == pytest.approx(a[k], rel=TOLERANCE["compiled"], abs=1e-6), k


def padded_evaluate(model, data, splits, n_steps):
    """The evaluation before issue 38: each split in one pass, cut after its last answer."""
    out = {}
    with torch.no_grad():
        for name, idx in splits.items():
            tokens = data["inputs"][idx, : int(data["answer_pos"][idx].max()) + 1]
            logits = model.readout_steps(tokens, n_steps, positions=data["answer_pos"][idx])
            target = data["answers"][idx]
            out[f"acc/{name}"] = (logits[-1].argmax(-1) == target).float().mean().item()
            out[f"loss/{name}"] = cross_entropy(logits[-1], target, reduction="none").mean().item()
    return out


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
def test_evaluation_by_answer_position_is_the_padded_evaluation(positional):
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=30,
        n_ctx=8,
        d_model=32,
        n_heads=4,
        n_core=1,
        n_steps=3,
        injection="add",
        positional=positional,
        attention_window=3,
    ).resolved()
    model = LoopedTransformer(cfg)
    n = 300
    data = {
        "inputs": torch.randint(30, (n, 8)),
        "answer_pos": torch.randint(1, 8, (n,)),
        "answers": torch.randint(30, (n,)),
        "hops": torch.randint(1, 4, (n,)),
    }
    splits = {"a": torch.arange(0, 200), "b": torch.arange(200, n)}
    cache = {}
    got = evaluate(model, data, splits, 3, batch_size=64, cache=cache)
    assert evaluate(model, data, splits, 3, batch_size=64, cache=cache) == got  # cached batches
    want = padded_evaluate(model, data, splits, 3)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    assert got["n/a"] == 200 and "acc/a/hops_1" in got and "acc_step/b/3" in got


def pairwise_rotary(x):
    half = x.shape[-1] // 2
    freq = 10000 ** (-torch.arange(half, dtype=torch.float32) / half)
    angle = torch.arange(x.shape[1], dtype=torch.float32)[:, None] * freq
    cos, sin = angle.cos()[None, :, None].to(x.dtype), angle.sin()[None, :, None].to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], dim=-1)


@pytest.mark.parametrize("d", [32, 33])
def test_rotary_is_the_pairwise_formula_bit_for_bit(d):
    torch.manual_seed(0)
    x = torch.randn(16, 7, 4, d, requires_grad=True)
    g = torch.randn_like(x)
    a, b = rotary(x), pairwise_rotary(x)
    assert torch.equal(a, b)
    assert torch.equal(*(torch.autograd.grad(y, x, g)[0] for y in (a, b)))
    pos = torch.randint(7, (16,))
    at = rotary(x[torch.arange(16), pos][:, None], pos, 7)
    assert torch.equal(at[:, 0], b[torch.arange(16), pos])


@pytest.mark.parametrize(
    "kw", [{}, {"positional": "rotary", "attention_window": 3}, {"alibi": True}]
)
def test_the_answer_only_path_is_the_full_forward(kw):
    """The training fast path (the last layer's query at the answer position only) gives the
    logits of the full forward read at those positions."""
    torch.manual_seed(0)
    model = LoopedTransformer(
        ModelConfig(d_vocab=20, n_ctx=7, d_model=32, n_heads=4, **kw).resolved()
    )
    tokens, pos = torch.randint(20, (32, 7)), torch.randint(7, (32,))
    fast = model.readout_steps(tokens, positions=pos, every_step=False, answer_only=True)[-1]
    full = model(tokens)[torch.arange(32), pos]
    assert torch.allclose(fast, full, atol=1e-5)


def loop_grokfast(params, ema, alpha, lamb):  # the per-tensor loop the foreach update replaced
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        if i not in ema:
            ema[i] = p.grad.detach().clone()
        else:
            ema[i].mul_(alpha).add_(p.grad, alpha=1 - alpha)
        p.grad.add_(ema[i], alpha=lamb)


def loop_perpendicular(params):  # the loop with a host sync the sync-free one replaced
    for p in params:
        if p.grad is None or p.dim() < 2:
            continue
        g, w = p.grad.flatten(), p.detach().flatten()
        w_norm2 = w.dot(w)
        if w_norm2 == 0:
            continue
        g_perp = g - (g.dot(w) / w_norm2) * w
        p.grad.copy_((g_perp * (g.norm() / g_perp.norm().clamp_min(1e-30))).view_as(p.grad))


def test_foreach_grokfast_and_sync_free_perpendicular_gradient_are_the_loops_bit_for_bit():
    torch.manual_seed(0)
    params = [
        torch.nn.Parameter(torch.randn(5, 4)),
        torch.nn.Parameter(torch.zeros(3, 3)),
        torch.nn.Parameter(torch.randn(7)),
        torch.nn.Parameter(torch.randn(2, 2)),
    ]
    emas, grads = ({}, {}), ([], [])
    for step in range(3):
        for k, (ema, out) in enumerate(zip(emas, grads)):
            torch.manual_seed(step)
            for p in params[:3]:  # the last parameter has no gradient
                p.grad = torch.randn_like(p)
            (grokfast_ema, loop_grokfast)[k](params, ema, 0.98, 2.0)
            (perpendicular_grad, loop_perpendicular)[k](params)  # a zero weight tensor too
            out.append([p.grad.clone() for p in params[:3]])
        assert all(torch.equal(a, b) for a, b in zip(grads[0][-1], grads[1][-1]))
        assert emas[0].keys() == emas[1].keys() == {0, 1, 2}
        assert all(torch.equal(emas[0][i], emas[1][i]) for i in emas[0])
