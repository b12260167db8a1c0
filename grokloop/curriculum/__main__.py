"""`python -m grokloop.curriculum curriculum=NAME [key=value ...]`: run a curriculum, measure
each stage's embedding spectra (probes/fourier.py) and write its report (reports/curriculum.py)."""

from __future__ import annotations

from pathlib import Path

from grokloop import cli
from grokloop.curriculum import CurriculumCommand, checked, run_curriculum
from probes.fourier import stage_spectra
from reports.curriculum import write_curriculum_report


def main(argv: list[str] | None = None) -> None:
    def _main(cmd: CurriculumCommand) -> None:
        out_dir = Path(cmd.out_dir)
        summary = run_curriculum(checked(cmd), out_dir, resume=cmd.resume, spectra=stage_spectra)
        for st in summary["per_stage"]:
            print(
                f"  {st['stage']:>10}: {'gate' if st['passed'] else 'budget'} at {st['steps']} "
                f"of {st['budget']} steps"
            )
        if "ACC" in summary:
            print(f"ACC {summary['ACC']:.3f}  BWT {summary['BWT']:+.3f}  FWT {summary['FWT']:+.3f}")
        if cmd.train.report:
            print(f"report: {write_curriculum_report(out_dir)}")
        print(f"curriculum directory: {out_dir.resolve()}")

    cli.run("curriculum", _main, argv)


if __name__ == "__main__":
    from grokloop.curriculum.__main__ import main as imported_main

    imported_main()
