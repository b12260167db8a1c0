"""Training throughput: grokloop's training step against the usual alternatives, same shapes,
data and batch size, one process, interleaved repeats.

  grokloop      `grokloop.train.train` itself (data on the device, on-device shuffling, loss on
                the answer position only), timed as a marginal cost per step
  hf_gpt2       a Hugging Face transformers GPT-2 of the same depth and width (built from a
                config: nothing downloaded), a standard PyTorch loop over a DataLoader, loss on
                the answer token of the full logits (what the paper's code does)
  plain_loop    our model in that same DataLoader loop
  hf_gpt2_bf16  where grokloop runs in bf16 on the CPU: HF GPT-2's loop under bf16 autocast too,
                so a bf16 speed-up can be told from what bf16 gives any model

grokloop runs in every mode this machine has (one `speedup_vs_hf_gpt2_<mode>` key each):
eager, compiled (train.compile=true), bf16 (train.precision=bf16, where the processor has bf16
matrix units) and compiled_bf16.

Utilisation: the same run measures the machine's matmul peak (a large fp32 and bf16 matmul,
GFLOP/s), counts each loop's FLOPs per training step with torch.utils.flop_counter (forward and
backward matmuls and attention, as executed: our loss reads the answer position only, HF's
computes every position's logits), and reports FLOPs / step time / peak (the bf16 peak for bf16
modes). `--cpu_time` also records process CPU time per step (this machine is shared).

With --profile it also measures, with torch.profiler, the time each loop spends inside matrix
multiplies. No loop can beat another by more than (the other's step time) / (its own matmul time)
without doing fewer FLOPs, so this says how much speed-up the shapes leave to win.

    python bench/bench_train.py [--shapes small,paper] [--steps 20] [--repeats 3] [--profile]
                                [--modes eager,compiled,bf16,compiled_bf16]
    python bench/bench_train.py --smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, run_config, table, train_seconds_per_step, write  # noqa: E402

from datagen import load_or_build  # noqa: E402
from grokloop.accelerate import bf16_support  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402

MODES = {
    "eager": [],
    "compiled": ["train.compile=true"],
    "bf16": ["train.precision=bf16"],
    "compiled_bf16": ["train.compile=true", "train.precision=bf16"],
}

SHAPES = {
    # the small CPU composition experiment (4 layers x 128, batch 512)
    "small": ["experiment=composition_small"],
    # the paper shape: 8 layers x 768, batch 512, 4-token sequences (dropout off for all three)
    "paper": ["experiment=composition_paper", "model.dropout=0.0"],
    "smoke": [
        "experiment=composition_small",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_mlp=32",
        "train.batch_size=32",
        "data.n_entities=30",
        "data.out_degree=5",
        "data.phi=2.0",
    ],
}


def hf_gpt2(mc):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=mc.d_vocab,
        n_positions=mc.n_ctx,
        n_embd=mc.d_model,
        n_layer=mc.n_prelude + mc.n_core * mc.n_steps + mc.n_coda,
        n_head=mc.n_heads,
        n_inner=mc.d_mlp,
        activation_function=mc.act_fn,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(cfg)
    return model, lambda x: model(input_ids=x).logits


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def matmul_share(run, steps: int) -> float:
    """The fraction of a loop's own CPU time spent in matrix multiplies, over `steps` steps."""
    from torch.profiler import profile

    with profile() as prof:
        run(steps)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total


