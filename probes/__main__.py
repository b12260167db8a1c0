"""Run probes on a training run, one checkpoint at a time.

    python -m probes run_dir=RUN [probe=[logit_lens,causal_tracing,attention,fourier,surgery,
        signals,wave]] [checkpoints=last|all|[STEP,STEP,...]] [split=[NAME,...]] [n=300]
        [corrupt=all|ROLE] [corruption=exists|free]
        [repeats=[1,2,3]] [patching_examples=40] [n_attention=8] [steps=0] [fit_split=NAME]
        [seed=0] [bank=DIR]

The options are typed by ProbesCommand (conf/probes.yaml; `python -m probes --help`). Each probe
is a function returning a typed result (probes/logit_lens.py, causal_tracing.py, attention.py,
fourier.py, surgery.py, signals.py); probes/records.py turns results into what is stored. `wave`
(logit_lens.bridge_wave): the step at which each link of a chain first resolves, over `steps`.

Writes RUN/probes/{probe}/step_XXXXXXXX.npz (arrays), RUN/probes/{probe}.jsonl (a tidy table, one
row per cell and checkpoint; re-running a checkpoint replaces its rows) and RUN/probes/{probe}.json
(the options, the run's config, the code version, the checkpoints done). With bank=DIR (a
model.memory=facts run) every checkpoint's model reads that bank directory instead of the one it
trained with (checked first: grokloop/bank.py bank_option), and the results go to
RUN/probes/bank_NAME/ (NAME: the bank directory's name), so the run's own probes stay as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from datagen.provenance import code_version
from grokloop.bank import bank_option, bank_results
from grokloop.checkpoint import list_checkpoints, load_model, read_checkpoint
from probes import fourier
from probes.examples import input_roles, probe_batch
from probes.records import (
    Store,
    run_attention,
    run_causal_tracing,
    run_fourier,
    run_logit_lens,
    run_signals,
    run_surgery,
    run_wave,
)

PROBES = ("logit_lens", "causal_tracing", "attention", "fourier", "surgery", "signals", "wave")


@dataclass
class ProbesCommand:
    """Schema of conf/probes.yaml. Lists are Hydra lists: probe=[logit_lens,causal_tracing]."""

    run_dir: str = "???"  # required
    probe: list[str] = field(default_factory=lambda: ["all"])  # all, or some of PROBES
    checkpoints: list[str] = field(default_factory=lambda: ["last"])  # last | all | steps
    split: list[str] = field(default_factory=list)  # []: train_inferred + test_inferred_ood
    n: int = 300  # examples per split
    corrupt: str = "all"  # causal tracing: corrupt every input role, or this one
    corruption: str = "exists"  # causal tracing: exists | free (probes/examples.py)
    repeats: list[int] = field(default_factory=lambda: [1, 2, 3])  # surgery: extra repeats
    patching_examples: int = 40  # causal tracing: examples in the per-head patching maps
    n_attention: int = 8  # attention: examples whose patterns are kept
    steps: int = 0  # signals, wave: recurrence steps to run (0: the trained number)
    fit_split: str = ""  # signals: fit the signals' combination on n examples of this
    # split (not one it is scored on), score it on every split
    seed: int = 0
    bank: str | None = None  # a bank directory every checkpoint's model reads (memory runs);
    # results in RUN/probes/bank_NAME/

    def __post_init__(self):
        unknown = [p for p in self.probe if p not in PROBES + ("all",)]
        if unknown:
            raise ValueError(
                f"probe={unknown[0]!r}: unknown; choose from {', '.join(PROBES)} or all"
            )
        if self.steps < 0:
            raise ValueError(
                f"steps={self.steps}: give the recurrence steps to run, or 0 for the "
                "model's trained number"
            )
        if self.fit_split and self.fit_split in self.split:
            raise ValueError(
                f"fit_split={self.fit_split} is also a split scored (split="
                f"{','.join(self.split)}): a combination scored on the facts it was "
                "fitted to looks better than it is; fit it on another split, e.g. valid"
            )

    def options(self) -> dict[str, str]:
        """The options as RUN/probes/{probe}.json records them (lists comma-joined)."""
        return {
            k: ",".join(map(str, v)) if isinstance(v, list) else str(v)
            for k, v in asdict(self).items()
            if k != "bank"
        }


def choose_probes(names: list[str], ds) -> list[str]:
    """Explicitly named probes must apply to the task; `all` skips those that do not."""
    applies = {
        "fourier": ds.task == "modular" and ds.config.get("op") == "add",
        "wave": any(r.startswith("bridge_") for r in ds.roles),
    }
    if "all" in names:
        return [p for p in PROBES if applies.get(p, True)]
    for p in names:
        if applies.get(p, True):
            continue
        if p == "fourier":
            try:
                fourier.check_applies(ds)  # its own message: which task and operation it needs
            except ValueError as e:
                raise SystemExit(str(e)) from None
        raise SystemExit(f"probe={p} follows chains' bridges; task {ds.task!r} has none")
    return list(names)


def choose_checkpoints(spec: list[str], run_dir: Path) -> list[int]:
    have = list_checkpoints(run_dir)
    if not have:
        raise SystemExit(f"{run_dir} has no checkpoints; train it (python -m grokloop.train) first")
    if spec in (["last"], ["all"]):
        return have[-1:] if spec == ["last"] else have
    try:
        wanted = [int(s) for s in spec]
    except ValueError:
        raise SystemExit(f"checkpoints={spec}: use last, all or a list of steps like [100,2000]")
    missing = [s for s in wanted if s not in have]
    if missing:
        raise SystemExit(f"checkpoints: step {missing[0]} has no checkpoint; this run has {have}")
    return wanted


def default_splits(ds) -> list[str]:
    # The paper traces training inferred facts; OOD shows what the model does not generalise.
    preferred = [s for s in ("train_inferred", "test_inferred_ood") if s in ds.splits]
    return preferred or ds.eval_splits[:1]


def main(argv: list[str] | None = None) -> None:
    from grokloop import cli

    cli.run("probes", run_probes, argv)


def readable(run_dir: Path, step: int) -> ValueError | None:
    try:
        read_checkpoint(run_dir, step)
    except ValueError as e:
        return e
    return None


def check_readable(run_dir: Path, steps: list[int]) -> None:
    """Every checkpoint to probe is read (and its sha256 checked) before any probe runs, so a
    damaged one stops the command before work, naming the latest steps that can be probed."""
    bad = {s: e for s in steps if (e := readable(run_dir, s))}
    if not bad:
        return
    others = (s for s in reversed(list_checkpoints(run_dir)) if s not in bad)
    good = sorted(s for s, _ in zip((s for s in others if not readable(run_dir, s)), range(3)))
    fix = (
        f"name readable ones, e.g. checkpoints=[{','.join(map(str, good))}]"
        if good
        else "no checkpoint of this run is readable: train it again"
    )
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise ValueError(f"{next(iter(bad.values()))}{more}; {fix}")


def run_probes(cmd: ProbesCommand) -> None:
    """Every probe of `cmd` on every checkpoint it names, each checked before any is run."""
    run_dir = Path(cmd.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"run_dir={run_dir}: no such directory")
    steps = choose_checkpoints(cmd.checkpoints, run_dir)
    check_readable(run_dir, steps)
    model, ds, run_cfg = load_model(run_dir, steps[0])
    bank = None
    if cmd.bank:  # checked before any probe runs or anything is written
        bank, manifest = bank_option(cmd.bank, ds.vocab, model.config.memory, model=model)
    probes = choose_probes(cmd.probe, ds)
    splits = cmd.split or default_splits(ds)
    batches = {s: probe_batch(ds, s, cmd.n, seed=cmd.seed) for s in splits}
    if cmd.corrupt != "all":
        for b in batches.values():
            if cmd.corrupt not in input_roles(b):
                raise SystemExit(
                    f"corrupt={cmd.corrupt!r} is not an input role of task "
                    f"{ds.task!r}; choose from {input_roles(b)}"
                )
    fit_batch = fitting_batch(cmd, probes, ds)
    meta = {
        "run_dir": str(run_dir),
        "options": cmd.options(),
        "splits": splits,
        "code_version": code_version(),
        "run_config": run_cfg,
    }
    sub = None
    if bank is not None:
        sub, meta["bank"] = bank_results(cmd.bank, bank, manifest)
    stores = {p: Store(run_dir, p, meta | {"probe": p}, sub) for p in probes}
    for k, step in enumerate(steps):
        if step != steps[0]:
            model.load_state_dict(read_checkpoint(run_dir, step)[0])
            if bank is not None:  # the checkpoint brought its own bank back
                model.memory.attach(bank)
        for p in probes:
            print(
                f"checkpoint {step} ({k + 1}/{len(steps)}): {p} on {', '.join(splits)}", flush=True
            )
            stores[p].save(step, *run_probe(p, model, batches, cmd, ds, fit_batch))
    print(
        f"wrote {run_dir / 'probes' / (sub or '')}/{{{','.join(probes)}}}.jsonl, .json and npz "
        "arrays"
    )


def fitting_batch(cmd: ProbesCommand, probes: list[str], ds):
    """The examples the signals' combination is fitted on (fit_split), or None."""
    if not cmd.fit_split:
        return None
    if "signals" not in probes:
        raise SystemExit(
            f"fit_split={cmd.fit_split} is read by the signals probe only; add "
            "signals to probe or leave fit_split out"
        )
    try:
        return probe_batch(ds, cmd.fit_split, cmd.n, seed=cmd.seed)
    except ValueError as e:
        raise SystemExit(f"fit_{e}") from None


def run_probe(probe: str, model, batches: dict, cmd: ProbesCommand, ds, fit_batch):
    """(arrays, rows) of one probe at the model's current checkpoint."""
    if probe == "logit_lens":
        return run_logit_lens(model, batches, cmd)
    if probe == "causal_tracing":
        return run_causal_tracing(model, batches, cmd, ds)
    if probe == "attention":
        return run_attention(model, batches, cmd)
    if probe == "fourier":
        return run_fourier(model, ds)
    if probe == "signals":
        return run_signals(model, batches, cmd, ds, fit_batch)
    if probe == "wave":
        return run_wave(model, batches, cmd)
    return run_surgery(model, batches, cmd)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
