"""train.compile and train.precision (grokloop/accelerate.py): same training, faster kernels."""

import json
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from grokloop import accelerate, cli
from grokloop.config import ModelConfig, TrainConfig, run_config_from_dict
from grokloop.model import LoopedTransformer
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
    "train.checkpoint_every_max=8",
    "train.progress=false",
    "train.stop_at_grok=null",
    "train.report=false",
]
BF16 = accelerate.bf16_support("cpu")[0]


def run(tmp_path, name, overrides):
    d = OmegaConf.to_container(cli.compose("train", TINY + overrides), resolve=True)
    d.pop("out_dir"), d.pop("resume")
    train(run_config_from_dict(d), tmp_path / name)
    return [json.loads(r) for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_precision_is_validated_and_falls_back_with_the_reason(monkeypatch):
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp16")
    monkeypatch.setattr(accelerate, "cpu_flags", lambda: {"avx2"})
    ok, why = accelerate.bf16_support("cpu")
    assert not ok and "neither AMX-BF16 nor AVX512-BF16" in why
    with pytest.warns(UserWarning, match="falls back to fp32: the CPU has neither"):
        assert accelerate.resolve_precision("bf16", torch.device("cpu")) == "fp32"
    assert accelerate.resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_default_is_a_no_op():
    torch.manual_seed(0)
    model = LoopedTransformer(ModelConfig(d_vocab=13, n_ctx=4, d_model=16, n_heads=2).resolved())
    assert accelerate.accelerate_training(model, TrainConfig(), torch.device("cpu")) == {
        "compile": False,
        "precision": "fp32",
    }
    assert "readout_steps" not in vars(model)


@pytest.mark.skipif(not BF16, reason="no native bf16 on this CPU")
def test_bf16_training_runs_close_to_fp32_and_evaluates_in_fp32(tmp_path):
    fp32 = run(tmp_path, "fp32", [])
    bf16 = run(tmp_path, "bf16", ["train.precision=bf16"])
    for a, b in zip(fp32, bf16):
        assert b["loss/train"] == pytest.approx(a["loss/train"], rel=0.02)
        assert b["loss/test"] == pytest.approx(a["loss/test"], rel=0.02)
    assert fp32[-1]["loss/train"] != bf16[-1]["loss/train"]  # bf16 really ran


def test_bf16_kernels_run_in_training_only():
    torch.manual_seed(0)
    model = LoopedTransformer(ModelConfig(d_vocab=13, n_ctx=4, d_model=16, n_heads=2).resolved())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = accelerate.accelerate_training(
            model, TrainConfig(precision="bf16"), torch.device("cpu")
        )
    tokens, pos = torch.randint(13, (8, 4)), torch.full((8,), 3)
    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, torch.nn.Linear) else None
    )
    try:
        out = model.readout_steps(tokens, positions=pos, every_step=False, answer_only=True)
        assert out.dtype == torch.float32  # the loss sees fp32 logits
        with torch.no_grad():
            model.readout_steps(tokens, positions=pos)
    finally:
        hook.remove()
    half = len(seen) // 2
    want = torch.bfloat16 if got["precision"] == "bf16" else torch.float32
    assert set(seen[:half]) == {want} and set(seen[half:]) == {torch.float32}


@pytest.mark.slow  # ~30-60 s on 1 loaded thread: inductor compiles a forward and a backward
def test_compiled_training_agrees_with_eager(tmp_path):
    eager = run(tmp_path, "eager", [])
    compiled = run(tmp_path, "compiled", ["train.compile=true"])
    assert [r["step"] for r in eager] == [r["step"] for r in compiled]
    for a, b in zip(eager, compiled):
        for k in ("loss/train", "loss/test", "weight_norm"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6)


@pytest.mark.slow  # the README's first command under bf16: ~360 steps, a minute or more
def test_default_task_groks_under_bf16(tmp_path):
    if not BF16:
        pytest.skip("no native bf16 on this CPU")
    d = OmegaConf.to_container(
        cli.compose(
            "train",
            [
                "train.precision=bf16",
                "train.steps=1500",
                "train.progress=false",
                "train.report=false",
            ],
        ),
        resolve=True,
    )
    d.pop("out_dir"), d.pop("resume")
    summary = train(run_config_from_dict(d), tmp_path / "run")
    assert summary["grokked"]["test"], summary["final"]
