"""Knowledge banks: the facts a memory model reads, as files that plug into a frozen model.

    python -m grokloop.bank build run_dir=RUN out=banks/g1                 # the run's graph
    python -m grokloop.bank build data=composition_cpu data.seed=1 out=banks/g2   # graph G2's facts
    python -m grokloop.bank build run_dir=RUN facts=FILE out=banks/mine    # a list of facts
    python -m grokloop.bank build run_dir=RUN edit='e_3 r_5 e_9' out=banks/edit  # one fact edited
    python -m grokloop.bank build data=composition_cpu needed_by=test_inferred_id out=banks/slim
    python -m grokloop.bank build run_dir=RUN keep_fraction=0.5 out=banks/half   # facts missing
    python -m grokloop.bank eval run_dir=RUN bank=banks/g2 data=composition_cpu data.seed=1
    python -m grokloop.bank edit_eval run_dir=RUN n_edits=200              # edits in the bank
    python -m grokloop.bank edit_eval run_dir=ANY_RUN method=finetune n_edits=200  # the baseline

    python -m grokloop.bank add-entities run_dir=RUN facts=FILE out=banks/people  # new entities
    python -m grokloop.bank add-entities run_dir=RUN new_entities=1000 link=true out=banks/new
    python -m grokloop.bank eval run_dir=RUN bank=banks/new questions=banks/new/questions.txt

Modules: `files` (the format below, reading, checking, attaching), `slim` (banks that hold
less), `build`, `evaluate` (eval), `edits` (edit_eval), `finetune` (edit_eval's baseline),
`entities` (banks that add entities: the extended vocabulary, what the manifest records, the
checks), `add` (add-entities), `questions` (two-hop questions by name), `ask` (eval
questions=FILE), `grow` (its baseline: grown embedding rows, fine-tuned), `options` (the
command's schema); `python -m grokloop.bank` is __main__.py, which writes the results and their
markdown (reports/bank.py).

A bank is a directory:
  bank.safetensors  head, relation, tail: int64 [n_facts], token ids in slot order
  manifest.json     format, n_facts, the facts by name (up to MAX_NAMED), the vocabulary (its
                    sha256 and tokens), what it fits, where it came from, sha256 of the tensors
written atomically, tensors first and the manifest last, so a directory with a manifest is a
complete bank.

Why token ids and not keys and values: the model makes every slot from the ids with its own
learned maps (grokloop/memory.py), so a bank is independent of any one set of weights. The same
file plugs into every model over its vocabulary (the swap experiment needs exactly this), stays
right after the model is fine-tuned, is exact and tiny (24 bytes a fact), and can be read and
edited by name. Stored keys would be stale after any weight change and would tie a bank to one
checkpoint.

What "fits" means: the manifest's vocabulary (sha256 of its tokens and ranges) is the run's, and
the model has model.memory=facts; the model's sizes do not matter, since the slots are computed.
A bank that does not fit is refused before any work, naming what differs and the fix.
`eval` writes the results schema (reports/study): rows model, split, (hops), acc, Wilson lo/hi,
n, seed, step, bank; a swapped bank's rows are named `EXPERIMENT.swap`. It also measures
retrieval: how often the memory's top-1 slot at an atomic query's answer position is the queried
fact (head, relation), at each step (metric retrieval@STEP), and every row names the bank's size
(bank_facts, bank_bytes: the bytes of its bank.safetensors).

A slim bank (`build needed_by=SPLIT,...`) keeps only the facts on the query paths of those splits
of the data (else the run's): hop 1 is (head, relation_1), hop i (bridge_{i-1}, relation_i), read
from the dataset's roles, in the whole bank's slot order; a fact the queries need but the bank
lacks is an error.

Edit propagation (`edit_eval`): for each hop position P (1, 2), n_edits distinct facts (h, r)
that are hop P of some two-hop query of `splits` (default: every held-out two-hop split) get a
new tail t', drawn (edit_seed) among the other entities for which every query through the fact at
hop P gets a new answer in the edited graph. Each edit is applied alone and undone before the
next, so nothing is batched and nothing needs to be shown exact: method=bank plugs in the bank
with that one fact edited (FactBank.edited; weights frozen), method=finetune trains every weight
finetune_steps Adam steps on the atomic query `h r` -> t' alone (the baseline; a bank-less run
works). Measured: success (`h r` answers t'), propagation (each query through the fact at hop P
answers its answer in the edited graph: for P=1 the new bridge's fact, for P=2 t'), locality
(n_locality unrelated queries, the fact on no hop of their path, give the answer the unedited
model gave), spill (how often such a query answers t' instead, lower is better: a fine-tuned
model that says t' to everything gets propagation at hop 2 for free) and before (the
through-queries' old answers before the edit). Rows are named
NAME.hopP.METRIC (NAME: EXPERIMENT.METHOD_edit), split by the edited fact's class (atomic_id,
atomic_ood) or the query path's (two_hop_XY: ID or OOD fact at hops 1 and 2, read from the
dataset's splits; two_hop: all), with Wilson intervals over the queries.
"""

from grokloop.bank.add import add_entities
from grokloop.bank.ask import evaluate_questions
from grokloop.bank.build import build, run_dataset
from grokloop.bank.edits import (
    METRICS,
    Edit,
    bank_editor,
    compose,
    edit_eval,
    fact_classes,
    fact_table,
    measure_edits,
    plan_edits,
    predict,
)
from grokloop.bank.entities import (
    attach_extension,
    check_extension,
    extended_vocab,
    parse_new_facts,
    weights_sha256,
)
from grokloop.bank.evaluate import evaluate_bank, load_for_eval, retrieval
from grokloop.bank.files import (
    FORMAT,
    MAX_NAMED,
    attach_bank,
    bank_bytes,
    bank_option,
    bank_results,
    check_fits,
    fact_names,
    facts_sha256,
    load_bank,
    parse_facts,
    read_manifest,
    save_bank,
    vocab_sha256,
)
from grokloop.bank.finetune import finetune_editor
from grokloop.bank.grow import finetune_facts, grow
from grokloop.bank.options import ACTIONS, BankCommand
from grokloop.bank.questions import ask, hop_retrieval, read_questions
from grokloop.bank.slim import path_facts, random_share, slim_bank

__all__ = [
    "ACTIONS",
    "FORMAT",
    "MAX_NAMED",
    "METRICS",
    "BankCommand",
    "Edit",
    "add_entities",
    "ask",
    "attach_bank",
    "attach_extension",
    "bank_bytes",
    "bank_editor",
    "bank_option",
    "bank_results",
    "build",
    "check_extension",
    "check_fits",
    "compose",
    "edit_eval",
    "evaluate_bank",
    "evaluate_questions",
    "extended_vocab",
    "fact_classes",
    "fact_names",
    "fact_table",
    "facts_sha256",
    "finetune_editor",
    "finetune_facts",
    "grow",
    "hop_retrieval",
    "load_bank",
    "load_for_eval",
    "measure_edits",
    "parse_facts",
    "parse_new_facts",
    "path_facts",
    "plan_edits",
    "predict",
    "random_share",
    "read_manifest",
    "read_questions",
    "retrieval",
    "run_dataset",
    "save_bank",
    "slim_bank",
    "vocab_sha256",
    "weights_sha256",
]
