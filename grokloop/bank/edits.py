"""Edit propagation (`python -m grokloop.bank edit_eval`): single-fact edits, applied one at a
time to a frozen memory model's bank (or, as the baseline, by fine-tuning: grokloop/bank/
finetune.py), and how far each carries through the two-hop answers that pass through it."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from datagen.provenance import code_version, machine
from grokloop.bank.evaluate import load_for_eval
from grokloop.bank.finetune import finetune_editor
from grokloop.bank.options import BankCommand
from grokloop.memory import FactBank
from grokloop.stats import acc_row

# Which atomic facts are in- and out-of-distribution, read from the splits of a composition
# dataset: the class of each hop of a two-hop split's paths (datagen/composition.py).
PATH_CLASSES = {
    "train": "II",
    "train_inferred": "II",
    "valid": "II",
    "test_inferred_id": "II",
    "test_inferred_ood": "OO",
    "test_OI": "OI",
    "test_IO": "IO",
}
ATOMIC_CLASSES = {"atomic_id": "I", "atomic_ood": "O"}


def fact_classes(ds, d_vocab: int) -> torch.Tensor:
    """[d_vocab, d_vocab] int8: 1 where fact (head, relation) is ID, 2 where it is OOD, 0 where
    the dataset's splits do not say (atomic_id/atomic_ood, and each hop of the two-hop splits:
    test_OI's first hop is OOD, its second ID, and so on)."""
    cls = torch.zeros(d_vocab, d_vocab, dtype=torch.int8)
    for split, c in ATOMIC_CLASSES.items():
        if split in ds.splits:
            idx = np.asarray(ds.splits[split])
            cls[torch.as_tensor(ds.inputs[idx, 0]), torch.as_tensor(ds.inputs[idx, 1])] = (
                1 if c == "I" else 2
            )
    for split, cc in PATH_CLASSES.items():
        if split not in ds.splits:
            continue
        idx = np.asarray(ds.splits[split])
        idx = idx[ds.hops[idx] == 2]
        for hop, c in enumerate(cc):
            head = ds.roles["head" if hop == 0 else "bridge_1"][idx]
            rel = ds.roles[f"relation_{hop + 1}"][idx]
            cls[torch.as_tensor(head), torch.as_tensor(rel)] = 1 if c == "I" else 2
    return cls


def fact_table(bank: FactBank, d_vocab: int) -> torch.Tensor:
    """[d_vocab, d_vocab] int64: the tail of fact (head, relation), -1 where there is none."""
    table = torch.full((d_vocab, d_vocab), -1, dtype=torch.int64)
    table[bank.head, bank.relation] = bank.tail
    return table


