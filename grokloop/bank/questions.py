"""Two-hop questions by name (`eval questions=FILE`): a file of `split head relation_1 relation_2
answer` lines, asked of a frozen model reading a bank, with the memory's retrieval at each hop.

add-entities new_entities=N writes such a file (questions.txt) beside the bank it makes: the
splits test_new_head, test_new_bridge, test_new_answer, test_new_all (which of head, bridge and
answer are new entities; datagen/new_entities.py) and test_old (the run's held-out two-hop
queries, test_inferred_id, by name: old entities only, to show nothing was lost); with role=valid
the same splits named valid_* (valid_old: the run's valid split), for choosing a variant.

Retrieval per hop (the mechanism, read from the per-step hooks steps.{s}.memory.hook_slots): hop
1's fact (head, relation_1) is needed at relation_1's position, hop 2's (bridge, relation_2) at
relation_2's; for each hop and step, the share of questions whose top-1 slot at that position is
that fact.
"""

from __future__ import annotations

import torch

from grokloop.bank.entities import token_name
from grokloop.evaluate import evaluate
from grokloop.memory import FactBank


def read_questions(lines: list[str], vocab, where: str) -> dict[str, torch.Tensor]:
    """{split: int64 [n, 4] (head, relation_1, relation_2, answer) token ids}, in file order."""
    out: dict[str, list] = {}
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 5:
            raise ValueError(
                f"{where} line {n}: {line.strip()!r} is not `split head relation_1 "
                "relation_2 answer`"
            )
        try:
            out.setdefault(words[0], []).append([vocab.id(token_name(w)) for w in words[1:]])
        except KeyError as e:
            raise ValueError(
                f"{where} line {n}: {e.args[0]!r} is not in the bank's vocabulary "
                "(new entities come from add-entities)"
            ) from None
    if not out:
        raise ValueError(f"{where} holds no questions")
    return {s: torch.tensor(rows) for s, rows in out.items()}


def question_lines(split: str, rows, vocab) -> list[str]:
    """The lines of `rows` [n, 4] token ids under `split` (what read_questions reads)."""
    return [" ".join([split] + [vocab.token(int(i)) for i in row]) for row in rows]


def ask(model, questions: dict[str, torch.Tensor], batch_size: int = 4096) -> dict[str, float]:
    """grokloop.evaluate's metrics (acc/SPLIT, n/SPLIT, acc_step/SPLIT/T) of the questions."""
    tokens = torch.cat(list(questions.values()))
    device = next(model.parameters()).device
    data = {
        "inputs": tokens[:, :3].to(device),
        "answers": tokens[:, 3].to(device),
        "answer_pos": torch.full((len(tokens),), 2, device=device),
        "hops": torch.full((len(tokens),), 2, device=device),
    }
    idx, start = {}, 0
    for s, q in questions.items():
        idx[s] = torch.arange(start, start + len(q), device=device)
        start += len(q)
    return evaluate(model, data, idx, model.n_steps, batch_size)


@torch.no_grad()
def hop_retrieval(model, bank: FactBank, q: torch.Tensor, batch_size: int = 4096):
    """[hop][step]: the share of questions q [n, 4] whose top-1 slot at relation_hop's position
    after that step is the hop's fact ((head, relation_1), then (bridge, relation_2), the bridge
    being the bank's tail of the first); None for a hop whose fact the bank lacks."""
    first = bank.slots_of(q[:, 0], q[:, 1])
    bridge = bank.tail[first.clamp(min=0)]
    second = bank.slots_of(bridge, q[:, 2])
    want = torch.stack([first, second], 1)  # [n, hop]
    if (want < 0).any():
        return None
    hits = torch.zeros(2, model.n_steps)
    for rows, w in zip(q.split(batch_size), want.split(batch_size)):
        slots = {}
        model.run_with_hooks(
            rows[:, :3].to(next(model.parameters()).device),
            fwd_hooks=[
                (f"steps.{s}.memory.hook_slots", lambda a, hook, s=s: slots.__setitem__(s, a))
                for s in range(model.n_steps)
            ],
        )
        for hop in range(2):
            for s in range(model.n_steps):
                hits[hop, s] += (slots[s][:, 1 + hop, 0].cpu() == w[:, hop]).sum()
    return (hits / len(q)).tolist()


def baseline_answers(
    ds, bank: FactBank, q: torch.Tensor, n_tokens: int, seed: int = 0, d: int = 256
) -> dict[str, torch.Tensor]:
    """The non-parametric answers to questions q [n, 4] beside the model's:
    lookup_cosine  the nearest stored query under canonical random keys (grokloop/baselines),
                   storing every training example of the run and every fact of the bank (new
                   facts included) as an atomic query `h r` -> t: memorisation, no composition
    symbolic       chaining the bank's facts, t = fact(fact(h, r1), r2): the upper bound"""
    from grokloop.baselines.keys import canonical_keys, context_embedding
    from grokloop.baselines.lookup import KeyMemory
    from grokloop.baselines.symbolic import FactTable

    train = ds.splits["train"]
    atomic = torch.stack([bank.head, bank.relation, torch.full_like(bank.head, ds.vocab.pad_id)], 1)
    stored = torch.cat([torch.as_tensor(ds.inputs[train][:, :3]), atomic])
    answers = torch.cat([torch.as_tensor(ds.answers[train]), bank.tail])
    keys = canonical_keys(n_tokens, d, seed)
    memory = KeyMemory(context_embedding(stored, keys), answers, "cosine")
    table = FactTable(bank.head.numpy(), bank.relation.numpy(), bank.tail.numpy(), n_tokens)
    chain = table.get(table.get(q[:, 0].numpy(), q[:, 1].numpy()), q[:, 2].numpy())
    return {
        "lookup_cosine": memory.lookup(context_embedding(q[:, :3], keys)),
        "symbolic": torch.as_tensor(chain),
    }