def grokloop_step_loop(cfg, ds, bf16: bool = False):
    """`grokloop.train`'s step (the same calls, without its bookkeeping), for the profiler only:
    the timing itself always runs the real `train`."""
    from grokloop.adaptive.depth import depth_loss
    from grokloop.optim import make_optimizer

    torch.manual_seed(0)
    model = LoopedTransformer(cfg.model)
    opt = make_optimizer(model, cfg.optim)
    train = torch.as_tensor(ds.splits["train"])
    data = [torch.as_tensor(getattr(ds, k)) for k in ("inputs", "answer_pos", "answers")]
    data[0] = data[0][:, : int(data[1].max()) + 1]  # the answer prefix, as train does
    batch = cfg.train.batch_size or len(train)

    def run(n):
        for _ in range(n):
            idx = train[torch.randperm(len(train))[:batch]]
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                loss, _ = depth_loss(model, *(d[idx] for d in data), "fixed", cfg.model.n_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    return run


def dataloader_loop(model, forward, ds, batch: int, lr: float, wd: float, bf16: bool = False):
    train = torch.as_tensor(ds.splits["train"])
    tensors = TensorDataset(
        torch.as_tensor(ds.inputs)[train],
        torch.as_tensor(ds.answer_pos)[train],
        torch.as_tensor(ds.answers)[train],
    )
    loader = DataLoader(tensors, batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    model.train()

    def run(n):
        done = 0
        while True:
            for x, ap, y in loader:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    logits = forward(x)
                loss = F.cross_entropy(logits[torch.arange(len(x)), ap], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                done += 1
                if done == n:
                    return

    return run


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of `reps` n x n x n matmuls in `dtype` (the machine's matmul peak at
    this thread count: what a training step's FLOPs are measured against)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def step_flops(run) -> int:
    """FLOPs of one training step of a loop (forward and backward), counted by
    torch.utils.flop_counter: matmuls, attention (SDPA), as the loop executes them."""
    from torch.utils.flop_counter import FlopCounterMode

    run(1)
    with FlopCounterMode(display=False) as counter:
        run(1)
    return counter.get_total_flops()


def onednn_kernels(overrides: list[str]) -> list[str]:
    """oneDNN primitive implementations (e.g. brg_matmul:avx10_1_512_amx) that run in two bf16
    training steps of our model: the kernels bf16 autocast really uses on this CPU."""
    import os
    import subprocess

    code = (
        "import sys; sys.path.insert(0, %r); import bench_train as b, torch; "
        "from common import run_config; from datagen import load_or_build; "
        "cfg = run_config(%r); ds = load_or_build(cfg.data, cfg.data_cache); "
        "cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx); "
        "b.grokloop_step_loop(cfg, ds, bf16=True)(2)"
    ) % (str(Path(__file__).parent), overrides)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=os.environ | {"ONEDNN_VERBOSE": "1"},
    ).stdout
    kinds = set()
    for line in out.splitlines():
        f = line.split(",")
        if len(f) > 9 and f[2] == "primitive" and f[3] == "exec":
            dtypes = sorted({d.split(":")[1] for d in f[8].split() if ":" in d})
            kinds.add(f"{f[5]} {f[6]} ({'/'.join(dtypes)})")
    return sorted(kinds)


def seconds_per_step(run, steps: int) -> float:
    run(2)  # warm-up
    t = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t) / steps


def available_modes(wanted: list[str]) -> list[str]:
    """The grokloop modes to time: bf16 ones only where the processor has bf16 matrix units."""
    bf16 = bf16_support("cuda" if torch.cuda.is_available() else "cpu")[0]
    return [m for m in wanted if bf16 or "bf16" not in m]


def bench_shape(
    name: str,
    steps: int,
    repeats: int,
    profile: bool = False,
    modes: list[str] = ("eager",),
    cpu_time: bool = False,
) -> dict:
    overrides = SHAPES[name]
    cfg = run_config(overrides)
    ds = load_or_build(cfg.data, cfg.data_cache)
    cfg.model = cfg.model.resolved(len(ds.vocab), ds.n_ctx)
    batch = cfg.train.batch_size
    modes = available_modes(list(modes))
    bf16 = any("bf16" in m for m in modes) and not torch.cuda.is_available()
    times = {f"grokloop_{m}": [] for m in modes} | {k: [] for k in competitors(cfg, ds, bf16)}
    cpu = {k: [] for k in times}
    for _ in range(repeats):  # interleaved: every loop once per repeat
        for m in modes:
            c = time.process_time()
            times[f"grokloop_{m}"].append(train_seconds_per_step(overrides + MODES[m], steps))
            cpu[f"grokloop_{m}"].append((time.process_time() - c) / (4 * steps))  # 4N steps ran
        for k, run in competitors(cfg, ds, bf16).items():
            c = time.process_time()
            times[k].append(seconds_per_step(run, steps))
            cpu[k].append((time.process_time() - c) / (steps + 2))
    times["grokloop"] = (
        times["grokloop_eager"] if "eager" in modes else times[f"grokloop_{modes[0]}"]
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {"fp32": matmul_peak(torch.float32)}
    if any("bf16" in m for m in modes):
        peak["bf16"] = matmul_peak(torch.bfloat16)
    competitor_loops = competitors(cfg, ds)
    flops = {
        "grokloop": step_flops(grokloop_step_loop(cfg, ds)),
        "hf_gpt2": step_flops(competitor_loops["hf_gpt2"]),
        "plain_loop": step_flops(competitor_loops["plain_loop"]),
    }
    util = {}
    for k, t in med.items():
        loop = "grokloop" if k.startswith("grokloop") else k.removesuffix("_bf16")
        util[k] = flops[loop] / t / 1e9 / peak["bf16" if "bf16" in k else "fp32"]
    extra = {}
    if profile:
        loops = {"grokloop": grokloop_step_loop(cfg, ds)} | competitors(cfg, ds)
        if "bf16" in peak:
            loops["grokloop_bf16"] = grokloop_step_loop(cfg, ds, bf16=True)
        share = {k: matmul_share(run, steps) for k, run in loops.items()}
        # the best any loop could do against HF at these FLOPs: HF's step over our matmul time
        extra = {
            "matmul_share": share,
            "ceiling_vs_hf_gpt2": med["hf_gpt2"] / (share["grokloop"] * med["grokloop"]),
        }
        if "bf16" in peak:
            extra["bf16_kernels"] = (
                onednn_kernels(overrides) if not torch.cuda.is_available() else []
            )
    if cpu_time:
        extra["cpu_seconds_per_step"] = {k: statistics.median(v) for k, v in cpu.items() if v}
    n_params = sum(p.numel() for p in LoopedTransformer(cfg.model).parameters())
    return {
        "shape": name,
        "overrides": overrides,
        "batch_size": batch,
        "n_ctx": ds.n_ctx,
        "d_vocab": len(ds.vocab),
        "n_params": n_params,
        "steps_timed": steps,
        "modes": modes,
        "seconds_per_step": med,
        "all_seconds_per_step": times,
        "steps_per_s": {k: 1 / v for k, v in med.items()},
        "examples_per_s": {k: batch / v for k, v in med.items()},
        "speedup_vs_hf_gpt2": med["hf_gpt2"] / med["grokloop"],
        "speedup_vs_plain_loop": med["plain_loop"] / med["grokloop"],
        **{f"speedup_vs_hf_gpt2_{m}": med["hf_gpt2"] / med[f"grokloop_{m}"] for m in modes},
        **(
            {"speedup_bf16_vs_hf_gpt2_bf16": med["hf_gpt2_bf16"] / med["grokloop_bf16"]}
            if "hf_gpt2_bf16" in med and "grokloop_bf16" in med
            else {}
        ),
        "matmul_peak_gflops": peak,
        "flops_per_step": flops,
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode, forward + backward",
        "matmul_peak_fraction": util,
    } | extra


def competitors(cfg, ds, bf16: bool = False) -> dict:
    """The DataLoader loops, freshly built: HF GPT-2 and our model, and with `bf16` HF GPT-2
    under bf16 autocast too (so a bf16 speed-up is not bf16's alone)."""
    batch, lr, wd = cfg.train.batch_size, cfg.optim.lr, cfg.optim.weight_decay
    torch.manual_seed(0)
    model, fwd = hf_gpt2(cfg.model)
    hf = dataloader_loop(model, fwd, ds, batch, lr, wd)
    torch.manual_seed(0)
    ours = LoopedTransformer(cfg.model)
    loops = {"hf_gpt2": hf, "plain_loop": dataloader_loop(ours, ours, ds, batch, lr, wd)}
    if bf16:
        torch.manual_seed(0)
        model, fwd = hf_gpt2(cfg.model)
        loops["hf_gpt2_bf16"] = dataloader_loop(model, fwd, ds, batch, lr, wd, bf16=True)
    return loops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="small,paper")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--modes",
        default="eager,compiled,bf16,compiled_bf16",
        help="grokloop modes (bf16 ones are skipped where bf16 is not native)",
    )
    ap.add_argument("--profile", action="store_true", help="also measure each loop's matmul share")
    ap.add_argument("--cpu_time", action="store_true", help="also record CPU seconds per step")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    shapes = ["smoke"] if args.smoke else args.shapes.split(",")
    steps, repeats = (10, 1) if args.smoke else (args.steps, args.repeats)
    modes = ["eager", "bf16"] if args.smoke else args.modes.split(",")
    results = [
        bench_shape(s, steps, repeats, args.profile or args.smoke, modes, args.cpu_time)
        for s in shapes
    ]
    for r in results:
        rows = [
            [
                k,
                f"{r['steps_per_s'][k]:.2f}",
                f"{r['examples_per_s'][k]:,.0f}",
                f"{r['seconds_per_step']['hf_gpt2'] / v:.2f}x",
                f"{r['matmul_peak_fraction'][k]:.1%}",
            ]
            for k, v in r["seconds_per_step"].items()
            if k != "grokloop"
        ]
        print(
            f"shape {r['shape']} (batch {r['batch_size']}); matmul peak "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in r["matmul_peak_gflops"].items())
        )
        print(table(["loop", "steps/s", "examples/s", "vs HF", "of matmul peak"], rows))
        if "matmul_share" in r:
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r["matmul_share"].items())
            print(
                f"time in matmuls: {shares}; at these FLOPs no loop of ours can beat "
                f"HF by more than {r['ceiling_vs_hf_gpt2']:.2f}x"
            )
        if r.get("bf16_kernels"):
            print("oneDNN kernels under bf16:", "; ".join(r["bf16_kernels"]))
    path = write("train_throughput", {"machine": machine(), "results": results}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
