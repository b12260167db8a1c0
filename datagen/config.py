"""Typed, validated data configs, one per task. Validation runs at construction, before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"data.{name}={value} is outside [0, 1); set it to a fraction such as 0.05"
        )


def _positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"data.{name}={value} must be at least 1")


def _check_inferred_fields(cfg, counts: tuple[str, ...]) -> None:
    """Checks shared by the knowledge-graph tasks: sizes, fractions, phi."""
    for name in counts:
        _positive(name, getattr(cfg, name))
    _fraction("ood_fraction", cfg.ood_fraction)
    _fraction("test_id_fraction", cfg.test_id_fraction)
    if cfg.phi < 0:
        raise ValueError(f"data.phi={cfg.phi} must be >= 0")


@dataclass
class CompositionConfig:
    """Knowledge-graph composition (Wang et al. 2024; docs/references.md), generalised to k hops.

    `hops`: inferred hop counts in training (atomic facts are always in training).
    `test_hops`: hop counts that appear only in the test splits (depth extrapolation).
    phi = |inferred training facts| / |ID atomic facts|, split evenly over `hops`.
    `valid_fraction`: held-out ID inferred facts (at most eval_size per hop count) for model
    selection and the halting selector, disjoint from test_inferred_id and from training.
    `mixed_ood`: also build test_OI / test_IO, the two-hop facts whose first / second hop is OOD.
    `valid_ood_size`: two-hop facts held out per OOD kind for model selection, valid_OI, valid_IO
    and valid_ood (first, second, both hops OOD: the valid twins of test_OI, test_IO and
    test_inferred_ood), taken from the paths the test splits left; 0: none.
    `self_relation`: recurrent-style training. Adds the identity relation <r_self> (the atomic
    fact `e <r_self>` -> e for every entity) and trains every atomic fact (e, r) -> t also as the
    two-hop query `e <r_self> r` -> t, so the second hop learns to apply every fact, ID and OOD,
    to an entity that arrives as a state the first hop produced, not only as an input token. No
    composition of two real facts is added: no test fact, nor any OOD path, is trained.
    """

    task: str = "composition"
    n_entities: int = 2000
    n_relations: int = 200
    out_degree: int = 20
    ood_fraction: float = 0.05
    test_id_fraction: float = 0.005
    phi: float = 7.2
    hops: list[int] = field(default_factory=lambda: [2])
    test_hops: list[int] = field(default_factory=list)
    eval_size: int = 3000
    valid_fraction: float = 0.0
    mixed_ood: bool = True
    valid_ood_size: int = 0
    self_relation: bool = False
    seed: int = 0

    def __post_init__(self):
        _check_inferred_fields(self, ("n_entities", "n_relations", "out_degree", "eval_size"))
        _fraction("valid_fraction", self.valid_fraction)
        if self.out_degree > self.n_relations:
            raise ValueError(
                f"data.out_degree={self.out_degree} is larger than data.n_relations="
                f"{self.n_relations}: each head needs distinct relations; lower "
                "out_degree or raise n_relations"
            )
        self.hops, self.test_hops = list(self.hops), list(self.test_hops)
        if self.valid_ood_size < 0:
            raise ValueError(f"data.valid_ood_size={self.valid_ood_size} must be >= 0 (0: none)")
        if self.valid_ood_size and not (self.mixed_ood and 2 in self.hops + self.test_hops):
            raise ValueError(
                f"data.valid_ood_size={self.valid_ood_size} holds out two-hop OOD facts; it "
                "needs data.mixed_ood=true and 2 in data.hops or data.test_hops"
            )
        for k in self.hops + self.test_hops:
            if int(k) < 1:
                raise ValueError(f"hop count {k} in data.hops/test_hops must be at least 1")
        if set(self.hops) & set(self.test_hops):
            raise ValueError(
                f"data.hops={self.hops} and data.test_hops={self.test_hops} overlap; "
                "a test-only hop count cannot also be trained on"
            )


@dataclass
class ComparisonConfig:
    """Attribute comparison (Wang et al. 2024; docs/references.md)."""

    task: str = "comparison"
    n_entities: int = 1000
    n_attributes: int = 20
    n_values: int = 20
    ood_fraction: float = 0.1
    test_id_fraction: float = 0.1
    valid_fraction: float = 0.0
    phi: float = 7.2
    eval_size: int = 3000
    seed: int = 0

    def __post_init__(self):
        _check_inferred_fields(self, ("n_entities", "n_attributes", "n_values", "eval_size"))
        _fraction("valid_fraction", self.valid_fraction)
        if self.test_id_fraction + self.valid_fraction >= 1:
            raise ValueError(
                f"data.test_id_fraction + data.valid_fraction = "
                f"{self.test_id_fraction + self.valid_fraction} leaves no training pairs"
            )


@dataclass
class ComplexReasoningConfig:
    """Complex reasoning: comparison with hidden values (Wang et al. 2024, "Grokked Transformers
    are Implicit Reasoners", arXiv 2405.15071, section 5; REFERENCES.md section 9). Generator:
    datagen/complex_reasoning.py.

    Per attribute an `ood_fraction` of entities is OOD: their values are never given. Training
    holds the ID entities' values and a `train_fraction` of the ID x ID pairs (after the
    `test_id_fraction` and `valid_fraction` are held out) and of the ID x OOD pairs, both orders
    of each pair. `eval_size` caps every evaluation split; test_hard (OOD x OOD pairs that the
    training facts decide and the training comparisons alone do not) is balanced over the three
    labels within it."""

    task: str = "complex_reasoning"
    n_entities: int = 1000
    n_attributes: int = 20
    n_values: int = 20
    ood_fraction: float = 0.1
    test_id_fraction: float = 0.1
    # Not in the authors' notebook (their valid.json is the OOD set): held-out ID x ID pairs for
    # model selection. 3% of the rest trains, so the training set barely changes.
    valid_fraction: float = 0.05
    train_fraction: float = 0.03
    eval_size: int = 3000
    seed: int = 0

    @property
    def n_ood(self) -> int:
        """OOD entities per attribute."""
        return round(self.ood_fraction * self.n_entities)

    def __post_init__(self):
        for name in ("n_entities", "n_attributes", "eval_size"):
            _positive(name, getattr(self, name))
        if self.n_values < 2:
            raise ValueError(
                f"data.n_values={self.n_values} must be at least 2 (a comparison needs two values)"
            )
        for name in ("ood_fraction", "test_id_fraction", "valid_fraction"):
            _fraction(name, getattr(self, name))
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(
                f"data.train_fraction={self.train_fraction} must be in (0, 1]: the "
                "share of ID x ID and of ID x OOD pairs that trains"
            )
        if self.test_id_fraction + self.valid_fraction >= 1:
            raise ValueError(
                f"data.test_id_fraction + data.valid_fraction = "
                f"{self.test_id_fraction + self.valid_fraction} leaves no ID x ID "
                "pairs to train on"
            )
        if self.n_ood < 2 or self.n_entities - self.n_ood < 2:
            raise ValueError(
                f"data.ood_fraction={self.ood_fraction} makes {self.n_ood} of "
                f"{self.n_entities} entities OOD per attribute; at least 2 must be "
                "OOD and 2 ID (raise or lower ood_fraction, or raise n_entities)"
            )


# Chain codes are int64 (datagen/permutation_chains.py): n_entities * n_relations**k must fit.
MAX_CHAIN_CODE = 2**62


@dataclass
class PermutationChainsConfig:
    """k-hop chains over relations that are permutations of the entities (Loop, Think &
    Generalize; docs/references.md), so every chain (h, r1, ..., rk) is defined; its answer is the
    entity reached. Generator: datagen/permutation_chains.py.

    Atomic facts (1-hop, every (h, r)) always train. `hops`: chain lengths trained on (1 is the
    atomic facts, always in), `train_per_hop` chains each. `test_hops`: lengths that appear only
    in test_inferred_id (depth extrapolation). Per length, `eval_size` held-out chains are tested
    (test_inferred_id) and `valid_size` more are held out for model selection and halting
    (valid), at every length, trained or test-only. The held-out chains of a length depend only
    on (seed, n_entities, n_relations, eval_size, valid_size), never on `hops`, so presets that
    differ only in `hops` (the stages of a hop curriculum) agree on every held-out chain.
    """

    task: str = "khop_perm"
    n_entities: int = 200  # Loop, Think & Generalize's 200 entities and 10 relations
    n_relations: int = 10
    hops: list[int] = field(default_factory=lambda: [2])
    test_hops: list[int] = field(default_factory=list)
    train_per_hop: int = 10000
    eval_size: int = 3000
    valid_size: int = 0
    seed: int = 0

    @property
    def n_held(self) -> int:
        """Chains held out at every length >= 2, trained or not (test first, then valid)."""
        return self.eval_size + self.valid_size

    def __post_init__(self):
        for name in ("n_entities", "n_relations", "train_per_hop", "eval_size"):
            _positive(name, getattr(self, name))
        if self.valid_size < 0:
            raise ValueError(f"data.valid_size={self.valid_size} must be >= 0 (0: no valid split)")
        self.hops, self.test_hops = list(self.hops), list(self.test_hops)
        if any(int(k) < 1 for k in self.hops):
            raise ValueError(f"data.hops={self.hops}: hop counts must be at least 1")
        if any(int(k) < 2 for k in self.test_hops):
            raise ValueError(
                f"data.test_hops={self.test_hops}: test-only hop counts must be at "
                "least 2 (every 1-hop atomic fact is in training)"
            )
        if set(self.hops) & set(self.test_hops):
            raise ValueError(
                f"data.hops={self.hops} and data.test_hops={self.test_hops} overlap; "
                "a test-only hop count cannot also be trained on"
            )
        E, R = self.n_entities, self.n_relations
        deepest = max([1] + self.hops + self.test_hops)
        if E * R**deepest >= MAX_CHAIN_CODE:
            raise ValueError(
                f"data.hops/test_hops reach {deepest} hops: {E} x {R}^{deepest} "
                "chains overflow the int64 chain codes; lower the deepest hop count"
            )
        for k in range(2, deepest + 1):
            if self.n_held > E * R**k:
                raise ValueError(
                    f"data.eval_size + data.valid_size = {self.n_held} chains are held "
                    f"out at every length, but only {E * R**k} {k}-hop chains exist; "
                    "lower eval_size/valid_size or raise n_entities/n_relations"
                )
        for k in sorted({k for k in self.hops if k >= 2}):
            # At least this many k-hop chains are neither held out nor extend a held-out shorter
            # chain (the held-out sets may overlap, so the true number can be larger).
            free = E * R**k - self.n_held * sum(R ** (k - j) for j in range(2, k + 1))
            if self.train_per_hop > free:
                raise ValueError(
                    f"data.train_per_hop={self.train_per_hop} needs that many {k}-hop "
                    f"training chains but only {max(free, 0)} are sure to be free of "
                    "held-out chains; lower train_per_hop (or eval_size/valid_size), "
                    "or raise n_entities/n_relations"
                )


MODULAR_OPS = ("add", "sub", "mul", "div", "poly")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _check_table(
    train_fraction: float, op: str | None = None, ops=(), modulus_name: str = "", modulus: int = 0
) -> None:
    """Checks shared by the table tasks: a training fraction, and where the task has operations
    a known op and a prime modulus for division."""
    if op is not None and op not in ops:
        raise ValueError(f"data.op={op!r} is unknown; choose one of {list(ops)}")
    if op == "div" and not _is_prime(modulus):
        raise ValueError(
            f"data.{modulus_name}={modulus} is not prime, so division is not defined "
            "for every divisor; use a prime such as 97, 113 or 127"
        )
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"data.train_fraction={train_fraction} must be in (0, 1)")


@dataclass
class ModularConfig:
    """`a op b mod p`; poly is x^2 + xy + y^2. A `train_fraction` of the table trains."""

    task: str = "modular"
    p: int = 113
    op: str = "add"
    train_fraction: float = 0.3
    seed: int = 0

    def __post_init__(self):
        if self.p < 2:
            raise ValueError(f"data.p={self.p} must be at least 2")
        _check_table(self.train_fraction, self.op, MODULAR_OPS, "p", self.p)


@dataclass
class GroupConfig:
    """Composition in the symmetric group S_n (n <= 5)."""

    task: str = "group"
    n: int = 5
    train_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.n <= 5:
            raise ValueError(f"data.n={self.n} must be between 2 and 5 (S_n has n! elements)")
        _check_table(self.train_fraction)


# Every operation of the shared-vocabulary table tasks (datagen/tables.py), in token order: the
# logic stages (bitwise on 7-bit words) first, then the mathematics stages. Append, never reorder:
# the position is the operation token's id offset.
TABLE_OPS = (
    "xor",
    "and",
    "or",
    "implies",
    "nand",
    "gfmul",
    "add",
    "sub",
    "mul",
    "div",
    "poly",
    "s5",
)


@dataclass
class TableConfig:
    """One table of a logic-to-mathematics curriculum (datagen/tables.py): `a <op> b =` -> c on a
    vocabulary that is the same for every `op` (integers 0..127, `<pad>`, `=`, one token per
    operation), so a model trained on one stage trains on the next without resizing.
    `modulus` is used by the modular ops only (add, sub, mul, div, poly); it must be at most 128
    (the integer tokens) and prime for div. A `train_fraction` of the table's cells trains."""

    task: str = "table"
    op: str = "xor"
    modulus: int = 127
    train_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.modulus <= 128:
            raise ValueError(
                f"data.modulus={self.modulus} must be between 2 and 128 (the answers "
                "are the integer tokens 0..127)"
            )
        _check_table(self.train_fraction, self.op, TABLE_OPS, "modulus", self.modulus)


