"""One command-line grammar for every entry point: Hydra overrides typed by a dataclass schema.

Each command has a primary config conf/NAME.yaml whose defaults list starts with NAME_schema, the
dataclass named in COMMANDS; the data presets extend their task's dataclass (base_TASK). So
OmegaConf rejects a wrongly typed or unknown key while composing, before the command runs, and
`--help` shows every option with its default. `run` is the one wrapper around `hydra.main`:

    def main(argv=None):
        cli.run("probes", run_probes, argv)   # run_probes(ProbesCommand) does the work

`task` receives the typed config (an instance of the schema class, built by OmegaConf.to_object).
A config error (bad type, unknown key, invalid value, missing required key, a path that is not a
run) prints one line `error: ...` to stderr and exits with status 2, before anything is written;
so does every failure at run time, with the status of grokloop/failure.py (a NaN, a locked or
damaged run, a full disk, Ctrl-C, SIGTERM). GROKLOOP_DEBUG=1 (or HYDRA_FULL_ERROR=1) shows the
traceback instead. Tests compose the same configs with `compose`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import signal
import sys
import threading
import typing
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from grokloop.failure import debug_wanted, describe_failure, format_warning, raise_terminated


def conf_dir() -> Path:
    """The Hydra tree: grokloop/conf in an installed package (pyproject.toml maps conf/ there),
    else conf/ beside the package in a checkout (an editable install or `python -m` from it)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no Hydra config tree at {here / 'conf'} or {here.parent / 'conf'}; "
        "reinstall grokloop (pip install .)"
    )


CONF = str(conf_dir())


@dataclass(frozen=True)
class Command:
    module: str  # python -m MODULE
    schema: str  # "module:Class", imported only when the command runs
    rest: str | None = None  # positional words on the command line become this list option
    verb: str | None = None  # ... after this first word (python -m reports compare DIR ...)
    main: str | None = None  # "module:function" run by `grokloop NAME`; None: MODULE.__main__:main


# By primary config name, conf/NAME.yaml; `grokloop NAME` (dashes for underscores) runs the same
# command as `python -m MODULE`. grokloop.halting is an alias of grokloop.adaptive.halting.
COMMANDS = {
    "train": Command("grokloop.train", "grokloop.config:TrainCommand"),
    "datagen": Command("datagen", "datagen.__main__:DatagenCommand"),
    "probes": Command("probes", "probes.__main__:ProbesCommand"),
    "halting": Command(
        "grokloop.halting",
        "grokloop.adaptive.halting:HaltingCommand",
        main="grokloop.adaptive.halting:main",
    ),
    "reports": Command(
        "reports", "reports.__main__:ReportsCommand", rest="compare", verb="compare"
    ),
    "study": Command(
        "reports.study", "reports.study:StudyCommand", rest="runs", main="reports.study:main"
    ),
    "curriculum": Command("grokloop.curriculum", "grokloop.curriculum:CurriculumCommand"),
    "curriculum_study": Command(
        "reports.curriculum",
        "reports.curriculum:CurriculumStudyCommand",
        rest="runs",
        main="reports.curriculum:main",
    ),
    "baselines": Command(
        "grokloop.baselines", "grokloop.baselines.__main__:BaselinesCommand", verb="lookup"
    ),
    "adaptive_summary": Command(
        "reports.adaptive",
        "reports.adaptive:SummaryCommand",
        rest="runs",
        main="reports.adaptive:main",
    ),
    "bank": Command("grokloop.bank", "grokloop.bank:BankCommand", rest="action"),
    "phi_law": Command(
        "reports.phi_law", "reports.phi_law:PhiLawCommand", rest="runs", main="reports.phi_law:main"
    ),
    "paper": Command("reports.paper", "reports.paper:PaperCommand", main="reports.paper:main"),
    "new_entities": Command(
        "reports.new_entities",
        "reports.new_entities:NewEntitiesCommand",
        rest="summaries",
        main="reports.new_entities:main",
    ),
}
# Hydra's own flags that take the next word as their value (not a positional argument).
_FLAG_VALUES = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}
_INFO = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


class UsageError(SystemExit):
    """Exit with `status` (2: a usage error) with the message already printed; str() is the
    message (for tests)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(status)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str, status: int = 2) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise UsageError(message, status)


def schema(name: str) -> type:
    module, cls = COMMANDS[name].schema.split(":")
    return getattr(importlib.import_module(module), cls)


def register(name: str) -> None:
    """Store the data task schemas and command `name`'s schema in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from datagen.config import DATA_CONFIGS

    store = ConfigStore.instance()
    for task, cls in DATA_CONFIGS.items():
        store.store(group="data", name=f"base_{task}", node=cls)
    store.store(name=f"{name}_schema", node=schema(name))


