"""Time the default 7-day synthetic dataset: prints packets/s and total seconds.

Usage: .venv/bin/python bench/bench_synth.py [OUT_DIR]   (default: a temporary directory)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    """Generate the default profile once and report the speed."""
    from iotwatch.synth.cli import load_config
    from iotwatch.synth.dataset import generate

    cfg = load_config("default")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
        t = time.perf_counter()
        m = generate(cfg, out)
        total = time.perf_counter() - t
    print(f"default profile: {cfg.days:g} days, {m['packets']} packets, {m['bytes'] / 1e6:.1f} MB")
    print(f"generation: {m['seconds']:.1f} s, {m['packets_per_s']:.0f} packets/s")
    print(f"total incl. stump check: {total:.1f} s")
    print(f"benign TCP flows per device: {m['flows_per_device']}")
    print(f"malicious TCP flows per attack: {m['malicious_flows_per_attack']}")
    from iotwatch.synth.cli import target_lines

    for line in target_lines(m):
        print(line)
    print("target: generation under 30 s: " + ("ok" if m["seconds"] < 30 else "MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