@dataclass
class GrokkedConfig:
    """A folder in the GrokkedTransformer repository's format (train/valid/test.json and
    vocab.json; datagen/grokked_format.py), theirs or one we exported with format=grokked. The
    task (composition or comparison) is detected from its tokens. `path` is recorded absolute, so
    probes and reports find the folder from any directory; the run's dataset_hash pins its
    content. Imported folders are read every time, never cached (datagen/build.py)."""

    task: str = "grokked"
    path: str = "???"  # required (OmegaConf's mark): data.path=DIR

    def __post_init__(self):
        if self.path not in ("", "???"):
            self.path = str(Path(self.path).expanduser().resolve())


@dataclass
class MixtureConfig:
    """Several tasks on one shared vocabulary as one dataset (datagen/mixture.py): the unit of a
    curriculum stage (grokloop/curriculum.py). `parts` maps a name to a data config (a dict, as
    its preset gives it), in curriculum order. The training split is the training cells of the
    parts named in `train_on`, plus replay: examples drawn evenly from the training cells of the
    parts BEFORE the first trained part, so that they make up the fraction `replay` of the
    training split. Every part has its own held-out split `test_NAME` (a sample of at most
    `eval_size` of its test cells), so one run measures learning and forgetting on all parts."""

    task: str = "mixture"
    parts: dict[str, Any] = field(default_factory=dict)
    train_on: list[str] = field(default_factory=list)
    replay: float = 0.0
    eval_size: int = 2000
    held_out: str = "test"  # each part's split evaluated as test_NAME
    seed: int = 0

    def __post_init__(self):
        self.parts, self.train_on = dict(self.parts), list(self.train_on)
        if not self.parts:
            raise ValueError("data.parts is empty: a mixture needs at least one part")
        unknown = [n for n in self.train_on if n not in self.parts]
        if unknown or not self.train_on:
            raise ValueError(
                f"data.train_on={self.train_on} must name parts of the mixture, "
                f"one of {list(self.parts)}"
            )
        _fraction("replay", self.replay)
        _positive("eval_size", self.eval_size)
        bad = [n for n in self.parts if not n.replace("_", "").isalnum()]
        if bad:
            raise ValueError(
                f"mixture part name {bad[0]!r} must be letters, digits and _ (it "
                "names the split test_NAME)"
            )
        if self.replay and list(self.parts).index(self.train_on[0]) == 0:
            raise ValueError(
                f"data.replay={self.replay} but no part comes before "
                f"{self.train_on[0]!r} to replay; set data.replay=0"
            )


DATA_CONFIGS = {
    "composition": CompositionConfig,
    "comparison": ComparisonConfig,
    "complex_reasoning": ComplexReasoningConfig,
    "khop_perm": PermutationChainsConfig,
    "modular": ModularConfig,
    "group": GroupConfig,
    "table": TableConfig,
    "grokked": GrokkedConfig,
    "mixture": MixtureConfig,
}
DataConfig = (
    CompositionConfig
    | ComparisonConfig
    | ComplexReasoningConfig
    | PermutationChainsConfig
    | ModularConfig
    | GroupConfig
    | TableConfig
    | GrokkedConfig
    | MixtureConfig
)


def data_config_from_dict(d: dict) -> DataConfig:
    """Build the task's config; unknown task names or keys fail with the list of valid ones."""
    d = dict(d)
    task = d.get("task")
    if task not in DATA_CONFIGS:
        raise ValueError(f"data.task={task!r} is unknown; choose one of {sorted(DATA_CONFIGS)}")
    cls = DATA_CONFIGS[task]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(
            f"data.{unknown[0]}: unknown key for task {task!r}; known keys: {sorted(known)}"
        )
    return cls(**d)


def config_dict(cfg: DataConfig) -> dict:
    return asdict(cfg)
