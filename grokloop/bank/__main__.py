"""`python -m grokloop.bank build|eval|edit_eval|add-entities key=value ...`: the bank command
(options: grokloop/bank/options.py; `python -m grokloop.bank --help`). It runs the action and
writes its results and their markdown page (reports/bank.py)."""

from __future__ import annotations

import json
from pathlib import Path

from datagen.provenance import atomic_write_text
from grokloop import cli
from grokloop.bank.add import add_entities
from grokloop.bank.ask import evaluate_questions
from grokloop.bank.build import build
from grokloop.bank.edits import edit_eval
from grokloop.bank.evaluate import evaluate_bank
from grokloop.bank.options import ACTIONS, BankCommand
from reports.bank import edit_markdown, markdown


def run_action(cmd: BankCommand):
    """Dispatch on `action`, refusing the other actions' options."""
    if len(cmd.action) != 1 or cmd.action[0] not in ACTIONS:
        raise ValueError(
            f"{' '.join(cmd.action) or 'no action'}: say `python -m grokloop.bank "
            "build ...`, `... eval ...`, `... edit_eval ...` or "
            "`... add-entities ...`"
        )
    action = cmd.action[0]
    defaults = BankCommand()
    for key in sorted({k for keys in ACTIONS.values() for k in keys} - set(ACTIONS[action])):
        if getattr(cmd, key) != getattr(defaults, key):
            owners = " and ".join(f"`{a}`" for a, keys in ACTIONS.items() if key in keys)
            raise ValueError(f"{key}= is an option of {owners}, not of `{action}`")
    if action == "build":
        if not cmd.out:
            raise ValueError("out is required: pass out=DIR, the bank directory to write")
        if not 0 < cmd.keep_fraction <= 1:
            raise ValueError(
                f"keep_fraction={cmd.keep_fraction} must be in (0, 1]: the share of the facts kept"
            )
        return build(cmd)
    if action == "add-entities":
        return add_entities(cmd)
    if not cmd.run_dir:
        raise ValueError(
            "run_dir is required: pass run_dir=RUN, a run trained with "
            "model.memory=facts"
            + (" (or any run, with method=finetune)" if action == "edit_eval" else "")
        )
    if (
        action == "eval"
        and (
            cmd.method != "bank"
            or cmd.finetune_steps != defaults.finetune_steps
            or cmd.finetune_lr != defaults.finetune_lr
            or cmd.baselines
        )
        and not cmd.questions
    ):
        raise ValueError(
            "method=, finetune_steps=, finetune_lr= and baselines= of eval need "
            "questions=FILE (two-hop questions by name)"
        )
    if action == "eval" and cmd.questions:
        summary = evaluate_questions(cmd)
    else:
        summary = evaluate_bank(cmd) if action == "eval" else edit_eval(cmd)
    write_results(cmd, action, summary)
    return summary


def write_results(cmd: BankCommand, action: str, summary: dict) -> None:
    """summary.json and summary.md in `out` (default RUN/bank_eval/BANK or RUN/bank_edit/METHOD),
    and the rows on stdout."""
    if action == "eval":
        out = Path(
            cmd.out
            or Path(cmd.run_dir) / "bank_eval" / (Path(cmd.bank).name if cmd.bank else "own")
        )
        page = markdown(summary)
    else:
        out = Path(cmd.out or Path(cmd.run_dir) / "bank_edit" / cmd.method)
        page = edit_markdown(summary)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "summary.md", page)
    for r in summary["rows"]:
        what = (
            f"{r['split']}"
            + (f" hops {r['hops']}" if "hops" in r else "")
            + (
                f" {r['metric']}"
                if "hop" in r
                else f" retrieval@step{r['read_step']}"
                if "read_step" in r
                else ""
            )
        )
        print(
            f"{r['model']:<44} {what:<36} acc {r['acc']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] "
            f"n {r['n']}"
        )
    print(f"written to {out.resolve()}/summary.json and summary.md ({summary['seconds']:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    cli.run("bank", run_action, argv)


if __name__ == "__main__":
    from grokloop.bank.__main__ import main as imported_main

    imported_main()
