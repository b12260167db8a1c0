"""Attention on the CPU: the fused kernel (scaled_dot_product_attention) against the explicit
softmax(QK^T)V, forward and backward, by sequence length and precision. The model's Attention
module runs both ways (its `fused_attention_pays` rule forced each way); 2,048 tokens per batch at
every length (the small composition shape: d_model 128, 4 heads, batch 512 x 4 tokens), fp32 and,
where the CPU has bf16 units, bf16 autocast as train.precision=bf16 runs it. Interleaved repeats,
medians; the two paths' outputs are checked to agree. The rule's choice is in each row.

    python bench/bench_attention.py [--lengths 4,8,16,32,64,128,256] [--iters 20] [--repeats 5]
    python bench/bench_attention.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write  # noqa: E402

import grokloop.model as model_module  # noqa: E402
from grokloop.accelerate import bf16_support  # noqa: E402
from grokloop.model import Attention, ModelConfig, fused_attention_pays  # noqa: E402

TOKENS = 2048


@contextlib.contextmanager
def forced_path(fused: bool):
    """Within it the model's attention takes the fused kernel (or the explicit path) whatever
    `fused_attention_pays` would choose."""
    model_module.fused_attention_pays = lambda *a: fused
    try:
        yield
    finally:
        model_module.fused_attention_pays = fused_attention_pays


def timed(attn: Attention, x: torch.Tensor, fused: bool, bf16: bool, iters: int) -> float:
    """Seconds per forward + backward of `attn` on x, the path forced."""
    with forced_path(fused):
        t = time.perf_counter()
        for _ in range(iters):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = attn(x, None)
            out.float().square().mean().backward()
        return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4,8,16,32,64,128,256")
    ap.add_argument("--d_model", type=int, default=128)
    ap.add_argument("--n_heads", type=int, default=4)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    lengths = [4, 64] if args.smoke else [int(p) for p in args.lengths.split(",")]
    iters, repeats = (2, 1) if args.smoke else (args.iters, args.repeats)
    d_model, n_heads = (16, 2) if args.smoke else (args.d_model, args.n_heads)
    precisions = ["fp32"] + (["bf16"] if bf16_support("cpu")[0] else [])
    results = []
    for n_pos in lengths:
        torch.manual_seed(0)
        cfg = ModelConfig(d_model=d_model, n_heads=n_heads, d_vocab=8, n_ctx=n_pos)
        attn = Attention(cfg)
        x = torch.randn(max(1, TOKENS // n_pos), n_pos, d_model, requires_grad=True)
        for precision in precisions:
            bf16 = precision == "bf16"
            outs = {}
            for fused in (True, False):
                with forced_path(fused), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    outs[fused] = attn(x, None).float().detach()
            times = {"fused": [], "explicit": []}
            for fused in (True, False):  # warm-up
                timed(attn, x, fused, bf16, 2)
            for _ in range(repeats):
                for fused in (True, False):
                    times["fused" if fused else "explicit"].append(
                        timed(attn, x, fused, bf16, iters)
                    )
            med = {k: statistics.median(v) for k, v in times.items()}
            dtype = torch.bfloat16 if bf16 else torch.float32
            results.append(
                {
                    "n_pos": n_pos,
                    "batch": len(x),
                    "precision": precision,
                    "ms": {k: 1e3 * v for k, v in med.items()},
                    "all_ms": {k: [1e3 * t for t in v] for k, v in times.items()},
                    "explicit_speedup": med["fused"] / med["explicit"],
                    "rule_chooses": "fused"
                    if fused_attention_pays(x.device, dtype)
                    else "explicit",
                    "max_abs_diff": (outs[True] - outs[False]).abs().max().item(),
                }
            )
    print(
        table(
            [
                "positions",
                "batch",
                "precision",
                "fused ms",
                "explicit ms",
                "explicit speed-up",
                "rule chooses",
                "max |diff|",
            ],
            [
                [
                    r["n_pos"],
                    r["batch"],
                    r["precision"],
                    r["ms"]["fused"],
                    r["ms"]["explicit"],
                    f"{r['explicit_speedup']:.2f}x",
                    r["rule_chooses"],
                    f"{r['max_abs_diff']:.1e}",
                ]
                for r in results
            ],
        )
    )
    path = write(
        "attention",
        {
            "machine": machine(),
            "d_model": d_model,
            "n_heads": n_heads,
            "tokens_per_batch": TOKENS,
            "iters": iters,
            "repeats": repeats,
            "results": results,
        },
        args.out,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
