"""Typed config: validation errors are clear ConfigErrors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from iotwatch.config import from_dict, read_params, to_dict
from iotwatch.errors import ConfigError


@dataclass
class Inner:
    rate: float = 1.0
    name: str = "x"


@dataclass
class Outer:
    n: int = 3
    mode: Literal["a", "b"] = "a"
    path: Path = Path("p")
    opt: Path | None = None
    items: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    table: dict[str, Inner] = field(default_factory=dict)


def test_builds_nested_and_coerces() -> None:
    cfg = from_dict(
        Outer,
        {
            "n": 5,
            "mode": "b",
            "path": "a/b",
            "items": [1, 2],
            "inner": {"rate": 2},
            "table": {"k": {"name": "y"}},
        },  # fmt: skip
    )
    assert cfg.n == 5 and cfg.mode == "b" and cfg.path == Path("a/b")
    assert cfg.inner.rate == 2.0 and isinstance(cfg.inner.rate, float)
    assert cfg.table["k"].name == "y" and cfg.opt is None
    assert to_dict(cfg)["path"] == "a/b"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"nn": 1}, "unknown key(s) ['nn']"),
        ({"n": "three"}, "Outer.n: expected an integer"),
        ({"n": True}, "Outer.n: expected an integer"),
        ({"mode": "c"}, "Outer.mode: 'c' is not one of ['a', 'b']"),
        ({"items": 3}, "Outer.items: expected a list"),
        ({"inner": {"rate": "fast"}}, "Outer.inner.rate"),
        ({"inner": {"speed": 1}}, "Outer.inner: unknown key(s) ['speed']"),
    ],
)
def test_bad_values_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Outer, data)
    assert needle in str(exc.value)


def test_read_params_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_params(scalar)


@dataclass
class Required:
    n: int
    inner: Inner
    camera: Inner | None = None  # an optional section: may be left out even when strict


def test_missing_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"Required: missing key\(s\) \['n', 'inner'\]"):
        from_dict(Required, {})
    cfg = from_dict(Required, {"n": 1, "inner": {}})  # not strict: Inner's defaults fill in
    assert cfg.inner == Inner() and cfg.camera is None


def test_strict_requires_every_key_nested_too() -> None:
    with pytest.raises(
        ConfigError, match=r"p\.yaml: x\.inner: missing key\(s\) \['rate', 'name'\]"
    ):
        from_dict(Required, {"n": 1, "inner": {}}, "p.yaml: x", strict=True)
    with pytest.raises(ConfigError, match=r"Outer: missing key\(s\) \['mode', 'path'"):
        from_dict(Outer, {"n": 1}, strict=True)
    cfg = from_dict(Required, {"n": 1, "inner": {"rate": 2, "name": "y"}}, strict=True)
    assert cfg.camera is None
    with pytest.raises(ConfigError, match=r"x\.camera: missing key\(s\) \['name'\]"):
        from_dict(
            Required,
            {"n": 1, "inner": {"rate": 2, "name": "y"}, "camera": {"rate": 1}},
            "x",
            strict=True,
        )


@dataclass
class WithRuntime:
    n: int
    nets: list[str] = field(default_factory=list, metadata={"conf": False})


def test_runtime_fields_are_not_keys() -> None:
    assert from_dict(WithRuntime, {"n": 1}, strict=True).nets == []
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['nets'\]"):
        from_dict(WithRuntime, {"n": 1, "nets": []})
