"""Locating the project (conf/, params.yaml) from the working directory."""

from __future__ import annotations

from pathlib import Path

from iotwatch.errors import ConfigError

_REPO_ROOT = Path(__file__).resolve().parents[3]


def find_conf_dir(start: Path | None = None) -> Path:
    """The nearest conf/ with a config.yaml, searching upward from cwd, then the source tree."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "conf" / "config.yaml").is_file():
            return folder / "conf"
    if (_REPO_ROOT / "conf" / "config.yaml").is_file():
        return _REPO_ROOT / "conf"
    raise ConfigError(f"no conf/config.yaml found above {here}")
