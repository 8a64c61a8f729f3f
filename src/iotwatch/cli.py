"""The `iotwatch` command: a thin dispatcher; each command's module owns its own arguments.

Commands:
  flows CAPTURE... --out FILE.parquet [--profile NAME]   captures to a flow table
  synth --out DIR [--seed S] [--days D]                    generate the synthetic smart home
  params                                                   compose conf/ into params.yaml
  stage NAME                                               run one DVC stage from params.yaml
  run STAGE [-m] [hydra overrides]                         run stages from conf/ with Hydra (sweeps)
  tune [--device T] [--trials N] [--storage URL]           Optuna study per device type (shared DB)
  ui                                                       start the MLflow UI on 127.0.0.1
  monitor SOURCE|--interface IF --model BUNDLE             device types and alerts (docs/monitor.md)
  export [--out DIR]                                       write the model bundle the monitor loads
  watchset CAPTURE... --out FILE [--infect IP,MAC ...]     a watch capture with an infected device
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from iotwatch.errors import IotwatchError

# command -> module exposing ``main(argv: list[str]) -> int``; imported lazily so that
# `iotwatch flows` does not pay for torch or mlflow.
COMMANDS: dict[str, tuple[str, str]] = {
    "flows": ("iotwatch.flowmeter.cli", "captures to a bidirectional flow table (Parquet)"),
    "synth": ("iotwatch.synth.cli", "generate the synthetic smart-home captures"),
    "params": ("iotwatch.pipeline.params_cli", "compose conf/ into params.yaml"),
    "stage": ("iotwatch.pipeline.stages", "run one pipeline stage, configured by params.yaml"),
    "run": ("iotwatch.pipeline.hydra_app", "run stages from conf/ with Hydra (multirun sweeps)"),
    "tune": ("iotwatch.anomaly.tune", "Optuna search of each device type's autoencoder"),
    "ui": ("iotwatch.ui", "start the MLflow UI on 127.0.0.1"),
    "monitor": ("iotwatch.monitor.cli", "watch captures or an interface: device types and alerts"),
    "export": ("iotwatch.bundle", "write the model bundle `iotwatch monitor` loads"),
    "watchset": (
        "iotwatch.watchset",
        "build a watch capture: later days of a home, an attack host rewritten onto a device",
    ),
}


# Commands whose console-script run ends with ``os._exit`` once their output is flushed and
# closed: they hold no atexit work (no MLflow run, no Hydra job), and the interpreter's
# teardown of numba/LLVM and of the big arrays costs ~0.2 s, 10-15 % of metering a 2 M packet
# capture. Optional imports numba makes for features the flow meter does not use (scipy for
# ``np.linalg`` in compiled code, 0.15-0.3 s on the first compiled call; cffi, 0.06 s) are
# skipped in that process too.
LEAN_COMMANDS = frozenset({"flows"})
_NUMBA_OPTIONAL = ("scipy", "cffi")


def _usage() -> str:
    lines = ["usage: iotwatch COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`iotwatch COMMAND --help` shows a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `iotwatch` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from iotwatch import __version__

        print(f"iotwatch {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"iotwatch: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except IotwatchError as exc:
        print(f"iotwatch {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iotwatch {name}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script (and ``python -m iotwatch``): ``main``, then exit.

    For ``LEAN_COMMANDS`` the process is its own: numba's optional imports are blocked (a
    ``None`` in ``sys.modules`` makes them fail as if absent, which numba handles) and the
    process leaves with ``os._exit`` after flushing. Calling ``main`` in-process (tests, other
    code) does neither.
    """
    argv = sys.argv[1:]
    lean = bool(argv) and argv[0] in LEAN_COMMANDS
    if lean:
        for name in _NUMBA_OPTIONAL:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    rc = main(argv)
    if lean:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                rc = rc or 1
        os._exit(rc)
    sys.exit(rc)
