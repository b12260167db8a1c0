"""Exact nearest-key lookup at scale (issue 21): a bank of 1M random keys answering a batch of
4,096 queries, exact top-1 by inner product via chunked matmul (grokloop.baselines.lookup.top1),
timed as the median of a few repeats, against the naive per-query loop (one matrix-vector
product and argmax per query, `top1_naive`) on a subsample of queries, extrapolated to the whole
batch; the ratio is from the same run. The two must agree on the subsample. Target: < 50 ms for
the batch.

    python bench/bench_lookup.py              # 1M x 64 bank, 4,096 queries; bench/results/lookup.json
    python bench/bench_lookup.py --d 128 --repeats 3
    python bench/bench_lookup.py --smoke      # a tiny bank, for the test suite
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datagen.provenance import atomic_write_text, machine  # noqa: E402
from grokloop.baselines.lookup import top1, top1_naive  # noqa: E402


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--bank", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive", type=int, default=32, help="queries timed in the naive loop")
    ap.add_argument("--query-chunk", type=int, default=4096)
    ap.add_argument("--bank-chunk", type=int, default=8192)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lookup.json"))
    args = ap.parse_args()
    if args.smoke:
        args.bank, args.queries, args.repeats, args.naive = 20_000, 256, 2, 8
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(args.bank, args.d, generator=g)
    queries = torch.randn(args.queries, args.d, generator=g)
    chunks = dict(query_chunk=args.query_chunk, bank_chunk=args.bank_chunk)
    top1(queries[:64], bank[:65536], **chunks)  # warm-up
    times, (_, idx) = timed(lambda: top1(queries, bank, **chunks), args.repeats)
    sub = queries[: args.naive]
    naive_times, naive_idx = timed(lambda: top1_naive(sub, bank), 1)
    chunked_ms = statistics.median(times) * 1e3
    naive_ms = naive_times[0] * 1e3 * args.queries / args.naive
    flops = 2 * args.bank * args.queries * args.d
    result = {
        "bank": args.bank,
        "queries": args.queries,
        "d": args.d,
        "dtype": "float32",
        "repeats": args.repeats,
        "chunks": chunks,
        "smoke": args.smoke,
        "chunked_ms_all": [t * 1e3 for t in times],
        "chunked_ms_median": chunked_ms,
        "chunked_gflops": flops / (chunked_ms / 1e3) / 1e9,
        "naive_queries_timed": args.naive,
        "naive_ms_subsample": naive_times[0] * 1e3,
        "naive_ms_extrapolated": naive_ms,
        "speedup_chunked_vs_naive": naive_ms / chunked_ms,
        "agree": bool(torch.equal(idx[: args.naive], naive_idx)),
        "target_ms": 50,
        "meets_target": chunked_ms < 50,
        "machine": machine(),
    }
    print(
        f"bank {args.bank:,} x d {args.d}, {args.queries:,} queries, "
        f"{torch.get_num_threads()} threads, {result['machine']['cpu']}"
    )
    print(
        f"chunked matmul top-1: {chunked_ms:,.0f} ms (median of {args.repeats}; "
        f"{result['chunked_gflops']:.0f} GFLOP/s)  target < 50 ms: "
        f"{'met' if result['meets_target'] else 'NOT met'}"
    )
    print(
        f"naive per-query loop: {naive_ms:,.0f} ms extrapolated from {args.naive} queries "
        f"({naive_ms / chunked_ms:.1f}x slower); same answers: {result['agree']}"
    )
    atomic_write_text(args.out, json.dumps(result, indent=2))
    if not result["agree"]:
        raise SystemExit("chunked and naive top-1 disagree")


if __name__ == "__main__":
    main()
