"""The bank command's options (conf/bank.yaml): one schema for its four actions, and which
options belong to which action."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BankCommand:
    """Schema of conf/bank.yaml: `python -m grokloop.bank build|eval key=value ...` (the word
    becomes `action`). build: the facts are a list (facts=FILE), else the training graph of
    `data` (e.g. G2: data.seed=1), else the run's; the vocabulary is the run's, else data's (both
    given: they must be equal). eval: the run's frozen model reads `bank` (None: the bank its
    checkpoint holds) on `data` (None: the run's dataset)."""

    action: list[str] = field(default_factory=list)  # [build] or [eval]
    run_dir: str | None = None  # a memory run (eval: required; build: its graph, vocabulary)
    data: Any = None  # build: its training atomic facts; eval: the data to evaluate
    out: str | None = None  # build: the bank directory (required); eval: the summary
    # directory (None: RUN/bank_eval/BANK_NAME, own: no bank given)
    data_cache: str | None = None
    # build
    facts: str | None = None  # a text file, one `head relation tail` a line (token names)
    edit: list[str] = field(default_factory=list)  # facts `h r t` replacing (or adding) fact (h, r)
    # eval
    bank: str | None = None  # a bank directory to read instead of the checkpoint's own
    step: int | None = None  # checkpoint step; None: the last good one
    n_steps: int | None = None  # recurrence steps; None: the model's
    top_k: int | None = None  # slots read per position; None: the model's memory_top_k
    splits: list[str] = field(default_factory=list)  # []: every evaluation split
    name: str | None = None  # the rows' model name; None: EXPERIMENT (.swap with a bank)
    batch_size: int = 4096
    # build: a slim bank
    needed_by: list[str] = field(default_factory=list)  # keep only the facts on these splits'
    # query paths (of data, else the run's)
    # build: a bank with knowledge missing (what a model should answer "I don't know" to)
    keep_fraction: float = 1.0  # keep this share of the facts, drawn at random (keep_seed)
    keep_seed: int = 0
    # edit_eval (also: bank, step, n_steps, top_k, name; splits = the two-hop query pool)
    method: str = "bank"  # bank: edit the fact in the bank; finetune: train the weights
    n_edits: int = 200  # facts edited (one at a time) per hop position
    positions: list[int] = field(default_factory=lambda: [1, 2])  # hop positions edited
    n_locality: int = 20  # unrelated two-hop queries checked per edit
    edit_seed: int = 0  # which facts are edited and their new tails
    finetune_steps: int = 10  # method=finetune: Adam steps on the edited atomic query
    finetune_lr: float = 1e-4  # method=finetune: Adam's learning rate
    # eval: two-hop questions by name instead of the dataset's splits (grokloop/bank/questions.py)
    questions: str | None = None  # a file of `split head relation_1 relation_2 answer` lines
    baselines: bool = False  # questions: also the lookup_cosine and symbolic answers
    # add-entities (grokloop/bank/entities.py): facts=FILE over new entity names, or a synthetic
    # graph over new_entities new ones (datagen/new_entities.py) and questions.txt through them
    new_entities: int = 0  # > 0: write that synthetic graph's facts instead of facts=FILE
    new_degree: int = 16  # relations per new entity among new entities
    link: bool = False  # also facts linking new entities and old ones
    link_degree: int = 4  # link: relations per new entity to old entities
    new_seed: int = 0  # the synthetic facts' and questions' seed
    n_questions: int = 1000  # questions per split (at most)
    role: str = "test"  # the questions' role: test (test_new_*, test_old from the run's
    # test_inferred_id) or valid (valid_new_*, valid_old from the run's valid split): a bank to
    # choose a variant on, made with another new_seed than the test bank's


EVAL_KEYS = ("bank", "step", "n_steps", "top_k", "splits", "name")
FINETUNE_KEYS = ("method", "finetune_steps", "finetune_lr")
ACTIONS = {
    "build": ("facts", "edit", "needed_by", "keep_fraction", "keep_seed"),
    "eval": EVAL_KEYS + FINETUNE_KEYS + ("questions", "baselines"),
    "edit_eval": EVAL_KEYS
    + (
        "method",
        "n_edits",
        "positions",
        "n_locality",
        "edit_seed",
        "finetune_steps",
        "finetune_lr",
    ),
    "add-entities": (
        "facts",
        "bank",
        "step",
        "new_entities",
        "new_degree",
        "link",
        "link_degree",
        "new_seed",
        "n_questions",
        "role",
    ),
}
