"""Retrieval cost of the fact memory (issues 21, 37): a bank of 1M facts answering a batch of
4,096 queries, the exact top-k of `FactMemory.search` (what a frozen model runs: product keys,
the queries in cache-sized chunks, each row's best heads by group maxima, `top_k_rows`) against
scoring every fact (`exhaustive_top_k`), and against product keys over the whole score matrix
at once (`product_top_k`, the search before issue 37). The exhaustive search is timed on a
subsample of the queries and extrapolated; all must return the same slots there. Times are
medians of repeats in one process, under no_grad, of the whole search (query halves against
every head and relation token, then the top-k); the sub-key tables, like the bank's index, are
built once per bank. Wall and CPU (process) time are both recorded, and the load average: on a
shared machine the CPU time is the steadier of the two.

Bank shapes (every one 1M facts, token ids drawn at random, tails random):
    balanced      1,000 heads x 1,000 relations, every pair (product keys' best case)
    entities      10,000 heads x 100 relations, every pair
    entities_100k 100,000 heads x 10 relations, every pair (a bank of 100,000 entities)
    sparse        20,000 heads, 50 facts each over 500 relations (10% of the pairs)

With --run RUN (a model.entity_keys=canonical memory run), the trained model also answers
4,096 two-hop questions end to end from a bank of --new-entities synthetic new entities
(datagen/new_entities.py, 10 facts each), timed with the memory's search as above and with
every fact scored (a subsample, extrapolated), with its accuracy.
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
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from datagen.provenance import atomic_write_text, machine, portable_path  # noqa: E402
from grokloop.config import ModelConfig  # noqa: E402
from grokloop.memory import FactBank, exhaustive_top_k, first_grid, product_top_k  # noqa: E402
from grokloop.model import LoopedTransformer  # noqa: E402

SHAPES = {
    "balanced": (1000, 1000, 1000),
    "entities": (10_000, 100, 100),
    "entities_100k": (100_000, 10, 10),
    "sparse": (20_000, 500, 50),
}
SMOKE = {"balanced": (60, 50, 50), "sparse": (300, 40, 8)}  # --smoke: tiny banks


def make_bank(n_heads: int, n_relations: int, per_head: int, g: torch.Generator) -> FactBank:
    """per_head distinct relations for every head; heads are tokens 0.., relations follow."""
    rel = torch.rand(n_heads, n_relations, generator=g).argsort(dim=1)[:, :per_head]
    head = torch.arange(n_heads).repeat_interleave(per_head)
    tail = torch.randint(0, n_heads, (n_heads * per_head,), generator=g)
    return FactBank(head, n_heads + rel.flatten(), tail)


def median_ms(fn, repeats: int, cpu: list | None = None) -> tuple[float, list[float], object]:
    """(median wall ms, every wall ms, the last result); `cpu` gets the median CPU ms."""
    times, cpu_times, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
        cpu_times.append((time.process_time() - c) * 1e3)
    if cpu is not None:
        cpu.append(statistics.median(cpu_times))
    return statistics.median(times), times, out


def bench_shape(name, n_heads, n_relations, per_head, args, g) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=n_heads + n_relations,
        n_ctx=4,
        d_model=args.d_model,
        n_heads=4,
        memory="facts",
        memory_top_k=args.top_k,
        memory_d_key=args.d_key,
    )
    model = LoopedTransformer(cfg.resolved()).eval()
    mem = model.memory
    bank = make_bank(n_heads, n_relations, per_head, g)
    mem.attach(bank)
    with torch.no_grad():
        q = mem.W_Q(mem.ln(torch.randn(args.queries, args.d_model, generator=g)))
        ix = mem.index()  # built once per bank, at attach/load time in use
        k = min(args.top_k, len(bank))

        def product():  # what the model runs
            return mem.search(q)

        def whole():  # product keys over the whole score matrix at once
            s_head, s_rel = mem.subkey_scores(q, ix)
            return product_top_k(s_head, s_rel, ix, k)

        sub = q[: args.exhaustive_queries]

        def exhaustive():
            s_head, s_rel = mem.subkey_scores(sub, ix)
            return exhaustive_top_k(s_head, s_rel, ix, k, mem.chunk, mem.chunk_scores)

        product(), whole()  # warm-up (and the sub-key tables, built once per bank)
        cpu = []
        p_ms, p_all, (p_scores, p_slots) = median_ms(product, args.repeats, cpu)
        w_ms, _, (w_scores, w_slots) = median_ms(whole, max(1, args.repeats // 2), cpu)
        e_ms_sub, e_all, (e_scores, e_slots) = median_ms(exhaustive, max(1, args.repeats // 2), cpu)
        s_head, s_rel = mem.subkey_scores(q, ix)
        certified = certified_first_grid(s_head, s_rel, ix, k)
    e_ms = e_ms_sub * args.queries / len(sub)
    return {
        "shape": name,
        "facts": len(bank),
        "heads": n_heads,
        "relations": n_relations,
        "facts_per_head": per_head,
        "table_mb": ix.table.numel() * 4 / 2**20,
        "product_ms": p_ms,
        "product_ms_all": p_all,
        "product_cpu_ms": cpu[0],
        "product_whole_matrix_ms": w_ms,
        "product_whole_matrix_cpu_ms": cpu[1],
        "exhaustive_queries_timed": len(sub),
        "exhaustive_ms_subsample": e_ms_sub,
        "exhaustive_ms_subsample_all": e_all,
        "exhaustive_ms_extrapolated": e_ms,
        "exhaustive_cpu_ms_extrapolated": cpu[2] * args.queries / len(sub),
        "speedup_product_vs_exhaustive": e_ms / p_ms,
        "same_slots": bool(
            torch.equal(p_slots[: len(sub)], e_slots) and torch.equal(p_slots, w_slots)
        ),
        # Where the slots differ, the scores must not: a near-tie that a matmul of another
        # batch size rounds the other way (scores are computed per chunk of queries).
        "rows_other_slots": int(
            (p_slots[: len(sub)] != e_slots).any(1).sum() + (p_slots != w_slots).any(1).sum()
        ),
        "max_score_difference": max(
            float((p_scores[: len(sub)] - e_scores).abs().max()),
            float((p_scores - w_scores).abs().max()),
        ),
        "load_average_1min": os.getloadavg()[0],
        "certified_first_grid": certified,
        "meets_target": p_ms < args.target_ms,
    }


def bench_training(args, g) -> dict:
    """A training read: forward and backward of the memory for a batch of 512 x 7 states on the
    2,000-fact bank of khop_perm_cpu's shape (200 heads x 10 relations, every pair), by product
    keys and by scoring every fact (product_min_facts moved to force each path)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        d_vocab=210,
        n_ctx=7,
        d_model=args.d_model,
        n_heads=4,
        memory="facts",
        memory_top_k=args.top_k,
        memory_d_key=args.d_key,
    )
    mem = LoopedTransformer(cfg.resolved()).memory
    mem.attach(make_bank(200, 10, 10, g))
    x = torch.randn(args.train_batch, 7, args.d_model, generator=g)
    out = {"facts": 2000, "states": [args.train_batch, 7]}
    for name, threshold in (("product", 0), ("exhaustive", 1 << 62)):
        mem.product_min_facts = threshold
        mem(x).sum().backward()  # warm-up
        out[f"{name}_ms"], out[f"{name}_ms_all"], _ = median_ms(
            lambda: mem(x).sum().backward(), args.repeats
        )
    out["speedup_product_vs_exhaustive"] = out["exhaustive_ms"] / out["product_ms"]
    return out


