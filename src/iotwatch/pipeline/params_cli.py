"""`iotwatch params [OVERRIDE...]`: compose conf/ into params.yaml, exactly as `dvc exp run -S` does.

Your choices live in conf/ too, so that every composition finds them: `iotwatch params
dataset=mine seed=7` writes ``conf/choices.yaml`` (a primary config: ``config`` plus your group
choices and values) and composes it. DVC composes the same file (``.dvc/config``:
``hydra.config_name = choices``), so `dvc exp run -S classify.models.knn.params.n_neighbors=9`
keeps your dataset instead of silently going back to conf/'s default, and `iotwatch run`
sweeps start from it too. Later calls add to the choices (a key given again replaces its
value); ``--reset`` goes back to conf/'s defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from iotwatch.config import find_conf_dir
from iotwatch.errors import ConfigError

CHOICES = "choices"  # conf/choices.yaml: the primary config DVC and `iotwatch run` compose
_HEADER = "# overrides: "  # the line of conf/choices.yaml listing the overrides it holds


def primary_config(conf_dir: Path) -> str:
    """The config name to compose: ``choices`` where conf/choices.yaml exists, else ``config``."""
    return CHOICES if (conf_dir / f"{CHOICES}.yaml").is_file() else "config"


def _compose(conf: Path, name: str, overrides: list[str], resolve: bool = True) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    # Same calls as dvc.utils.hydra.compose_and_dump (version_base=None included), so that
    # `iotwatch params` and `dvc exp run -S` write byte-identical params.yaml files.
    try:
        with initialize_config_dir(str(conf), version_base=None):
            cfg = compose(config_name=name, overrides=overrides)
        if resolve:
            OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{conf}: cannot compose configuration: {first}") from None
    return cfg


def compose_params(overrides: list[str], conf_dir: Path | None = None) -> str:
    """Compose conf/ (with the saved choices) and Hydra overrides; return params.yaml's text."""
    from omegaconf import OmegaConf

    conf = (conf_dir or find_conf_dir()).resolve()
    return OmegaConf.to_yaml(_compose(conf, primary_config(conf), overrides))


def saved_overrides(conf: Path) -> list[str]:
    """The overrides conf/choices.yaml holds ([] without the file)."""
    path = conf / f"{CHOICES}.yaml"
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(_HEADER):
            try:
                value = json.loads(line[len(_HEADER) :])
            except json.JSONDecodeError:
                break
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
            break
    raise ConfigError(
        f"{path}: no valid '{_HEADER.strip()} [...]' line (written by iotwatch params)"
    )


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"bad override: {str(exc).splitlines()[0]}") from None


def merge_overrides(saved: list[str], new: list[str]) -> list[str]:
    """``saved`` then ``new``, one entry per key (a key given again keeps its last value, in
    the place it was first given)."""
    out: dict[str, str] = {}
    for ov, text in zip(_parse(saved + new), saved + new, strict=True):
        out[ov.get_key_element()] = text
    return list(out.values())


def choices_text(conf: Path, overrides: list[str]) -> str:
    """conf/choices.yaml for ``overrides``: group choices as ``override`` entries of the
    defaults list after ``config``, values (as composed, interpolations kept) under _self_."""
    from omegaconf import OmegaConf

    composed = _compose(conf, "config", overrides, resolve=False)
    defaults: list[Any] = ["config"]
    values: dict[str, Any] = {}
    for ov in _parse(overrides):
        key = ov.key_or_group
        if ov.is_sweep_override():
            raise ConfigError(f"override {ov.input_line!r}: sweeps belong to `iotwatch run -m`")
        if ov.is_delete() or ov.package is not None:
            raise ConfigError(f"override {ov.input_line!r}: only key=value and group=option")
        if (conf / key).is_dir():
            defaults.append({f"override {key}": ov.value()})
            continue
        node: dict[str, Any] = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = OmegaConf.select(composed, key)
        node[leaf] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    defaults.append("_self_")
    body = yaml.safe_dump({"defaults": defaults, **values}, sort_keys=False)
    return (
        "# Your choices on top of config.yaml, written by `iotwatch params` (edit with it, or by\n"
        "# hand keeping the next line in step). DVC composes this file (.dvc/config\n"
        "# hydra.config_name), so `dvc exp run -S ...` keeps them; `iotwatch params --reset`.\n"
        f"{_HEADER}{json.dumps(overrides)}\n{body}"
    )


def save_choices(conf: Path, overrides: list[str]) -> Path:
    """Write conf/choices.yaml for ``overrides`` and check it composes to the same
    configuration as conf/config.yaml with those overrides on the command line."""
    from omegaconf import OmegaConf

    path = conf / f"{CHOICES}.yaml"
    text = choices_text(conf, overrides)
    expected = OmegaConf.to_yaml(_compose(conf, "config", overrides))
    old = path.read_text(encoding="utf-8") if path.is_file() else None
    path.write_text(text, encoding="utf-8")
    if OmegaConf.to_yaml(_compose(conf, CHOICES, [])) != expected:
        if old is None:
            path.unlink()
        else:
            path.write_text(old, encoding="utf-8")
        raise ConfigError(f"{path}: cannot keep the overrides {overrides} as choices")
    return path


def main(argv: list[str]) -> int:
    """Entry point of `iotwatch params`."""
    parser = argparse.ArgumentParser(
        prog="iotwatch params",
        description="Compose conf/ (Hydra) into params.yaml, the file DVC stages read; the "
        "overrides are kept in conf/choices.yaml, which `dvc exp run` composes too.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=iot_sentinel")
    parser.add_argument("--out", type=Path, default=Path("params.yaml"))
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is out of date")
    parser.add_argument(
        "--reset", action="store_true", help="forget the saved choices (conf/'s defaults)"
    )
    args = parser.parse_args(argv)
    conf = find_conf_dir().resolve()
    if args.check:
        text = compose_params(args.overrides, conf)
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date with conf/: run `iotwatch params`")
            return 1
        print(f"{args.out} matches conf/")
        return 0
    chosen = merge_overrides([] if args.reset else saved_overrides(conf), args.overrides)
    save_choices(conf, chosen)
    text = compose_params([], conf)
    args.out.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.out}"
        + (f" (choices in conf/{CHOICES}.yaml: {' '.join(chosen)})" if chosen else "")
    )
    return 0