def compose(name: str, overrides: list[str] = ()):
    """The config `python -m ... overrides` would run with (Hydra's compose API), unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register(name)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=list(overrides))


def compose_run(*overrides: str):
    """The RunConfig that `python -m grokloop.train OVERRIDES` trains, typed and checked: for
    notebooks and tests, e.g. compose_run("experiment=default", "train.steps=300")."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose("train", list(overrides))).run_config()


def overrides(name: str, argv: list[str]) -> list[str]:
    """Command `name`'s command line as Hydra overrides. Everything is Hydra's own grammar (a list
    is `key=[a,b]`; `key=a,b` is a sweep, which only --multirun runs), plus two shorthands that
    Hydra would refuse, so they cannot change what a valid command means: a list option given
    one plain value is a list of one (`probe=logit_lens`), and positional words become the list
    option `rest` (after the word `verb`, if the command has one): `python -m reports compare
    DIR DIR` is `compare=[DIR,DIR]`."""
    cls, rest, verb = schema(name), COMMANDS[name].rest, COMMANDS[name].verb
    hints = typing.get_type_hints(cls)
    lists = {f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is list}
    out, bare, after_flag = [], [], False
    for a in argv:
        if after_flag or a.startswith(("-", "~")) or "=" in a:
            key, _, value = a.partition("=")
            if (
                key.lstrip("+") in lists
                and value
                and value[0] not in "['\""
                and "," not in value
                and not after_flag
            ):
                a = f"{key}=[{value}]"
            out.append(a)
            after_flag = a in _FLAG_VALUES
        elif out and out[-1] in ("--info", "-i") and a in _INFO:
            out.append(a)
        else:
            bare.append(a)
    if bare and verb is not None:
        if bare[0] != verb:
            fail(f"{bare[0]!r}: options are key=value (or `{verb} ...`); see --help")
        bare = bare[1:]
    if bare and rest is None:
        fail(f"{bare[0]!r}: options are key=value; see --help")
    if bare:
        quoted = ",".join("'" + b.replace("\\", "\\\\").replace("'", "\\'") + "'" for b in bare)
        out.append(f"{rest}=[{quoted}]")
    return out


def describe(e: BaseException, name: str) -> str:
    """One line naming the key and the fix, from a Hydra or OmegaConf error."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        MissingMandatoryValue,
        OmegaConfBaseException,
        ValidationError,
    )

    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    key = getattr(cause, "full_key", None)
    if isinstance(e, MissingConfigException) and e.options is not None:
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        return f"{group}={option}: no such config; choose one of {', '.join(sorted(e.options))}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        if owners := _data_tasks_with(key):  # e.g. data.path with data=composition_paper
            return (
                f"{key}: not an option of this data preset; it is one of data="
                f"{' or '.join(owners)}: add data={owners[0]} (or choose a preset of that task)"
            )
        near = _near(key, cause.parent_node)
        return (
            f"{key}: unknown option; "
            + (f"did you mean {near}? " if near else "")
            + f"`python -m {COMMANDS[name].module} --help` lists the options"
        )
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} is required: pass {key}=..."
    if isinstance(cause, ValidationError) and key:
        meta = getattr(cause.child_node, "_metadata", None)  # the schema's type for this key
        want = ""
        if meta is not None and meta.ref_type is not typing.Any:
            want = f"; {key} takes {getattr(meta.ref_type, '__name__', meta.ref_type)}" + (
                " or null" if meta.optional else ""
            )
        return f"{key}={cause.value}: {str(cause.msg).splitlines()[0]}{want}"
    return " ".join(str(e).split())  # e.g. an override that does not parse


def _data_tasks_with(key: str) -> list[str]:
    """The data tasks whose config has the field `key` names (data.FIELD), for an unknown key
    that belongs to another task's preset."""
    from datagen.config import DATA_CONFIGS

    section, _, leaf = key.rpartition(".")
    if section != "data":
        return []
    return [
        task
        for task, cls in DATA_CONFIGS.items()
        if leaf in {f.name for f in dataclasses.fields(cls)}
    ]


def _near(key: str, parent) -> str | None:
    """The known key closest to a misspelt one, looking one level down too (n_entities ->
    data.n_entities)."""
    from omegaconf import OmegaConf

    if parent is None:
        return None
    prefix, _, leaf = key.rpartition(".")
    known = {}
    for k, v in OmegaConf.to_container(parent, resolve=False).items():
        full = f"{prefix}.{k}" if prefix else str(k)
        known.setdefault(str(k), full)
        for kk in v if isinstance(v, dict) else ():
            known.setdefault(str(kk), f"{full}.{kk}")
    near = difflib.get_close_matches(leaf, list(known), n=1, cutoff=0.75)
    return known[near[0]] if near else None


