"""Interactive, self-contained HTML reports: one per run (`python -m reports run_dir=RUN`) and one
comparing runs and sweeps (`python -m reports compare DIR...`). Figures are built from the files a
run writes (metrics.jsonl, summary.json, config.json, probes/); nothing is recomputed here."""
