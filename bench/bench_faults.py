"""The fault campaign: a bounded, seeded run of mutated captures through the flow meter, with a
reliability figure people can quote (not a timed test: it prints figures).

.venv/bin/python bench/bench_faults.py [--mutations 10000] [--seed 0] [--workers 1]
    [--timeout 10] [--oracle N]

Inputs: hand-made captures (TCP connections, DNS, one disordered) and, when ../shared is there,
the N smallest NFStream oracle captures (read in place); each mutation is 1-3 operators (bit
flips, overwrites, truncations, splices, duplicated and shuffled records, absurd length and
timestamp fields) and gzip one time in eight (``tests/flowmeter/mutate.py``: the property
test's own). Each input is metered in a worker process under the default profile (all
protocols) or the nfstream one, as ``mutate.check`` judges it:

- clean: no issue; reported damage: issues with file and byte offset; project errors: the
  project's own one-line error (``IotwatchError``);
- crashes: any other exception, or a worker that died; hangs: past ``--timeout`` seconds;
- absurd outputs: a table failing ``sanity.problems`` (bytes per packet beyond a link, counters
  that do not add up, negative or NaN times), or a different table for 1 thread / whole-file
  chunks and 2 threads / 3-packet chunks.

The last line sums it up; the seeds of failures are printed to reproduce them
(``mutate.mutate(seeds, seed)``).

Then the sparse-capture timestamp cases (issue 21; ``--sparse-seeds 0`` skips them): in a
hand-made sparse capture (minutes between packets) and, when ../shared is there, the real
smart-home captures (../shared/data/real-homes/benign, read in place), 1, 2, 3 and 5 metered
records among 12 at the start, middle and end are moved a year ahead, a day ahead or a year
behind; each is metered (default profile) and compared with the unmutated capture's table:
flows and packets lost (a flow of the unmutated table no longer there with the same key, times
and counts), and how many of those are not the moved records' own flows (the loss the clock
rule must not cause), beside crashes (``tests/flowmeter/sparse.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "flowmeter"))
ORACLE = REPO.parent / "shared" / "data" / "nfstream-oracle" / "pcaps"
HOMES = REPO.parent / "shared" / "data" / "real-homes" / "benign"


def seed_captures(oracle: int) -> list[tuple[str, bytes]]:
    """The captures the mutations start from."""
    from test_meter_fuzz import SEEDS

    out = [(f"handmade{i}", s) for i, s in enumerate(SEEDS)]
    if ORACLE.is_dir() and oracle > 0:
        files = sorted((p for p in ORACLE.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
        out += [(p.name, p.read_bytes()) for p in files[:oracle]]
    return out


def _worker(conn, seeds: list[bytes]) -> None:  # noqa: ANN001 - a multiprocessing Connection
    import dataclasses

    from mutate import check, mutate

    from iotwatch.flowmeter import FlowConfig, load_profile

    configs = [dataclasses.replace(FlowConfig(), protocols=["all"]), load_profile("nfstream")]
    with tempfile.TemporaryDirectory(prefix="iotwatch-faults-") as d:
        path = Path(d) / "m.pcap"
        while True:
            task = conn.recv()
            if task is None:
                return
            seed = task
            data, ops = mutate(seeds, seed)
            path.write_bytes(data)
            t = time.perf_counter()
            try:
                kind, detail = check(path, configs[seed % 2])
            except Exception as exc:  # noqa: BLE001 - a crash is what we count
                kind, detail = "crash", f"{type(exc).__name__}: {exc}"
            conn.send((kind, detail, ops, time.perf_counter() - t))


class Worker:
    """One worker process; killed and replaced when it hangs or dies."""

    def __init__(self, ctx: mp.context.BaseContext, seeds: list[bytes]) -> None:
        self.ctx, self.seeds = ctx, seeds
        self.start()

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.seeds), daemon=True)
        self.proc.start()
        child.close()

    def run(self, seed: int, timeout: float) -> tuple[str, str, list[str], float]:
        self.conn.send(seed)
        if not self.conn.poll(timeout):
            self.proc.kill()
            self.proc.join()
            self.start()
            return "hang", f"over {timeout} s", [], timeout
        try:
            return self.conn.recv()
        except EOFError:  # the worker died (a signal, a fault in compiled code)
            code = self.proc.exitcode
            self.proc.join()
            self.start()
            return "crash", f"worker died (exit {code})", [], 0.0

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def sparse_cases(seeds: int) -> None:
    """The sparse-capture timestamp cases: data loss against the unmutated capture."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tests.flowmeter.sparse import YEAR, loss, metered_records, move, pick, sparse_capture

    from iotwatch.flowmeter import load_profile, meter_captures

    moves = {"year ahead": YEAR, "day ahead": 86400, "year behind": -YEAR}
    cfg = load_profile("default")
    tot = Counter()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iotwatch-sparse-") as d:
        caps = [sparse_capture(Path(d) / "handmade-sparse.pcap")]
        if HOMES.is_dir():
            caps += sorted(HOMES.glob("*.pcap"))
        for cap in caps:
            base = meter_captures([cap], cfg)
            offs, ports = metered_records(cap)
            data = cap.read_bytes()
            c = Counter()
            for k in (1, 2, 3, 5):
                for where in ("start", "middle", "end"):
                    for seed in range(seeds):
                        rows = pick(len(offs), k, where, np.random.default_rng(seed * 100 + k))
                        own = {(int(min(p)), int(max(p))) for p in ports[rows]}
                        for seconds in moves.values():
                            m = Path(d) / "m.pcap"
                            m.write_bytes(move(data, offs[rows].tolist(), seconds))
                            c["cases"] += 1
                            try:
                                res = meter_captures([m], cfg)
                            except Exception as exc:  # noqa: BLE001 - a crash is counted
                                c["crashes"] += 1
                                print(f"  crash: {cap.name} {rows} {seconds}: {exc}")
                                continue
                            lost = loss(base.table, res.table, own)
                            for key, v in zip(("flows", "packets", "other_flows",
                                               "other_packets"), lost, strict=True):  # fmt: skip
                                c[key] += v
                            c["worst_other"] = max(c["worst_other"], lost[2])
                            c["silent"] += bool(lost[0]) and not res.stats.issues
            print(
                f"  {cap.name}: {base.rows} flows, {len(offs)} metered packets; {c['cases']} "
                f"cases: lost {c['flows']} flows / {c['packets']} packets, of which not the "
                f"moved records' own {c['other_flows']} / {c['other_packets']} (worst case "
                f"{c['worst_other']} flows); silent {c['silent']}; crashes {c['crashes']}"
            )
            worst = max(tot["worst_other"], c["worst_other"])
            tot.update(c)
            tot["worst_other"] = worst
    print(
        f"sparse timestamp cases: {tot['cases']} in {len(caps)} captures, crashes "
        f"{tot['crashes']}; lost {tot['flows']} flows / {tot['packets']} packets, beyond the "
        f"moved records' own flows {tot['other_flows']} flows / {tot['other_packets']} "
        f"packets (worst case {tot['worst_other']}); {time.perf_counter() - t0:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="first mutation seed (then +1 each)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a hang")
    ap.add_argument("--oracle", type=int, default=12, help="oracle captures among the inputs")
    ap.add_argument("--sparse-seeds", type=int, default=2,
                    help="picks per sparse timestamp case (0: skip them)")  # fmt: skip
    args = ap.parse_args(argv)
    named = seed_captures(args.oracle)
    seeds = [s for _, s in named]
    print(f"inputs: {len(seeds)} captures ({', '.join(n for n, _ in named)}), "
          f"{args.mutations} mutations from seed {args.seed}")  # fmt: skip
    ctx = mp.get_context("fork")
    workers = [Worker(ctx, seeds) for _ in range(max(1, args.workers))]
    counts: Counter[str] = Counter()
    failures: list[tuple[int, str, str, list[str]]] = []
    slowest = (0.0, -1)
    t0 = time.perf_counter()
    todo = list(range(args.seed, args.seed + args.mutations))
    try:
        if len(workers) == 1:
            for seed in todo:
                kind, detail, ops, dt = workers[0].run(seed, args.timeout)
                counts[kind] += 1
                slowest = max(slowest, (dt, seed))
                if kind in ("crash", "hang", "absurd", "inconsistent"):
                    failures.append((seed, kind, detail, ops))
        else:
            from concurrent.futures import ThreadPoolExecutor

            def one(i: int) -> list[tuple[int, tuple]]:
                w = workers[i]
                return [(s, w.run(s, args.timeout)) for s in todo[i :: len(workers)]]

            with ThreadPoolExecutor(len(workers)) as ex:
                for done in ex.map(one, range(len(workers))):
                    for seed, (kind, detail, ops, dt) in done:
                        counts[kind] += 1
                        slowest = max(slowest, (dt, seed))
                        if kind in ("crash", "hang", "absurd", "inconsistent"):
                            failures.append((seed, kind, detail, ops))
    finally:
        for w in workers:
            w.stop()
    wall = time.perf_counter() - t0
    for seed, kind, detail, ops in sorted(failures)[:20]:
        print(f"  {kind}: seed {seed} ({'+'.join(ops)}): {detail}")
    absurd = counts["absurd"] + counts["inconsistent"]
    print(
        f"tried {sum(counts.values())}, clean {counts['clean']}, reported damage "
        f"{counts['damage']}, project errors {counts['project_error']}, crashes "
        f"{counts['crash']}, hangs {counts['hang']}, absurd outputs {absurd} "
        f"(inconsistent {counts['inconsistent']}); slowest {slowest[0]:.2f} s (seed "
        f"{slowest[1]}); {wall:.0f} s"
    )
    if args.sparse_seeds > 0:
        sparse_cases(args.sparse_seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
