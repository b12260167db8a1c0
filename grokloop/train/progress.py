"""How a run shows its progress: a tqdm bar on a terminal, a line per evaluation anywhere else.

A bar redraws one line with carriage returns, which a log file (SLURM's, `> run.log`) stores as
one ever-growing line; so the bar is drawn only when stdout and stderr are both terminals and
train.progress=true. Otherwise each evaluation prints one flushed line to stdout:

    step 1200/10000  loss 0.0412  test 0.873 train 1.000 atomic 1.000  41.3 steps/s  ETA 3m33s

(steps/s over this process's steps, evaluations included; with train.stop_at_grok the ETA is
the most the budget can take, `ETA <= ...`).
"""

from __future__ import annotations

import sys
import time


def on_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def _duration(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}h{s // 60 % 60:02d}m"
        if s >= 3600
        else f"{s // 60}m{s % 60:02d}s"
        if s >= 60
        else f"{s}s"
    )


class Progress:
    def __init__(self, start: int, total: int, splits: list[str], bar: bool, stops_at_grok: bool):
        self.start, self.total, self.splits = start, total, splits[:3]
        self.stops_at_grok = stops_at_grok
        self.t0 = time.perf_counter()
        self.bar = None
        if bar and on_terminal():
            from tqdm import tqdm

            # A run that stops at grok ends at an unknown step: no ETA for the full budget.
            fmt = (
                "{n_fmt}/{total_fmt} steps (stops at grok) [{elapsed}, {rate_fmt}{postfix}]"
                if stops_at_grok
                else None
            )
            self.bar = tqdm(
                total=total, initial=start, dynamic_ncols=True, mininterval=1.0, bar_format=fmt
            )

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def evaluation(self, row: dict) -> None:
        heads = {s: row[f"acc/{s}"] for s in self.splits if f"acc/{s}" in row}
        if self.bar is not None:
            self.bar.set_postfix(
                {"loss": f"{row['loss/train']:.3g}"} | {s: f"{v:.3f}" for s, v in heads.items()}
            )
            return
        print(self.line(row["step"], row["loss/train"], heads), flush=True)

    def line(self, step: int, loss: float, heads: dict[str, float]) -> str:
        rate = (step - self.start) / max(time.perf_counter() - self.t0, 1e-9)
        eta = ""
        if rate > 0 and step < self.total:
            eta = (
                f"  ETA {'<= ' if self.stops_at_grok else ''}"
                f"{_duration((self.total - step) / rate)}"
            )
        accs = " ".join(f"{s} {v:.3f}" for s, v in heads.items())
        return f"step {step}/{self.total}  loss {loss:.4g}  {accs}  {rate:.1f} steps/s{eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
