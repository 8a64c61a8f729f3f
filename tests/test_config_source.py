"""conf/ is the only source of configuration values.

Every profile of every group is composed as `iotwatch params` composes it and every typed
section is built strictly: a key conf/ does not spell out (that a dataclass default would fill
in) or a key no dataclass knows fails here. Dataclass defaults that remain (for library callers,
e.g. ``FlowConfig()``) must equal conf/'s default values. Profiles are found through the
packaged conf/, which in a checkout is a link to conf/ (the one edited copy).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tomllib
import typing
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from iotwatch.config import (
    PACKAGE_CONF,
    find_conf_dir,
    find_profile,
    from_dict,
    has_default,
    read_yaml_mapping,
)
from iotwatch.errors import ConfigError
from iotwatch.pipeline.params_cli import compose_params
from iotwatch.pipeline.stages import STAGES, params_from_dict

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_KEYS = {"seed", "tracking", "paths", "dataset"}  # typed by params_from_dict


def _groups() -> list[str]:
    """Config groups of conf/config.yaml's defaults list (experiment included)."""
    out = []
    for item in read_yaml_mapping(CONF / "config.yaml")["defaults"]:
        if isinstance(item, dict):
            out.extend(item)
    return out


def _compositions() -> list[list[str]]:
    """The default composition, then each profile of each group selected on its own."""
    out: list[list[str]] = [[]]
    for group in _groups():
        for path in sorted((CONF / group).glob("*.yaml")):
            out.append([f"{group}={path.stem}"])
    return out


def _composed(overrides: list[str]) -> dict[str, Any]:
    return yaml.safe_load(compose_params(overrides, CONF))


def _stage_sections() -> dict[str, type]:
    out = {}
    for stage in STAGES.values():
        cls = stage.config_class()
        if cls is None or not stage.section:
            continue
        if isinstance(stage.section, str):
            out[stage.section] = cls
        else:  # a composite of several sections: one field (its class) per section
            hints = typing.get_type_hints(cls)
            out.update({name: hints[name] for name in stage.section})
    return out


@pytest.mark.parametrize("overrides", _compositions(), ids=lambda o: " ".join(o) or "default")
def test_every_composition_builds_strictly(overrides: list[str]) -> None:
    data = _composed(overrides)
    where = f"conf/ {' '.join(overrides) or '(default)'}"
    params = params_from_dict(data, where)  # seed, tracking, paths, dataset: strict
    sections = _stage_sections()
    unread = sorted(set(data) - SHARED_KEYS - set(sections))
    assert not unread, f"{where}: section(s) {unread} typed by no stage (a setting nobody reads)"
    for name, cls in sections.items():
        assert name in data, f"{where}: no '{name}' section for its stage"
        params.typed(name, cls)