def two_hop_bank(model, ds, n_new: int, n_questions: int, g: torch.Generator):
    """The run's bank plus a graph over n_new new entities (10 facts each), the model extended to
    read them, and n_questions two-hop questions among the new ones: (tokens [n, 3], answers)."""
    from datagen.new_entities import new_facts

    vocab, base = ds.vocab, model.memory.bank
    (e0, e1), (r0, r1) = vocab.ranges["entities"], vocab.ranges["relations"]
    n_old = e1 - e0
    nf = new_facts(
        (base.head - e0).numpy(),
        (base.relation - r0).numpy(),
        (base.tail - e0).numpy(),
        n_old,
        r1 - r0,
        n_new,
        10,
        np.random.default_rng(0),
        n_questions=0,
    )

    def token(o):
        o = torch.as_tensor(o)
        return torch.where(o < n_old, o + e0, len(vocab) + o - n_old)

    model.extend_entities(n_new)
    model.memory.attach(
        FactBank(
            torch.cat([base.head, token(nf.head)]),
            torch.cat([base.relation, torch.as_tensor(nf.relation) + r0]),
            torch.cat([base.tail, token(nf.tail)]),
        )
    )
    first = torch.randint(len(nf.head), (n_questions,), generator=g)  # facts in head order,
    bridge = torch.as_tensor(nf.tail)[first] - n_old  # 10 per new entity
    second = bridge * 10 + torch.randint(10, (n_questions,), generator=g)
    rel = torch.as_tensor(nf.relation) + r0
    tokens = torch.stack([token(nf.head[first]), rel[first], rel[second]], 1)
    return tokens, token(nf.tail[second])


