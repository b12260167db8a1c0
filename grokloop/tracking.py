"""Experiment trackers: train.logger=tensorboard|wandb|mlflow also sends each evaluation's
metrics, the run's config and its code version to a tracker; none (the default) sends nothing.

    python -m grokloop.train ... train.logger=tensorboard     # RUN/tensorboard/ (--logdir RUN)
    WANDB_MODE=offline python -m grokloop.train ... train.logger=wandb   # RUN/wandb/; wandb sync
    python -m grokloop.train ... train.logger=mlflow   # RUN/mlruns/, or MLFLOW_TRACKING_URI

metrics.jsonl stays the record; a tracker gets the same rows (every number but `step`, at that
step). Each tracker is an optional extra (pip install 'grokloop[wandb]' etc.); naming one that
is not installed is an error before any work. A resumed run continues its tracker run: W&B and
MLflow runs are keyed by `run_id` (of the run directory and its config.json), TensorBoard
drops the events past the checkpoint the run resumes from (purge_step), and W&B plots against
the `step` metric, so rows logged again after a resume replace nothing and break no ordering.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_logger(name: str) -> None:
    """A ValueError naming the pip command if train.logger's package is not installed."""
    package = PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(
            f"train.logger={name} needs the {package} package, which is not "
            f"installed: pip install 'grokloop[{name}]' (or pip install {package})"
        )


def flat(d: dict, prefix: str = "") -> dict:
    """{"train": {"steps": 5}} -> {"train.steps": 5}, for trackers whose params are flat."""
    out = {}
    for k, v in d.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def scalars(row: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class TensorBoard:
    def __init__(self, out_dir: Path, config: dict, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # On a resume, events past the checkpoint (logged before the stop) are dropped.
        self.writer = SummaryWriter(
            str(out_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )
        if not start_step:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
            self.writer.add_text("code_version", str(config.get("code_version")))

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()  # a batch job's tracker is current at every evaluation

    def close(self, failed: bool) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out_dir: Path, config: dict, start_step: int):
        import wandb

        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "grokloop"),
                id=config["run_id"],
                resume="allow",
                name=f"{config.get('experiment')}/{out_dir.name}",
                group=config.get("experiment"),
                dir=os.environ.get("WANDB_DIR", str(out_dir)),
                config=config,
                settings=wandb.Settings(console="off"),
            )
        except Exception as e:  # no login, no network: say how to run without them
            raise RuntimeError(
                f"train.logger=wandb could not start a W&B run ({e}); log in "
                "(wandb login) or set WANDB_MODE=offline to write RUN/wandb/ and "
                "`wandb sync` it later"
            ) from None
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")

    def log(self, row: dict) -> None:
        self.run.log({"step": row["step"]} | scalars(row))

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MLflow:
    def __init__(self, out_dir: Path, config: dict, start_step: int):
        import mlflow

        self.mlflow = mlflow
        if "MLFLOW_TRACKING_URI" not in os.environ:
            # A folder beside the run, no server or database: MLflow 3 keeps its file store
            # behind this switch (a database needs sqlalchemy, which mlflow-skinny lacks).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((out_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", config.get("experiment")))
        tag = "grokloop.run_id"
        found = mlflow.search_runs(
            filter_string=f"tags.`{tag}` = '{config['run_id']}'", output_format="list"
        )
        if found:  # a resume: the same MLflow run (params are immutable, logged once)
            mlflow.start_run(run_id=found[0].info.run_id)
        else:
            mlflow.start_run(
                run_name=f"{config.get('experiment')}/{out_dir.name}",
                tags={tag: config["run_id"], "code_version": str(config.get("code_version"))},
            )
            mlflow.log_params({k: str(v)[:500] for k, v in flat(config).items()})

    def log(self, row: dict) -> None:
        # MLflow allows letters, digits and _ - . space : / in a metric's name
        self.mlflow.log_metrics(
            {re.sub(r"[^\w\-. :/]", "_", k): v for k, v in scalars(row).items()}, step=row["step"]
        )

    def close(self, failed: bool) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class NoTracker:
    def log(self, row: dict) -> None:
        pass

    def close(self, failed: bool) -> None:
        pass


def run_id(out_dir: Path) -> str:
    """The run's id in a tracker: the same for every process that trains the run (config.json
    is written once, when it starts), another for another run or run directory."""
    text = f"{out_dir.resolve()}\n{(out_dir / 'config.json').read_text()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_tracker(name: str, out_dir: Path, start_step: int):
    """The tracker train.logger names, opened for the run in out_dir, continuing after
    `start_step`; it records config.json (the config, code version and dataset hash)."""
    kinds = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
    if name not in kinds:
        return NoTracker()
    config = json.loads((out_dir / "config.json").read_text()) | {"run_id": run_id(out_dir)}
    return kinds[name](out_dir, config, start_step)
