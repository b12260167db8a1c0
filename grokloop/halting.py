"""`python -m grokloop.halting run_dir=RUN [bank=DIR] ...`: the documented command, kept as an
alias of grokloop/adaptive/halting.py, where the halting code lives (see grokloop/adaptive/)."""

from grokloop.adaptive.halting import main

if __name__ == "__main__":
    main()
