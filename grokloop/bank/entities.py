"""`python -m grokloop.bank add-entities`: entities no weight has seen, added through a bank.

    python -m grokloop.bank add-entities run_dir=RUN facts=FILE out=DIR       # facts by name
    python -m grokloop.bank add-entities run_dir=RUN new_entities=1000 [link=true] out=DIR

A model trained with canonical entity keys (model.entity_keys=canonical, grokloop/entity_keys.py)
reads an entity as its key, a pure function of (model.key_seed, the entity's ordinal). So adding
an entity needs no weight: it is a new token whose key the model draws from the seed, and its
facts go into the bank. `add-entities` reads a file of facts `head relation tail` by name (a head
or tail the run's vocabulary lacks is a new entity, in order of first appearance; relations
must be the run's: a bank adds entities, not relations), appends the new names to the vocabulary
(token ids d_vocab .., ordinals n_entities ..), and writes a bank of the base facts (bank=DIR, or
the run's own) plus the new ones over that extended vocabulary. With new_entities=N it first
writes a synthetic file of facts over N new entities (datagen/new_entities.py: a graph among
them, and with link=true facts linking them to the old ones) and questions.txt, two-hop questions
through them by split (grokloop/bank/questions.py reads it: `eval questions=FILE`).

Nothing trained changes: the command loads the run's model, hashes every weight (sha256 of the
state dict, the bank aside), extends it, reads the new bank on a batch of questions and hashes
again; the two must be equal, and the manifest records the hash. The manifest's `extends` names
what the bank extends and how its new entities are read:
    vocab_sha256, vocab_size      the run's vocabulary (the new tokens follow it)
    entity_keys, key_seed, entity_start, n_entities   the run's keys (new keys come from the seed)
    new_entities, first_new_id    how many tokens were added, and the first one's id
    run_dir, step, weights_sha256 the model it was made with
A reader checks each against its run and refuses a mismatch in one line that names the fix
(`check_extension`): another vocabulary, another key seed, a model with learned entity
embeddings (a new entity has no row there; grokloop/bank/grow.py grows and trains rows, the
conventional alternative).
"""

from __future__ import annotations

import hashlib

import torch

from datagen.vocab import Vocab
from grokloop.bank.files import load_bank, read_manifest, vocab_sha256
from grokloop.memory import FactBank

NEW_RANGE = "new_entities"  # the vocabulary range of the added tokens