def bench_two_hop(args, g) -> dict:
    """--run: the trained canonical-key model answering two-hop questions among new entities."""
    from grokloop.checkpoint import load_model

    model, ds, _ = load_model(args.run)
    tokens, answers = two_hop_bank(model.eval(), ds, args.new_entities, args.queries, g)
    mem, searched = model.memory, []
    search = mem.search

    def timed_search(q):
        t = time.perf_counter()
        out = search(q)
        searched.append(time.perf_counter() - t)
        return out

    def answer(rows):  # answers in batches: the unembedding over every key is [batch, tokens]
        pos = torch.full((256,), 2)
        return torch.cat(
            [
                model.readout_steps(x, positions=pos[: len(x)], every_step=False, answer_only=True)[
                    -1
                ].argmax(-1)
                for x in rows.split(256)
            ]
        )

    mem.search = timed_search
    with torch.no_grad():
        answer(tokens[:256])  # warm-up: the index and sub-key tables, once per bank
        searched.clear()
        ms, _, pred = median_ms(lambda: answer(tokens), max(1, args.repeats // 2))
        search_ms = sum(searched) * 1e3 / max(1, args.repeats // 2)
        sub = tokens[: args.exhaustive_queries]
        mem.product_min_facts = 1 << 62  # every fact scored
        e_ms, _, e_pred = median_ms(lambda: answer(sub), 1)
    return {
        "run": portable_path(args.run),
        "new_entities": args.new_entities,
        "facts": len(mem.bank),
        "tokens": model.vocab_size,
        "questions": len(tokens),
        "answer_ms": ms,
        "search_ms": search_ms,
        "acc": float((pred == answers).float().mean()),
        "exhaustive_questions_timed": len(sub),
        "exhaustive_ms_extrapolated": e_ms * len(tokens) / len(sub),
        "same_answers": bool(torch.equal(pred[: len(sub)], e_pred)),
    }


def certified_first_grid(s_head, s_rel, ix, k) -> float:
    """The fraction of rows the first grid certifies (the rest are retried larger)."""
    calls = []
    import grokloop.memory as memory

    original = memory.exhaustive_top_k
    memory.exhaustive_top_k = lambda s_h, *a, **kw: (
        calls.append(len(s_h)) or original(s_h, *a, **kw)
    )
    try:  # max_grid = the first grid: every row it does not certify goes to exhaustive_top_k
        a, b = first_grid(ix, k)
        product_top_k(s_head, s_rel, ix, k, max_grid=a * b)
    finally:
        memory.exhaustive_top_k = original
    return 1 - sum(calls) / len(s_head)


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shapes", default="balanced,entities,entities_100k,sparse")
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--d-key", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--exhaustive-queries", type=int, default=128)
    ap.add_argument("--target-ms", type=float, default=50)
    ap.add_argument("--train-batch", type=int, default=512)
    ap.add_argument("--run", default=None, help="a model.entity_keys=canonical memory run")
    ap.add_argument("--new-entities", type=int, default=100_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bank_search.json"))
    args = ap.parse_args()
    if args.smoke:
        args.shapes = "balanced,sparse"
        args.queries, args.repeats, args.exhaustive_queries, args.train_batch = 256, 2, 64, 16
    return args


def report(result: dict) -> None:
    print(
        f"{result['queries']:,} queries, top-{result['top_k']}, d_key {result['d_key']}, "
        f"{result['torch_threads']} threads, {result['machine']['cpu']}"
    )
    for r in result["results"]:
        print(
            f"{r['shape']:13s} {r['facts']:>9,} facts ({r['heads']:,} heads x "
            f"{r['relations']:,} relations): search {r['product_ms']:7.1f} ms (CPU "
            f"{r['product_cpu_ms']:.1f}; whole matrix {r['product_whole_matrix_ms']:.1f}), every "
            f"fact {r['exhaustive_ms_extrapolated']:9,.0f} ms "
            f"({r['speedup_product_vs_exhaustive']:,.0f}x); same slots {r['same_slots']} (rows "
            f"differing {r['rows_other_slots']}, score gap {r['max_score_difference']:.1e}); first "
            f"grid certified {r['certified_first_grid']:.3f}; < {result['target_ms']:.0f} ms: "
            f"{'met' if r['meets_target'] else 'NOT met'}; load {r['load_average_1min']:.1f}"
        )
    t = result["training"]
    print(
        f"training read, {t['facts']:,} facts, {t['states'][0]} x 7 states, forward + backward: "
        f"product keys {t['product_ms']:.1f} ms, every fact {t['exhaustive_ms']:.1f} ms "
        f"({t['speedup_product_vs_exhaustive']:.1f}x)"
    )
    if h := result.get("two_hop"):
        print(
            f"two-hop, {h['new_entities']:,} new entities ({h['facts']:,} facts, {h['tokens']:,} "
            f"tokens): {h['questions']:,} questions in {h['answer_ms']:,.0f} ms, of which the "
            f"memory's search {h['search_ms']:,.0f} ms; every fact scored "
            f"{h['exhaustive_ms_extrapolated']:,.0f} ms; accuracy {h['acc']:.3f}; same answers "
            f"{h['same_answers']}"
        )


def main():
    args = parse_args()
    g = torch.Generator().manual_seed(0)
    shapes = SMOKE if args.smoke else SHAPES
    rows = [bench_shape(name, *shapes[name], args, g) for name in args.shapes.split(",")]
    result = {
        "training": bench_training(args, g),
        "queries": args.queries,
        "top_k": args.top_k,
        "d_key": args.d_key,
        "repeats": args.repeats,
        "target_ms": args.target_ms,
        "smoke": args.smoke,
        "torch_threads": torch.get_num_threads(),
        "results": rows,
        "machine": machine(),
    }
    if args.run:
        result["two_hop"] = bench_two_hop(args, g)
    report(result)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    if not all(r["same_slots"] or r["max_score_difference"] < 1e-5 for r in rows):
        raise SystemExit("product-key and exhaustive search disagree")


if __name__ == "__main__":
    main()
