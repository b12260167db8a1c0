"""`grokloop COMMAND [key=value ...]`: every command of the lab behind one console script.

    grokloop train experiment=composition_small      # = python -m grokloop.train ...
    grokloop probes run_dir=RUN probe=logit_lens     # = python -m probes ...
    grokloop --help                                  # the commands

Each command is the `python -m` module named in grokloop.cli.COMMANDS, with the same options and
the same `--help`; this script only picks it by name.
"""

from __future__ import annotations

import importlib
import sys

from grokloop.cli import COMMANDS


def usage() -> str:
    width = max(map(len, COMMANDS)) + 2
    lines = [
        f"  {name.replace('_', '-'):<{width}}python -m {c.module}" for name, c in COMMANDS.items()
    ]
    return (
        "usage: grokloop COMMAND [key=value ...] [--help]\n\ncommands (each also runs as "
        "`python -m MODULE`):\n" + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = argv[0].replace("-", "_")
    if name not in COMMANDS:
        print(
            f"error: {argv[0]!r} is not a grokloop command; `grokloop --help` lists them",
            file=sys.stderr,
        )
        raise SystemExit(2)
    command = COMMANDS[name]
    module, _, function = (command.main or f"{command.module}.__main__:main").partition(":")
    sys.argv = [f"grokloop {argv[0]}", *argv[1:]]
    getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    main()
