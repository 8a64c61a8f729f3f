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
