"""Retrieval cost of the fact memory (issue 21): a bank of 1M facts answering a batch of 4,096
queries, the exact top-k of `FactMemory.search` by product keys (`product_top_k`) against scoring
every fact (`exhaustive_top_k`, what banks under 32K facts use), both from the same subkey
scores. The exhaustive search is timed on a subsample of the queries and extrapolated; the two
must return the same slots there. Times are medians of repeats in one process, under no_grad,
of the whole search (query halves against every head and relation token, then the top-k).

Bank shapes (every one 1M facts, token ids drawn at random, tails random):
    balanced  1,000 heads x 1,000 relations, every pair (product keys' best case: sqrt(N) a side)
    entities  10,000 heads x 100 relations, every pair
    sparse    20,000 heads, 50 facts each over 500 relations (10% of the pairs)
Queries are W_Q(LN(x)) of random states x through a randomly initialised memory: flat score
distributions, harder to certify than a trained model's sharp ones; `certified_first_grid` says
how many rows the first a x b grid settled.

Also a training read (forward + backward) on a 2,000-fact bank by both paths, which is why banks
of 256 facts or more take the product path.

    python bench/bench_bank_search.py            # bench/results/bank_search.json
    python bench/bench_bank_search.py --smoke    # tiny banks, for the test suite
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from grokloop.config import ModelConfig  # noqa: E402
from grokloop.memory import FactBank, exhaustive_top_k, first_grid, product_top_k  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402
from datagen.provenance import atomic_write_text, machine  # noqa: E402

SHAPES = {"balanced": (1000, 1000, 1000), "entities": (10_000, 100, 100), "sparse": (20_000, 500, 50)}


def make_bank(n_heads: int, n_relations: int, per_head: int, g: torch.Generator) -> FactBank:
    """per_head distinct relations for every head; heads are tokens 0.., relations follow."""
    rel = torch.rand(n_heads, n_relations, generator=g).argsort(dim=1)[:, :per_head]
    head = torch.arange(n_heads).repeat_interleave(per_head)
    tail = torch.randint(0, n_heads, (n_heads * per_head,), generator=g)
    return FactBank(head, n_heads + rel.flatten(), tail)


def median_ms(fn, repeats: int) -> tuple[float, list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times, out


def bench_shape(name, n_heads, n_relations, per_head, args, g) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=n_heads + n_relations, n_ctx=4, d_model=args.d_model, n_heads=4,
                      memory="facts", memory_top_k=args.top_k, memory_d_key=args.d_key)
    model = LoopedTransformer(cfg.resolved()).eval()
    mem = model.memory
    bank = make_bank(n_heads, n_relations, per_head, g)
    mem.attach(bank)
    with torch.no_grad():
        q = mem.W_Q(mem.ln(torch.randn(args.queries, args.d_model, generator=g)))
        ix = mem.index()   # built once per bank, at attach/load time in use
        k = min(args.top_k, len(bank))

        def product():
            s_head, s_rel = mem.subkey_scores(q, ix)
            return product_top_k(s_head, s_rel, ix, k)

        sub = q[:args.exhaustive_queries]

        def exhaustive():
            s_head, s_rel = mem.subkey_scores(sub, ix)
            return exhaustive_top_k(s_head, s_rel, ix, k, mem.chunk, mem.chunk_scores)

        product()   # warm-up
        p_ms, p_all, (p_scores, p_slots) = median_ms(product, args.repeats)
        e_ms_sub, e_all, (e_scores, e_slots) = median_ms(exhaustive, max(1, args.repeats // 2))
        s_head, s_rel = mem.subkey_scores(q, ix)
        certified = certified_first_grid(s_head, s_rel, ix, k)
    e_ms = e_ms_sub * args.queries / len(sub)
    return {"shape": name, "facts": len(bank), "heads": n_heads, "relations": n_relations,
            "facts_per_head": per_head, "table_mb": ix.table.numel() * 4 / 2**20,
            "product_ms": p_ms, "product_ms_all": p_all,
            "exhaustive_queries_timed": len(sub), "exhaustive_ms_subsample": e_ms_sub,
            "exhaustive_ms_subsample_all": e_all, "exhaustive_ms_extrapolated": e_ms,
            "speedup_product_vs_exhaustive": e_ms / p_ms,
            "same_slots": bool(torch.equal(p_slots[:len(sub)], e_slots)),
            "certified_first_grid": certified, "meets_target": p_ms < args.target_ms}


def bench_training(args, g) -> dict:
    """A training read: forward and backward of the memory for a batch of 512 x 7 states on the
    2,000-fact bank of khop_perm_cpu's shape (200 heads x 10 relations, every pair), by product
    keys and by scoring every fact (product_min_facts moved to force each path)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_vocab=210, n_ctx=7, d_model=args.d_model, n_heads=4, memory="facts",
                      memory_top_k=args.top_k, memory_d_key=args.d_key)
    mem = LoopedTransformer(cfg.resolved()).memory
    mem.attach(make_bank(200, 10, 10, g))
    x = torch.randn(args.train_batch, 7, args.d_model, generator=g)
    out = {"facts": 2000, "states": [args.train_batch, 7]}
    for name, threshold in (("product", 0), ("exhaustive", 1 << 62)):
        mem.product_min_facts = threshold
        mem(x).sum().backward()   # warm-up
        out[f"{name}_ms"], out[f"{name}_ms_all"], _ = median_ms(
            lambda: mem(x).sum().backward(), args.repeats)
    out["speedup_product_vs_exhaustive"] = out["exhaustive_ms"] / out["product_ms"]
    return out


