"""Typed configuration: dataclasses built from plain dicts (params.yaml sections).

Only the CLI reads params.yaml or composes conf/; stage code receives these objects.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from iotwatch.errors import ConfigError, InputError

T = TypeVar("T")


def from_dict(
    cls: type[T], data: dict[str, Any] | None, where: str = "", strict: bool = False
) -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types clearly.

    A key is missing when its field has no default; with ``strict`` (the composed configuration:
    params.yaml, profiles) every key must be given, nested ones included, so that no dataclass
    default ever fills in a value conf/ does not spell out. Fields marked
    ``metadata={"conf": False}`` are set by code, never read from a mapping (``"home"`` in the
    metadata names where the setting lives instead).
    """
    data = dict(data or {})
    where = where or cls.__name__
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name: f for f in fields if f.metadata.get("conf", True)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        homes = [
            f"{f.name} is set in {f.metadata['home']}"
            for f in fields
            if f.name in unknown and "home" in f.metadata
        ]
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; known: {sorted(names)}"
            + "".join(f"; {h}" for h in homes)
        )
    hints = typing.get_type_hints(cls)
    missing = [n for n, f in names.items() if n not in data and _required(f, hints[n], strict)]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}", strict)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def has_default(f: dataclasses.Field[Any]) -> bool:
    """Whether dataclass field ``f`` has a default (value or factory)."""
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _required(f: dataclasses.Field[Any], hint: Any, strict: bool) -> bool:
    """Whether key ``f.name`` must be given: always without a default; when strict, also with
    one, except for a ``Section | None = None`` field, a sub-mapping that may be left out (a
    device's ``camera:``, which only cameras have): leaving it out fills in no value."""
    if not has_default(f):
        return True
    if not strict:
        return False
    args = typing.get_args(hint)
    optional_section = (
        f.default is None
        and type(None) in args
        and any(dataclasses.is_dataclass(a) for a in args if a is not type(None))
    )
    return not optional_section


def _coerce(value: Any, hint: Any, where: str, strict: bool) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where, strict)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where, strict)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]", strict) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{where}.{k}", strict) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass to plain dict (paths as text), for logging."""
    out = dataclasses.asdict(obj)

    def fix(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [fix(x) for x in v]
        return v

    return fix(out)


def read_yaml_mapping(path: Path | str) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping, with a clear error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def read_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    """Read params.yaml (the composed configuration DVC tracks)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run `iotwatch params` to compose it from conf/")
    data = read_yaml_mapping(path)
    if not data:
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


# conf/ as shipped with the package: src/iotwatch/conf is a link to the repository's conf/ (the
# one place configuration is edited) and a wheel carries a copy of it as package data, so an
# installed iotwatch and a source checkout find their profiles the same way.
PACKAGE_CONF = Path(__file__).resolve().parent / "conf"


def _project_confs(start: Path | None) -> list[Path]:
    """conf/ folders of projects (a conf/config.yaml) at and above ``start`` (cwd), nearest first."""
    here = (start or Path.cwd()).resolve()
    return [d / "conf" for d in (here, *here.parents) if (d / "conf" / "config.yaml").is_file()]


def find_conf_dir(start: Path | None = None) -> Path:
    """The nearest project's conf/ (a conf/config.yaml at or above cwd), else the packaged one."""
    for conf in (*_project_confs(start), PACKAGE_CONF):
        if (conf / "config.yaml").is_file():
            return conf
    raise ConfigError(
        f"no conf/config.yaml found above {(start or Path.cwd()).resolve()} "
        f"nor in the package ({PACKAGE_CONF})"
    )


def find_profile(group: str, name_or_path: str | Path, start: Path | None = None) -> Path:
    """A profile of config group ``group``: a YAML file path, or a name looked up as
    ``conf/<group>/<name>.yaml`` in the nearest project's conf/, then in the packaged conf/."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise InputError(f"{path}: {group} profile file not found")
        return path
    if not text.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(
            f"{group} profile '{text}': expected a name like 'default' or a .yaml path"
        )
    folders = [*_project_confs(start), PACKAGE_CONF]
    for folder in folders:
        candidate = folder / group / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for f in folders for p in (f / group).glob("*.yaml")})
    raise ConfigError(
        f"{group} profile '{text}' not found in {', '.join(str(f) for f in folders)} "
        f"(known: {known})"
    )


def section(params: dict[str, Any], key: str, source: str = "params.yaml") -> dict[str, Any]:
    """Return ``params[key]`` as a dict, with a clear error when missing."""
    value = params.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: section '{key}' is missing or not a mapping")
    return value