def weights_sha256(model) -> str:
    """sha256 of every trained tensor of `model` (its state dict, by name; the bank's buffers are
    data, not weights, and are left out)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if ".bank_" in f".{name}":
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def extended_vocab(vocab: Vocab, names: list[str]) -> Vocab:
    """`vocab` with the tokens `names` appended as the range new_entities."""
    ranges = {k: tuple(v) for k, v in vocab.ranges.items()}
    return Vocab(
        tuple(vocab.tokens) + tuple(names),
        ranges | {NEW_RANGE: (len(vocab), len(vocab) + len(names))},
    )


def base_of(manifest: dict) -> tuple[Vocab, list[str]]:
    """(the vocabulary an extended bank extends, its new tokens), from its manifest."""
    ext = Vocab.from_dict(manifest["vocab"])
    lo, hi = ext.ranges[NEW_RANGE]
    ranges = {k: v for k, v in ext.ranges.items() if k != NEW_RANGE}
    return Vocab(ext.tokens[:lo], ranges), list(ext.tokens[lo:hi])


def token_name(word: str) -> str:
    """A name as a token: angle brackets added unless present (`alice` -> `<alice>`)."""
    return word if word.startswith("<") and word.endswith(">") else f"<{word}>"


def parse_new_facts(
    lines: list[str], vocab: Vocab, where: str, known_new: list[str] = ()
) -> tuple[FactBank, list[str]]:
    """Facts `head relation tail` by name over `vocab`, heads and tails possibly new: (the facts
    over the extended vocabulary, every new token in order: `known_new` first, then new names
    as they first appear)."""
    entities, relations = set(vocab.range("entities")), set(vocab.range("relations"))
    new = {name: len(vocab) + i for i, name in enumerate(known_new)}
    rows = []
    for n, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 3:
            raise ValueError(f"{where} line {n}: {line.strip()!r} is not `head relation tail`")
        ids = []
        for pos, word in enumerate(words):
            tok = token_name(word)
            i = vocab._index.get(tok)
            if pos == 1:
                if i not in relations:
                    raise ValueError(
                        f"{where} line {n}: {word!r} is not a relation of the run "
                        "(a bank adds entities, not relations)"
                    )
            elif i is not None and i not in entities:
                raise ValueError(
                    f"{where} line {n}: {word!r} is a token of the run but not an "
                    "entity; name a new entity something else"
                )
            elif i is None:
                i = new.setdefault(tok, len(vocab) + len(new))
            ids.append(i)
        rows.append(ids)
    if not rows:
        raise ValueError(f"{where} holds no facts")
    t = torch.tensor(rows)
    return FactBank(t[:, 0], t[:, 1], t[:, 2]), list(new)


def extension_record(
    run_cfg: dict, vocab: Vocab, n_new: int, run_dir, step: int, weights: str
) -> dict:
    m = run_cfg["model"]
    return {
        "vocab_sha256": vocab_sha256(vocab),
        "vocab_size": len(vocab),
        "entity_keys": m.get("entity_keys", "learned"),
        "key_seed": m.get("key_seed", 0),
        "entity_start": m.get("entity_start"),
        "n_entities": m.get("n_entities"),
        "new_entities": n_new,
        "first_new_id": len(vocab),
        "run_dir": str(run_dir),
        "step": step,
        "weights_sha256": weights,
    }


def check_extension(
    manifest: dict, path, vocab: Vocab, model_cfg: dict, learned_ok: bool = False
) -> Vocab:
    """The extended vocabulary of bank `path`, after checking that it extends `vocab` for a model
    of config `model_cfg`; else ValueError, one line naming the fix."""
    ext = manifest["extends"]
    fix = (
        f"add the entities to this run: python -m grokloop.bank add-entities run_dir=RUN "
        f"facts={path}/facts_added.txt out=DIR"
    )
    if ext["vocab_sha256"] != vocab_sha256(vocab):
        raise ValueError(
            f"bank={path} adds entities to another vocabulary ({ext['vocab_size']} "
            f"tokens, sha256 {ext['vocab_sha256'][:12]}) than this run's "
            f"({len(vocab)} tokens, sha256 {vocab_sha256(vocab)[:12]}); {fix}"
        )
    mine = model_cfg.get("entity_keys", "learned")
    if mine != "canonical" and not learned_ok:
        raise ValueError(
            f"bank={path} adds {ext['new_entities']} entities, and this run has "
            "learned entity embeddings (model.entity_keys=learned): a new entity has "
            "no embedding in it; train with model.entity_keys=canonical, or grow and "
            "train rows for them with method=finetune"
        )
    for key in ("key_seed", "entity_start", "n_entities") if mine == "canonical" else ():
        if ext.get(key) != model_cfg.get(key):
            raise ValueError(
                f"bank={path} was made for entity keys with model.{key}="
                f"{ext.get(key)}, and this run has model.{key}="
                f"{model_cfg.get(key)}; {fix}"
            )
    base, names = base_of(manifest)
    if vocab_sha256(base) != vocab_sha256(vocab) or len(names) != ext["new_entities"]:
        raise ValueError(
            f"bank={path}: its vocabulary is not the one its manifest says it "
            "extends (changed by hand?); make it again with add-entities"
        )
    return extended_vocab(vocab, names)


def attach_extension(model, path, vocab: Vocab, model_cfg: dict):
    """Check bank `path` (an extended bank) against the run, let `model` read its new entities
    and attach it: (bank, manifest, extended vocabulary). No weight changes."""
    manifest = read_manifest(path)
    ext_vocab = check_extension(manifest, path, vocab, model_cfg)
    bank, _ = load_bank(path, ext_vocab)
    model.extend_entities(manifest["extends"]["new_entities"])
    model.memory.attach(bank)
    return bank, manifest, ext_vocab