def compose(table: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Answers of two-hop queries (h, r1, r2) [n, 3] in graph `table`; -1 where a hop is missing."""
    bridge = table[queries[:, 0], queries[:, 1]]
    return torch.where(bridge >= 0, table[bridge.clamp(min=0), queries[:, 2]], -1)


@dataclass
class Edit:
    """One edited fact (head, relation): old -> new tail; `through` indexes the queries that
    pass through it at the edited hop position, `new_answers` their answers in the edited graph
    (only queries whose answer the edit changes), `unchanged` how many through-queries it leaves
    with their answer, `locality` indexes unrelated queries (through it at no position)."""

    position: int
    head: int
    relation: int
    old: int
    new: int
    through: torch.Tensor
    new_answers: torch.Tensor
    unchanged: int
    locality: torch.Tensor


def plan_edits(
    table: torch.Tensor,
    queries: torch.Tensor,
    position: int,
    n_edits: int,
    n_locality: int,
    entities: torch.Tensor,
    rng: np.random.Generator,
) -> list[Edit]:
    """Up to `n_edits` distinct facts that are hop `position` (1 or 2) of some of `queries`
    (two-hop (h, r1, r2) [n, 3] in graph `table`), each with a new tail drawn uniformly from the
    `entities` other than the old tail whose edited graph changes the answer of every query
    through the fact at that hop (any other entity if none does: the queries it leaves unchanged
    are counted, not scored), and `n_locality` queries the fact is on no path of."""
    bridge = table[queries[:, 0], queries[:, 1]]
    keys = queries[:, :2] if position == 1 else torch.stack([bridge, queries[:, 2]], 1)
    on_any = [queries[:, :2], torch.stack([bridge, queries[:, 2]], 1)]
    distinct = torch.unique(keys, dim=0)
    pick = rng.choice(len(distinct), size=min(n_edits, len(distinct)), replace=False)
    edits = []
    for h, r in distinct[torch.as_tensor(pick)].tolist():
        old = int(table[h, r])
        through = torch.nonzero((keys[:, 0] == h) & (keys[:, 1] == r)).flatten()
        old_answers = compose(table, queries[through])
        others = entities[entities != old]
        if not len(others):
            raise ValueError(f"no entity other than the old tail {old} to edit fact ({h}, {r}) to")
        if position == 1:  # the new bridge must give every through-query a new, defined answer
            after = table[others][:, queries[through, 2]]  # [entities, through]
            good = others[((after >= 0) & (after != old_answers)).all(1)]
            others = good if len(good) else others
        new = int(others[int(rng.integers(len(others)))])
        edited = table.clone()
        edited[h, r] = new
        new_answers = compose(edited, queries[through])
        changed = (new_answers >= 0) & (new_answers != old_answers)
        unrelated = torch.nonzero(
            ~((on_any[0][:, 0] == h) & (on_any[0][:, 1] == r))
            & ~((on_any[1][:, 0] == h) & (on_any[1][:, 1] == r))
        ).flatten()
        local = unrelated[
            torch.as_tensor(
                rng.choice(len(unrelated), size=min(n_locality, len(unrelated)), replace=False),
                dtype=torch.int64,
            )
        ]
        edits.append(
            Edit(
                position,
                h,
                r,
                old,
                new,
                through[changed],
                new_answers[changed],
                int((~changed).sum()),
                local,
            )
        )
    return edits


@torch.no_grad()
def predict(model, tokens: torch.Tensor, position: int, batch_size: int = 4096) -> torch.Tensor:
    """The model's answers (argmax after its last step) at `position` of each row of `tokens`."""
    if not len(tokens):
        return torch.zeros(0, dtype=torch.int64)
    device = next(model.parameters()).device
    out = []
    for chunk in tokens.split(batch_size):
        pos = torch.full((len(chunk),), position, device=device)
        out.append(
            model.readout_steps(chunk.to(device), model.n_steps, positions=pos)[-1].argmax(-1).cpu()
        )
    return torch.cat(out)


def bank_editor(model, bank: FactBank):
    """method=bank: `apply(edit)` plugs in `bank` with the one fact edited; `restore()` the bank."""

    def apply(e: Edit):
        model.memory.attach(bank.edited(e.head, e.relation, e.new))

    return apply, lambda: model.memory.attach(bank)


def measure_edits(
    model,
    edits: list[Edit],
    queries: torch.Tensor,
    table: torch.Tensor,
    classes: torch.Tensor,
    apply,
    restore,
    batch_size: int = 4096,
) -> dict:
    """Edit by edit (exact: each is applied alone to the unedited model, then undone): whether
    the edited atomic query answers the new tail (success), each through-query its answer in the
    edited graph (propagation), each unrelated query the answer it gave before any edit
    (locality) and how often it answers the new tail instead (spill, among those that did not
    before); and, before any edit, whether the through-queries got their old answers (before).
    Returns {(metric, split): [correct, n]}, split by the class of the fact (atomic_id/ood) or of
    the query's path (two_hop_II/OI/IO/OO: ID or OOD fact at each hop, in the graph the answer
    follows; `two_hop` all of them)."""
    restore()
    model.eval()
    before = predict(model, queries, 2, batch_size)
    old_answers = compose(table, queries)
    letter = {0: "?", 1: "I", 2: "O"}
    counts: dict[tuple[str, str], list[int]] = {}

    def count(metric: str, splits: list[str], ok: torch.Tensor):
        for s in splits:
            c = counts.setdefault((metric, s), [0, 0])
            c[0] += int(ok.sum())
            c[1] += len(ok)

    def path_split(q: torch.Tensor, tab: torch.Tensor) -> list[str]:
        bridge = tab[q[:, 0], q[:, 1]]
        first, second = classes[q[:, 0], q[:, 1]], classes[bridge.clamp(min=0), q[:, 2]]
        return [f"two_hop_{letter[int(a)]}{letter[int(b)]}" for a, b in zip(first, second)]

    def count_by_path(metric: str, q: torch.Tensor, tab: torch.Tensor, ok: torch.Tensor):
        count(metric, ["two_hop"], ok)
        labels = path_split(q, tab)
        for lab in sorted(set(labels)):
            count(metric, [lab], ok[torch.tensor([x == lab for x in labels])])

    for e in edits:
        fact = {1: "atomic_id", 2: "atomic_ood"}.get(int(classes[e.head, e.relation]), "atomic_?")
        q = queries[e.through]
        count_by_path("before", q, table, before[e.through] == old_answers[e.through])
        apply(e)
        got = predict(model, torch.tensor([[e.head, e.relation]]), 1, batch_size)
        count("success", ["atomic", fact], got == e.new)
        edited = table.clone()
        edited[e.head, e.relation] = e.new
        count_by_path("propagation", q, edited, predict(model, q, 2, batch_size) == e.new_answers)
        local = queries[e.locality]
        after = predict(model, local, 2, batch_size)
        count_by_path("locality", local, table, after == before[e.locality])
        other = before[e.locality] != e.new
        count_by_path("spill", local[other], table, after[other] == e.new)
        restore()
    return counts


METRICS = {
    "success": "the edited atomic query answers the new tail",
    "propagation": "a two-hop query through the edited fact answers its new answer",
    "locality": "an unrelated two-hop query keeps the answer it gave before the edit",
    "before": "before the edit, the through-queries answer their old answers",
    "spill": "an unrelated two-hop query now answers the edited fact's new tail (of those "
    "that did not before; lower is better)",
}


def check_edit_options(cmd: BankCommand) -> None:
    """edit_eval's own options, before anything is loaded."""
    method = cmd.method
    if method not in ("bank", "finetune"):
        raise ValueError(
            f"method={method!r}: choose bank (edit the fact in the bank, model "
            "frozen) or finetune (train the weights on the edited fact)"
        )
    if cmd.n_edits < 1 or cmd.n_locality < 0:
        raise ValueError(
            f"n_edits={cmd.n_edits} must be at least 1 and n_locality={cmd.n_locality} at least 0"
        )
    if not cmd.positions or not set(cmd.positions) <= {1, 2}:
        raise ValueError(
            f"positions={cmd.positions}: the hop positions to edit, 1 (the first "
            "hop of two-hop queries), 2 (the second) or both: positions=1,2"
        )
    if method == "finetune" and (cmd.finetune_steps < 1 or cmd.finetune_lr <= 0):
        raise ValueError(
            f"finetune_steps={cmd.finetune_steps} must be at least 1 and "
            f"finetune_lr={cmd.finetune_lr} positive"
        )
    if method == "bank" and (
        cmd.finetune_steps != BankCommand.finetune_steps
        or cmd.finetune_lr != BankCommand.finetune_lr
    ):
        raise ValueError("finetune_steps= and finetune_lr= are options of method=finetune")


def edit_queries(cmd: BankCommand, ds, model, table) -> tuple[list[str], torch.Tensor]:
    """The query splits and the distinct two-hop queries an edit is measured on, checked to be
    the queries of the graph (and, for method=bank, of the bank the model reads)."""
    if ds.task != "composition":
        raise ValueError(
            f"edit_eval needs two-hop fact queries (a composition dataset), not {ds.task!r}"
        )
    two_hop = [s for s in ds.eval_splits if (ds.hops[ds.splits[s]] == 2).all()]
    splits = cmd.splits or [s for s in two_hop if s != "train_inferred"]
    bad = [s for s in splits if s not in two_hop]
    if bad:
        raise ValueError(
            f"splits names {bad[0]!r}, which holds no two-hop queries; the query "
            f"pool comes from {two_hop}"
        )
    if cmd.method == "bank" and not torch.equal(
        fact_table(model.memory.bank, len(ds.vocab)), table
    ):
        raise ValueError(
            "the bank the model reads holds other facts than the graph of the "
            "data asked about; pass bank= built from that graph (python -m "
            "grokloop.bank build data=...)"
        )
    idx = np.concatenate([np.asarray(ds.splits[s]) for s in splits])
    inputs = torch.as_tensor(ds.inputs[idx, :3], dtype=torch.int64)
    if not torch.equal(compose(table, inputs), torch.as_tensor(ds.answers[idx], dtype=torch.int64)):
        raise ValueError(
            "the two-hop queries' answers are not those of the dataset's graph of "
            "atomic facts; edit_eval needs the dataset the queries came from"
        )
    return splits, torch.unique(inputs, dim=0)


def edit_rows(counts: dict, name: str, position: int, common: dict) -> list[dict]:
    """A row per (metric, split) of one hop position's edits: NAME.hopP.METRIC."""
    return [
        acc_row(
            k / n,
            n,
            model=f"{name}.hop{position}.{metric}",
            split=split,
            hops=1 if metric == "success" else 2,
            metric=f"edit_{metric}",
            edit_hop=position,
            **common,
        )
        for metric in METRICS
        for (m, split), (k, n) in sorted(counts.items())
        if m == metric and n
    ]


def edit_plan(edits: list, position: int, tok) -> dict:
    return {
        "position": position,
        "n_edits": len(edits),
        "n_through": sum(len(e.through) for e in edits),
        "n_unchanged": sum(e.unchanged for e in edits),
        "edits": [f"{tok(e.head)} {tok(e.relation)}: {tok(e.old)} -> {tok(e.new)}" for e in edits],
    }


def edit_eval(cmd: BankCommand) -> dict:
    """`python -m grokloop.bank edit_eval`: single-fact edits and how far they carry through
    two-hop answers, for a frozen memory model whose bank is edited (method=bank) or for any
    model fine-tuned on the edited fact (method=finetune, the baseline). Rows NAME.hopP.METRIC."""
    check_edit_options(cmd)
    method = cmd.method
    run_cfg, run_ds, ds, manifest, model, step = load_for_eval(cmd, need_memory=method == "bank")
    d_vocab = len(ds.vocab)
    table = fact_table(FactBank.from_dataset(ds), d_vocab)
    splits, queries = edit_queries(cmd, ds, model, table)
    classes = fact_classes(ds, d_vocab)
    entities = torch.tensor(list(ds.vocab.range("entities")))

    t0 = time.perf_counter()
    if method == "bank":
        apply, restore = bank_editor(model, model.memory.bank)
    else:
        apply, restore = finetune_editor(model, cmd.finetune_steps, cmd.finetune_lr)
    name = cmd.name or f"{run_cfg.get('experiment', 'model')}.{method}_edit"
    common = {"seed": run_cfg.get("seed"), "step": step, "method": method}
    rows, plans = [], []
    for position in cmd.positions:
        rng = np.random.default_rng([cmd.edit_seed, position])
        edits = plan_edits(table, queries, position, cmd.n_edits, cmd.n_locality, entities, rng)
        counts = measure_edits(
            model, edits, queries, table, classes, apply, restore, cmd.batch_size
        )
        rows += edit_rows(counts, name, position, common)
        plans.append(edit_plan(edits, position, ds.vocab.token))
    memory = getattr(model, "memory", None)
    return {
        "study": f"bank_edit/{name}",
        "run_dir": str(cmd.run_dir),
        "machine": machine(),
        "code_version": code_version(),
        "seconds": time.perf_counter() - t0,
        "commands": ["python -m grokloop.bank " + " ".join(sys.argv[1:])],
        "method": method,
        "metrics": METRICS,
        "query_splits": splits,
        "n_queries": len(queries),
        "edit_seed": cmd.edit_seed,
        "n_locality": cmd.n_locality,
        "n_steps": model.n_steps,
        "finetune": {"steps": cmd.finetune_steps, "lr": cmd.finetune_lr, "optimizer": "Adam"}
        if method == "finetune"
        else None,
        "bank": None
        if memory is None
        else {
            "path": cmd.bank,
            "n_facts": len(memory.bank),
            "source": manifest["source"] if manifest else "checkpoint",
        },
        "dataset_hash": ds.content_hash(),
        "plans": plans,
        "rows": rows,
    }
