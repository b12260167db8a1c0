"""`python -m grokloop.adaptive_summary RUN [RUN ...] [out=DIR]`: the documented command, kept as
an alias of reports/adaptive.py, where the adaptive-thinking report lives (default output
runs/adaptive_summary)."""
from reports.adaptive import main

if __name__ == "__main__":
    main()
