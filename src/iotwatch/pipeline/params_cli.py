"""`iotwatch params [OVERRIDE...]`: compose conf/ into params.yaml, exactly as `dvc exp run -S` does."""

from __future__ import annotations

import argparse
from pathlib import Path

from iotwatch.config import find_conf_dir
from iotwatch.errors import ConfigError


def compose_params(overrides: list[str], conf_dir: Path | None = None) -> str:
    """Compose conf/config.yaml with Hydra overrides and return params.yaml's text."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = (conf_dir or find_conf_dir()).resolve()
    # Same calls as dvc.utils.hydra.compose_and_dump (version_base=None included), so that
    # `iotwatch params` and `dvc exp run -S` write byte-identical params.yaml files.
    try:
        with initialize_config_dir(str(conf), version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{conf}: cannot compose configuration: {exc}") from None
    return OmegaConf.to_yaml(cfg)


def main(argv: list[str]) -> int:
    """Entry point of `iotwatch params`."""
    parser = argparse.ArgumentParser(
        prog="iotwatch params",
        description="Compose conf/ (Hydra) into params.yaml, the file DVC stages read.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=iot_sentinel")
    parser.add_argument("--out", type=Path, default=Path("params.yaml"))
    parser.add_argument("--check", action="store_true", help="exit 1 if --out is out of date")
    args = parser.parse_args(argv)
    text = compose_params(args.overrides)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is out of date with conf/: run `iotwatch params`")
            return 1
        print(f"{args.out} matches conf/")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.out}"
        + (f" (overrides: {' '.join(args.overrides)})" if args.overrides else "")
    )
    return 0
