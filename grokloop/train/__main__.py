"""`python -m grokloop.train experiment=NAME [key=value ...] [resume=true]`: the training command.

Composes conf/train.yaml with the command line (grokloop/cli.py), trains (grokloop.train.train),
prints where the run got to, and writes its report (reports/), which is why this command, and not
the training library below it, imports the report writer.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grokloop import cli
from grokloop.config import TrainCommand
from grokloop.train import train
from reports import write_run_report


def names_stop(argv: list[str]) -> bool:
    """Whether the command line itself sets train.stop_at_grok (an experiment's choice may be
    replaced where the data lacks its split; the user's is checked and refused)."""
    return any(a.split("=", 1)[0].lstrip("+~") == "train.stop_at_grok" for a in argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)

    def _main(cmd: TrainCommand) -> None:  # conf/train.yaml composed, typed and checked
        out_dir = cmd.out_dir
        cfg = cmd.run_config()
        summary = train(cfg, out_dir, resume=cmd.resume, stop_named=names_stop(argv))
        final = {
            k: round(v, 4)
            for k, v in summary["final"].items()
            if k.startswith("acc/") and k.count("/") == 1
        }
        print(f"final {final}")
        print(
            f"steps to {cfg.train.grok_threshold}: {summary[f'steps_to_{cfg.train.grok_threshold}']}"
        )
        if cfg.train.report:
            write_run_report(out_dir)
        print(f"run directory: {Path(out_dir).resolve()}")

    cli.run("train", _main, argv)


if __name__ == "__main__":
    # Run the imported module, not __main__: a sweep launcher (joblib, submitit) then pickles the
    # training functions by reference instead of by value.
    from grokloop.train.__main__ import main as imported_main

    imported_main()