def certified_first_grid(s_head, s_rel, ix, k) -> float:
    """The fraction of rows the first grid certifies (the rest are retried larger)."""
    calls = []
    import grokloop.memory as memory
    original = memory.exhaustive_top_k
    memory.exhaustive_top_k = lambda s_h, *a, **kw: calls.append(len(s_h)) or original(s_h, *a, **kw)
    try:   # max_grid = the first grid: every row it does not certify goes to exhaustive_top_k
        a, b = first_grid(ix, k)
        product_top_k(s_head, s_rel, ix, k, max_grid=a * b)
    finally:
        memory.exhaustive_top_k = original
    return 1 - sum(calls) / len(s_head)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shapes", default="balanced,entities,sparse")
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--d-key", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--exhaustive-queries", type=int, default=128)
    ap.add_argument("--target-ms", type=float, default=50)
    ap.add_argument("--train-batch", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bank_search.json"))
    args = ap.parse_args()
    shapes = {name: SHAPES[name] for name in args.shapes.split(",")}
    if args.smoke:
        shapes = {"balanced": (60, 50, 50), "sparse": (300, 40, 8)}
        args.queries, args.repeats, args.exhaustive_queries, args.train_batch = 256, 2, 64, 16
    g = torch.Generator().manual_seed(0)
    rows = [bench_shape(name, *shape, args, g) for name, shape in shapes.items()]
    training = bench_training(args, g)
    result = {"training": training, "queries": args.queries, "top_k": args.top_k, "d_key": args.d_key,
              "repeats": args.repeats, "target_ms": args.target_ms, "smoke": args.smoke,
              "torch_threads": torch.get_num_threads(), "results": rows, "machine": machine()}
    print(f"{args.queries:,} queries, top-{args.top_k}, d_key {args.d_key}, "
          f"{torch.get_num_threads()} threads, {result['machine']['cpu']}")
    for r in rows:
        print(f"{r['shape']:9s} {r['facts']:>9,} facts ({r['heads']:,} heads x {r['relations']:,} "
              f"relations): product keys {r['product_ms']:7.1f} ms, every fact "
              f"{r['exhaustive_ms_extrapolated']:9,.0f} ms ({r['speedup_product_vs_exhaustive']:,.0f}x); "
              f"same slots {r['same_slots']}; first grid certified {r['certified_first_grid']:.3f}; "
              f"< {args.target_ms:.0f} ms: {'met' if r['meets_target'] else 'NOT met'}")
    print(f"training read, {training['facts']:,} facts, {args.train_batch} x 7 states, forward + backward: "
          f"product keys {training['product_ms']:.1f} ms, every fact {training['exhaustive_ms']:.1f} ms "
          f"({training['speedup_product_vs_exhaustive']:.1f}x)")
    atomic_write_text(args.out, json.dumps(result, indent=2))
    if not all(r["same_slots"] for r in rows):
        raise SystemExit("product-key and exhaustive search disagree")


if __name__ == "__main__":
    main()