def _walk(obj: Any, where: str) -> typing.Iterator[tuple[str, Any]]:
    """(where, dataclass instance) for each dataclass met outside lists and mappings: the ones
    whose defaults stand for a single conf/ value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield where, obj
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{where}.{f.name}")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def test_remaining_defaults_equal_conf_defaults() -> None:
    """A default kept for library callers (``FlowConfig()``) is conf/'s default value, field by
    field; any dataclass default that differs from the default composition fails here."""
    data = _composed([])
    params = params_from_dict(data)
    objects = [("tracking", params.tracking), ("paths", params.paths), ("dataset", params.dataset)]
    objects += [(name, params.typed(name, cls)) for name, cls in _stage_sections().items()]
    checked, wrong = 0, []
    for section, root in objects:
        for where, obj in _walk(root, section):
            for f in dataclasses.fields(obj):
                if not has_default(f) or not f.metadata.get("conf", True):
                    continue
                if f.default is None and getattr(obj, f.name) is None:
                    continue  # an optional section left out
                checked += 1
                default, value = _default(f), getattr(obj, f.name)
                if dataclasses.is_dataclass(default):
                    default, value = dataclasses.asdict(default), dataclasses.asdict(value)
                if default != value:
                    wrong.append(f"{where}.{f.name}: default {default!r}, conf/ {value!r}")
    assert not wrong, "dataclass defaults differ from conf/:\n" + "\n".join(wrong)
    assert checked > 0


def test_flow_config_default_is_the_default_profile() -> None:
    from iotwatch.flowmeter.config import FlowConfig, load_profile

    assert FlowConfig() == load_profile("default")


@pytest.mark.parametrize("path", sorted((CONF / "flows").glob("*.yaml")), ids=lambda p: p.stem)
def test_flow_profiles_load_strictly(path: Path) -> None:
    from iotwatch.flowmeter.config import load_profile

    load_profile(path.stem)  # strict: a key left out is an error


@pytest.mark.parametrize("path", sorted((CONF / "synth").glob("*.yaml")), ids=lambda p: p.stem)
def test_synth_profiles_spell_out_every_key(path: Path) -> None:
    from iotwatch.synth.config import SynthConfig

    from_dict(SynthConfig, read_yaml_mapping(path), path.name, strict=True)


def test_strict_names_the_missing_keys() -> None:
    from iotwatch.flowmeter.config import FlowConfig

    data = read_yaml_mapping(CONF / "flows" / "default.yaml")
    del data["idle_timeout"], data["size"]
    with pytest.raises(ConfigError, match=r"flows: missing key\(s\) \['idle_timeout', 'size'\]"):
        from_dict(FlowConfig, data, "flows", strict=True)
    assert from_dict(FlowConfig, data, "flows").idle_timeout == FlowConfig().idle_timeout


def test_missing_section_key_in_params_is_an_error() -> None:
    data = _composed([])
    del data["paths"]["flows"]
    with pytest.raises(ConfigError, match=r"x\.yaml: paths: missing key\(s\) \['flows'\]"):
        params_from_dict(data, "x.yaml")
    data = _composed([])
    del data["flows"]["reorder_window"]
    params = params_from_dict(data, "x.yaml")
    with pytest.raises(ConfigError, match=r"x\.yaml: flows: missing key\(s\) \['reorder_window'\]"):
        params.typed("flows", STAGES["flows"].config_class())
    del data["seed"]
    with pytest.raises(ConfigError, match="seed"):
        params_from_dict(data, "x.yaml")


def test_local_networks_has_one_home() -> None:
    """dataset.local_networks is the setting; the flow profiles do not carry it."""
    from iotwatch.flowmeter.config import FlowConfig

    data = _composed([])
    assert "local_networks" in data["dataset"]
    assert "local_networks" not in data["flows"]
    profile = {**read_yaml_mapping(CONF / "flows" / "default.yaml"), "local_networks": []}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['local_networks'\]"):
        from_dict(FlowConfig, profile, "flows", strict=True)


def test_packaged_conf_is_the_edited_conf() -> None:
    """In a checkout the package's conf/ is a link to conf/ (never a second copy)."""
    link = REPO / "src" / "iotwatch" / "conf"
    assert link.is_symlink() and PACKAGE_CONF.resolve() == CONF.resolve()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = project["package-data"]["iotwatch"]
    assert "conf/*.yaml" in data and "conf/*/*.yaml" in data


def test_profiles_found_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    found = find_profile("flows", "nfstream")
    assert found == PACKAGE_CONF / "flows" / "nfstream.yaml"
    assert find_conf_dir() == PACKAGE_CONF
    with pytest.raises(ConfigError, match=r"known: \['default', 'nfstream'\]"):
        find_profile("flows", "nfstreem")


def test_project_conf_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "flows").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text("seed: 1\n")
    mine = tmp_path / "conf" / "flows" / "mine.yaml"
    mine.write_text("protocols: [udp]\n")
    monkeypatch.chdir(tmp_path / "conf" / "flows")
    assert find_profile("flows", "mine") == mine
    assert find_profile("flows", "nfstream") == PACKAGE_CONF / "flows" / "nfstream.yaml"


@pytest.mark.slow
def test_wheel_carries_conf(tmp_path: Path) -> None:
    """A built wheel holds conf/ as package data (the link's files, not the link)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.nb[ic]")
    shutil.copytree(REPO / "src", src / "src", symlinks=True, ignore=skip)
    shutil.copytree(CONF, src / "conf")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, env={**os.environ, "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("iotwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"iotwatch/conf/{p.relative_to(CONF)}" for p in CONF.rglob("*.yaml")}
    assert expected <= names, sorted(expected - names)
