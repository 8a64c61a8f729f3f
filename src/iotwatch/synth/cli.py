"""`iotwatch synth`: generate the synthetic smart-home dataset from a profile in conf/synth/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load_config(
    profile: str = "default",
    seed: int | None = None,
    days: float | None = None,
    extra_devices: list[str] | None = None,
) -> Any:
    """Read a profile into a SynthConfig, applying seed/days overrides; ``extra_devices`` adds
    the named templates (``templates:`` in the profile) to the home."""
    from iotwatch.config import find_profile, from_dict, read_yaml_mapping
    from iotwatch.synth.config import SynthConfig

    path = find_profile("synth", profile)
    data = read_yaml_mapping(path)
    if seed is not None:
        data["seed"] = seed
    if days is not None:
        data["days"] = days
    if extra_devices:
        data["extra_devices"] = [*data.get("extra_devices", []), *extra_devices]
    return from_dict(SynthConfig, data, where=f"{path.name}")


def main(argv: list[str]) -> int:
    """Parse arguments, generate, print speed and a summary."""
    ap = argparse.ArgumentParser(prog="iotwatch synth", description=__doc__)
    ap.add_argument("--out", required=True, type=Path, help="output directory")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's)")
    ap.add_argument(
        "--days", type=float, default=None, help="days of traffic (default: the profile's)"
    )
    ap.add_argument("--profile", default="default", help="default | tiny | path/to/profile.yaml")
    ap.add_argument(
        "--extra-device",
        action="append",
        default=[],
        metavar="TEMPLATE",
        help="add a device from the profile's templates (e.g. hue_bridge); repeatable",
    )
    ap.add_argument("--metrics", type=Path, default=None, help="also write the metrics JSON here")
    ap.add_argument("--quiet", action="store_true", help="no per-day progress")
    args = ap.parse_args(argv)
    cfg = load_config(args.profile, args.seed, args.days, args.extra_device)
    from iotwatch.synth.dataset import generate

    m = generate(cfg, args.out, progress=not args.quiet)
    if args.metrics is not None:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")
    print(f"synth: {m['packets']} packets, {m['bytes'] / 1e6:.1f} MB in {m['seconds']:.1f} s "
          f"({m['packets_per_s']:.0f} packets/s) -> {args.out}")  # fmt: skip
    print(f"  benign TCP flows per device: {m['flows_per_device']}")
    print(f"  malicious TCP flows per attack: {m['malicious_flows_per_attack']}")
    print(f"  malicious TCP flows per device: {m['malicious_flows_per_device']}")
    print(f"  best one-feature stump accuracy: {m['stump_accuracy']} ({m['stump_feature']})")
    for line in target_lines(m):
        print(f"  {line}")
    return 0


def target_lines(m: dict) -> list[str]:
    """The issue-10 targets beside this dataset's figures (the pipeline's own classify stage
    gives the reference numbers; these are the synthesizer's quick 80/20 checks)."""
    t = m["targets"]
    rf, stump = m["forest_accuracy"], m["stump_accuracy"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("ok" if ok else "MISSED")

    return [
        f"target: random forest >= {t['forest_accuracy_min']}: {rf} "
        f"({verdict(None if rf is None else rf >= t['forest_accuracy_min'])})",
        f"target: one-feature stump <= {t['stump_accuracy_max']}: {stump} "
        f"({verdict(None if stump is None else stump <= t['stump_accuracy_max'])})",
    ]
