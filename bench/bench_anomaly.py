"""Step 2 on a home it has never seen: per device type, flow FPR and attack recall of the
autoencoder on thousands of flows, for each feature order and threshold placement. Prints
figures; asserts nothing.

    .venv/bin/python bench/bench_anomaly.py [--params params.yaml] [--home DIR]
        [--seed 4242] [--days 13] [--work bench/out/monitor] [--seeds 42,1,7]

Why: the default home's test split holds 200-300 legitimate flows per type, so one false alarm
moves the FPR by 0.3-0.5 % and runs of equivalent settings differ by several flows. A home
generated with another seed (the one bench_monitor.py uses; 13 days: ~2,000-2,700 benign flows
and ~300 attack flows per type) measures the same models with ten times the flows.

For each device type: the autoencoder is trained as the autoencoder stage trains it (params.yaml's
anomaly settings, the tune stage's parameters when present, the type's table from the features
stage; one run per ``--seeds`` value) on each feature order, its threshold chosen on the
type's validation flows (the smallest best-F1 threshold and the midpoint placement), and then
applied to the unseen home's flows of that type: benign flows by the inventory's device type,
attack flows matched to the synthesizer's ground truth and aimed at that type (the type's test
split of the default home is printed beside it: the same thresholds on the stage's test flows).
"both" is
the two orders together as the stage keeps them with ``anomaly.order: both`` (the default): the
geometric mean of each one's error over the median error of its early-stopping flows
(``iotwatch.anomaly.members``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_monitor import LOCAL_NET, REPO, _generate  # noqa: E402

ORDERS = ("positional", "sorted")
PLACEMENTS = ("smallest", "midpoint")


def unseen_flows(home: Path, n_packets: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, device type, attack type or '') of the home's TCP flows."""
    import pandas as pd

    from iotwatch.features import (
        FeaturesConfig,
        build_features,
        feature_columns,
        malicious_features,
        read_ground_truth,
    )
    from iotwatch.flowmeter import FlowConfig, meter_captures
    from iotwatch.inventory import read_inventory_csv

    inv = read_inventory_csv(home / "inventory.csv")
    cfg = dataclasses.replace(FlowConfig(), local_networks=[LOCAL_NET])

    def meter(folder: str) -> pd.DataFrame:
        table = meter_captures(sorted((home / folder).glob("*.pcap")), cfg, inv).table.to_pandas()
        return table[table["proto"] == 6]

    benign = meter("benign").dropna(subset=["device_type"])
    ben = build_features(benign, n_packets, "device_type", "benign")
    fcfg = dataclasses.replace(FeaturesConfig(), n_packets=n_packets)
    gt = read_ground_truth(home / "ground_truth.csv")
    mal, _ = malicious_features(meter("malicious"), gt, fcfg, "malicious")
    mal = mal.dropna(subset=["attack_type"])
    cols = feature_columns(n_packets)
    x = np.vstack([ben[cols].to_numpy(float), mal[cols].to_numpy(float)])
    kind = np.concatenate([ben["device_type"].astype(str), mal["gt_device_type"].astype(str)])
    attack = np.concatenate([np.full(len(ben), ""), mal["attack_type"].astype(str).to_numpy()])
    return x, kind, attack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--home", type=Path, default=None, help="default: generate one")
    ap.add_argument("--seed", type=int, default=4242, help="the unseen home's seed")
    ap.add_argument("--days", type=float, default=13)
    ap.add_argument("--work", type=Path, default=REPO / "bench/out/monitor")
    ap.add_argument("--seeds", default="", help="training seeds (default: params.yaml's seed)")
    args = ap.parse_args()

    from iotwatch.anomaly.data import read_slice, skip_reason
    from iotwatch.anomaly.members import combine, specs_for
    from iotwatch.anomaly.model import reconstruction_errors
    from iotwatch.anomaly.stage import (
        AnomalyConfig,
        model_hparams,
        train_candidate,
        train_settings,
        tuned_params,
    )
    from iotwatch.anomaly.threshold import best_f1_threshold
    from iotwatch.config import from_dict, read_params
    from iotwatch.features import metric_key
    from iotwatch.pipeline.stages import params_from_dict

    params = params_from_dict(read_params(args.params), str(args.params))
    acfg = from_dict(AnomalyConfig, params.sections["anomaly"], "anomaly", strict=True)
    n_packets = int(params.sections["features"]["n_packets"])
    seeds = [int(s) for s in args.seeds.split(",") if s] or [params.seed]
    home = args.home or _generate(args.work, args.seed, args.days)
    x_all, kind_all, attack_all = unseen_flows(home, n_packets)
    totals: dict[tuple[str, str, str], list[int]] = {}
    print(f"unseen home {home}: {len(x_all)} TCP flows", flush=True)
    for device in params.dataset.device_types:
        key = metric_key(device)
        table = Path(params.paths.anomaly_data) / f"{key}.parquet"
        if not table.is_file():
            print(f"{device}: no table {table} (run dvc repro first)")
            continue
        d = read_slice(table, device)
        if skip_reason(d, acfg.min_train_flows) or not d.validation_attack.any():
            print(f"{device}: skipped (too few flows or no validation attacks)")
            continue
        cfg, _ = tuned_params(acfg, Path(params.paths.anomaly_tuned) / f"{key}.json")
        hparams = model_hparams(cfg, len(d.columns))
        mine = kind_all == device
        ux, attack = x_all[mine], attack_all[mine] != ""
        print(f"{device}: {int((~attack).sum())} benign and {int(attack.sum())} attack flows")
        for seed in seeds:
            scores: dict[str, tuple[np.ndarray, ...]] = {}  # validation, test, unseen
            refs = {}
            for order in ORDERS:
                t = train_candidate(cfg, d, order, hparams, train_settings(cfg), seed)
                scores[order] = tuple(
                    reconstruction_errors(t.model, t.scaler.transform(x))
                    for x in (d.validation, d.test, ux)
                )
                refs[order] = t.ref
            specs = specs_for(list(ORDERS), [refs[o] for o in ORDERS])
            scores["both"] = tuple(combine([scores[o][i] for o in ORDERS], specs) for i in range(3))
            for name, (val, test, unseen) in scores.items():
                cells = []
                for placement in PLACEMENTS:
                    thr = best_f1_threshold(val, d.validation_attack, placement)
                    counts = {}
                    for split, s, y in (("test", test, d.test_attack), ("unseen", unseen, attack)):
                        fp, fn = int((s[~y] > thr).sum()), int((s[y] <= thr).sum())
                        counts[split] = (fp, int((~y).sum()), fn, int(y.sum()))
                        tot = totals.setdefault((split, name, placement), [0, 0, 0, 0])
                        for k, v in enumerate(counts[split]):
                            tot[k] += v
                    fp, n_legit, fn, _ = counts["unseen"]
                    cells.append(
                        f"{placement}: FPR {fp / max(n_legit, 1):.4f} ({fp}), {fn} missed "
                        f"(test split: {counts['test'][0]} false alarms, {counts['test'][2]} missed)"
                    )
                print(f"  seed {seed} {name:10s} {' | '.join(cells)}", flush=True)
    for split in ("test", "unseen"):
        what = "the default home's test split" if split == "test" else "the unseen home"
        print(f"all types, all seeds, {what}:")
        for (s, name, placement), (fp, n_legit, fn, n_attack) in totals.items():
            if s == split:
                print(
                    f"  {name:10s} {placement:8s} FPR {fp / max(n_legit, 1):.4f} "
                    f"({fp}/{n_legit}), recall {1 - fn / max(n_attack, 1):.4f} "
                    f"({fn} missed of {n_attack})"
                )


if __name__ == "__main__":
    main()