def announce_sweep_job(argv: list[str], cfg=None) -> None:
    """In a --multirun sweep, print `sweep job k of N: <what this job sets>` as each job starts
    (Hydra's own launcher log is off). N is the grid's size: the sweep config's keys
    (conf/sweep/NAME.yaml), each overridden by the command line's value for it (a single value
    is one job, as Hydra's sweeper runs it), times the command line's other sweeps."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return
    parser = OverridesParser.create()
    swept = [f"{k}={v}" for k, v in (hc.sweeper.get("params") or {}).items()]
    swept += [a for a in argv if "=" in a and not a.startswith(("hydra.", "hydra/", "-"))]
    sizes = {}
    for text in swept:  # later wins, as in Hydra's BasicSweeper
        o = parser.parse_override(text)
        sizes[o.get_key_element()] = len(list(o.sweep_iterator())) if o.is_sweep_override() else 1
    _check_swept_names(sizes, hc, cfg)
    total = 1
    for n in sizes.values():
        total *= n
    print(
        f"sweep job {hc.job.num + 1} of {total}: {hc.job.override_dirname or 'defaults'}",
        flush=True,
    )


def _check_swept_names(sizes: dict[str, int], hc, cfg) -> None:
    """A key left out of a job's directory name (hydra.job.config.override_dirname.exclude_keys:
    train.steps, so that a sweep is extended with train.steps=N resume=true) cannot be swept
    where out_dir is named by override_dirname: its jobs would share one directory."""
    from omegaconf import OmegaConf

    if cfg is None or "out_dir" not in cfg:
        return
    out_dir = str(OmegaConf.to_container(cfg, resolve=False)["out_dir"])
    excluded = set(hc.job.config.override_dirname.exclude_keys or ())
    for key in sorted(k for k, n in sizes.items() if n > 1 and k in excluded):
        if "override_dirname" in out_dir and key not in out_dir:  # ${experiment}/... names it
            fail(
                f"{key} cannot be swept here: a job's directory (out_dir={out_dir}) is named "
                f"without it, so the jobs would share one; sweep it with an out_dir that names "
                f"it (out_dir=...{key.rpartition('.')[2]}${{{key}}})"
            )


def run(name: str, task: Callable[[typing.Any], None], argv: list[str] | None = None) -> None:
    """Compose conf/NAME.yaml with the command line and hand `task` the command's typed config:
    an instance of its schema class (COMMANDS[name].schema), built by OmegaConf.to_object, so
    every __post_init__ check has run. Every failure ends as one line `error: ...` on stderr: a
    config error, or a ValueError, FileNotFoundError, FileExistsError or SystemExit(message)
    that `task` raises for a value it cannot use, with exit status 2; any other exception,
    Ctrl-C and SIGTERM with the status and line of grokloop/failure.py. GROKLOOP_DEBUG=1 (or
    HYDRA_FULL_ERROR=1) shows the traceback instead. Warnings print as one line each."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    traceback_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1" or debug_wanted()
    config_errors = (HydraException, OmegaConfBaseException)

    def report(e: BaseException) -> typing.NoReturn:
        if isinstance(e, UsageError) or traceback_wanted:
            raise e
        if isinstance(e, SystemExit):
            if not isinstance(e.code, str):
                raise e
            fail(" ".join(e.code.split()))
        if isinstance(e, config_errors):
            fail(describe(e, name))
        fail(*describe_failure(e))

    argv = overrides(name, sys.argv[1:] if argv is None else list(argv))
    register(name)

    @hydra.main(config_path=CONF, config_name=name, version_base="1.3")
    def _main(cfg) -> None:
        announce_sweep_job(argv, cfg)
        # Caught here, inside the job, or Hydra adds a line of its own before re-raising.
        try:
            task(OmegaConf.to_object(cfg))
        except BaseException as e:
            report(e)

    # Hydra prints its own multi-line report of a composition error unless HYDRA_FULL_ERROR is
    # set; we set it to receive the exception and print one line (unless the user set it).
    saved = sys.argv, os.environ.get("HYDRA_FULL_ERROR"), warnings.formatwarning
    sys.argv = [sys.argv[0], *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if not traceback_wanted:
        warnings.formatwarning = format_warning
    with _sigterm_raises():
        try:
            _main()
        except UsageError:
            raise
        except BaseException as e:  # composition errors, Ctrl-C or SIGTERM outside the task
            report(e)
        finally:
            sys.argv, warnings.formatwarning = saved[0], saved[2]
            if saved[1] is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = saved[1]


@contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated while a command runs, so it ends like Ctrl-C: its `finally`
    blocks run (a run lock is released) and it prints one line, where the default would end the
    process silently. Only the main thread may set a handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
