"""Ahead-of-time and JIT kernels: same signatures, same flow tables (and a ring block's packets,
the forest's probabilities)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Meters a few captures that take every kernel through every path (pcap and pcapng, VLAN,
# IPv6, out of order, streamed and in memory, an inventory), writes the tables, and reports the
# signatures the JIT compiled: run in a subprocess with the kernels chosen by the environment.
SCRIPT = r"""
import json, random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.flowmeter.handmade import (DEV_IP, DEV_MAC, SRV_IP, SRV6, DEV6, T0, connection, tcp,
                                      tpacket3_block, udp, write_pcap, write_pcapng_two_ifaces)
from iotwatch.flowmeter import _jit, load_profile, meter_captures
from iotwatch.flowmeter.meter import FlowMeter
from iotwatch.inventory import Device, Inventory

FlowMeter.POOL0 = 2  # the pools grow (rehash) and sweep

out = Path(sys.argv[1])
pk = []
for i in range(40):
    pk += connection(T0 + 5 * i, sport=41000 + i % 7, close=("fin", "rst", "none")[i % 3])
pk += [tcp(T0 + 3 * i + 0.5, DEV_IP, SRV_IP, 5555, 80, "A", 9, vlan=7) for i in range(30)]
pk += [tcp(T0 + 2 * i + 0.2, DEV6, SRV6, 6000, 443, "PA", 40, v6=True) for i in range(30)]
pk += [udp(T0 + i, DEV_IP, SRV_IP, 5353, 53) for i in range(20)]
pk.sort(key=lambda p: float(p.time))
rnd = random.Random(1)
for i in range(0, len(pk) - 2, 5):
    if rnd.random() < 0.5:
        pk[i], pk[i + 1] = pk[i + 1], pk[i]
a = write_pcap(out / "a.pcap", pk)
b = write_pcapng_two_ifaces(out / "b.pcapng", [(i % 2, p) for i, p in enumerate(pk[:60])])
inv = Inventory([Device(mac=DEV_MAC, ip=DEV_IP, device_type="camera", name="cam")])
for profile in ("default", "nfstream"):
    cfg = load_profile(profile)
    meter_captures([a, b], cfg, inventory=inv).to_parquet(out / f"{profile}.parquet")
    meter_captures([a, b], cfg, out=out / f"{profile}-streamed.parquet")
    meter_captures([a], cfg, out=out / f"{profile}-one.parquet", threads=1)
# a live capture's ring block (the monitor's live path)
import numpy as np
from iotwatch.flowmeter.frames import batch_from_tpacket3
block, n, first = tpacket3_block([(round(float(p.time) * 1e9), bytes(p)) for p in pk[:50]],
                                 size=1 << 17)
ring = batch_from_tpacket3(np.frombuffer(block, np.uint8), n, first)
np.save(out / "ring.npy", np.stack([ring.ts_ns, ring.ip_len, ring.sport.astype(np.int64)]))
# the monitor's forest kernel (used by Forest only with the ahead-of-time module: here JIT too)
import numpy as np
import pandas as pd
from iotwatch.classify import ModelConfig, make_pipeline
from iotwatch.monitor import forest as F
if _jit.kind() == "jit":
    from iotwatch.monitor import _forest_kernel
    F._compiled_kernel = lambda: _forest_kernel.forest_proba
rng = np.random.default_rng(5)
x = np.abs(rng.normal(300, 200, (300, 5))).round()
y = np.where(x[:, 0] > 300, "a", np.where(x[:, 1] > 250, "b", "c"))
cols = [f"f{i}" for i in range(5)]
pipe = make_pipeline("random_forest", ModelConfig(log1p=True, scale=True,
                                                  params={"n_estimators": 9}), 0)
pipe.fit(pd.DataFrame(x, columns=cols), y)
forest = F.compile_pipeline(pipe)
assert F._compiled_kernel() is not None
x_new = np.abs(rng.normal(300, 250, (200, 5)))
proba = forest.predict_proba(x_new)
assert np.array_equal(proba, pipe.predict_proba(pd.DataFrame(x_new, columns=cols)))
np.save(out / "forest.npy", proba)
sigs = {}
if _jit.kind() == "jit":
    from iotwatch.flowmeter import _decode, _meter_kernels, _ring
    for mod in (_decode, _meter_kernels, _ring, _forest_kernel):
        for name in mod.EXPORTS:
            sigs[name] = [str(s) for s in getattr(mod, name).nopython_signatures]
print(json.dumps({"kind": _jit.kind(), "sigs": sigs}))
"""


def _run(tmp: Path, kernels: str) -> dict:
    tmp.mkdir()
    env = {**os.environ, "IOTWATCH_KERNELS": kernels}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp), str(REPO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_aot_signatures_and_tables_match_jit(tmp_path: Path) -> None:
    """The JIT compiles exactly the signatures the ahead-of-time build declares, and both kinds
    of kernels write the same tables (when the module is built: ``make setup`` builds it)."""
    from iotwatch.flowmeter import _jit

    jit = _run(tmp_path / "jit", "jit")
    assert jit["kind"] == "jit"
    from iotwatch.flowmeter.build_aot import signatures

    declared = signatures()
    assert set(jit["sigs"]) == set(declared)
    for name, (_, sig) in declared.items():
        assert jit["sigs"][name] == [str(sig)], name  # one signature, the declared one
    if _jit.AOT is None and _jit._load_aot() is None:
        pytest.skip("no ahead-of-time kernels built for these sources (make setup builds them)")
    aot = _run(tmp_path / "aot", "aot")
    assert aot["kind"] == "aot"
    import pyarrow.parquet as pq

    names = sorted(p.name for p in (tmp_path / "jit").glob("*.parquet"))
    assert len(names) == 6
    for name in names:
        assert pq.read_table(tmp_path / "aot" / name).equals(pq.read_table(tmp_path / "jit" / name))
    import numpy as np

    for name in ("forest.npy", "ring.npy"):
        assert np.array_equal(*(np.load(tmp_path / kind / name) for kind in ("aot", "jit")))


def test_bad_kernels_setting_is_a_clean_error(tmp_path: Path) -> None:
    env = {**os.environ, "IOTWATCH_KERNELS": "fastest"}
    proc = subprocess.run(
        [sys.executable, "-m", "iotwatch", "flows", str(tmp_path / "x.pcap"), "--out", "o.pq"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "IOTWATCH_KERNELS must be auto, jit or aot" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_aot_kernels_release_the_gil() -> None:
    """The compiled wrappers release the GIL like ``nogil=True`` (the reader, the per-thread
    flow tables and the writer overlap only then): Python keeps running in this thread while
    another is inside a kernel."""
    import threading

    import numpy as np

    from iotwatch.flowmeter import _jit
    from iotwatch.flowmeter import _meter_kernels as K

    if _jit.AOT is None:
        pytest.skip("kernels are JIT-compiled in this process (nogil=True)")
    n = 6_000_000
    lo = np.arange(n, dtype=np.uint64) | np.uint64(0xFFFF << 32)
    hi = np.zeros(n, np.uint64)
    inside, done = threading.Event(), threading.Event()

    def work() -> None:
        inside.set()
        K.format_ips(hi, lo)
        done.set()

    th = threading.Thread(target=work)
    th.start()
    inside.wait()
    during = 0
    while not done.is_set():
        during += 1
    th.join()
    # GIL held: this loop could only run in a switch interval before the call (5 ms, ~1e5
    # turns); released: all through the call (~0.5 s, ~2e6 turns)
    assert during > 600_000, during
