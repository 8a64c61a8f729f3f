"""The model bundle: what export writes, what load accepts and what it refuses (one line)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from iotwatch.arrays import read_arrays, write_arrays
from iotwatch.bundle import MANIFEST, load_bundle, read_manifest, sha256
from iotwatch.cli import main as cli
from iotwatch.errors import InputError


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / MANIFEST
    m = json.loads(path.read_text())
    m.update(changes)
    path.write_text(json.dumps(m))


def test_bundle_is_a_plain_folder_of_safe_formats(trained) -> None:
    files = sorted(p.relative_to(trained.bundle).as_posix() for p in trained.bundle.rglob("*")
                   if p.is_file())  # fmt: skip
    assert all(f.endswith((".json", ".skops", ".safetensors")) for f in files), files
    m = read_manifest(trained.bundle)
    assert set(m["files"]) | {MANIFEST} == set(files)
    assert m["features"]["n_packets"] == 10 and len(m["features"]["columns"]) == 38
    assert set(m["devices"]) == {"dlink_motion_sensor", "nest_camera", "tplink_bulb", "tplink_plug"}
    assert m["flow_profile"]["idle_timeout"] == 600.0 and "local_networks" not in m["flow_profile"]
    assert m["packages"]["scikit-learn"] and m["training_data"]["sha256"]
    assert m["open_set"]["window"] == 20 and 0 < m["open_set"]["fit"] <= 1
    for info in m["devices"].values():  # anomaly.order both (the default): two members each
        assert info["members"] == ["positional", "sorted"]
        assert f"{info['folder']}/sorted.weights.safetensors" in files


def test_compiled_trees_and_numpy_autoencoders_equal_the_originals(trained) -> None:
    import pandas as pd

    from iotwatch.anomaly.stage import load_device

    fast = load_bundle(trained.bundle)
    slow = load_bundle(trained.bundle, use_forest=False)
    val = trained.tables["validation"]
    x = val[fast.feature_columns].to_numpy(np.float64)
    assert type(fast.classifier).__name__ == "Forest"
    assert np.array_equal(fast.classifier.predict_proba(x), slow.classifier.predict_proba(x))
    ref = slow.classifier.model.predict_proba(pd.DataFrame(x, columns=fast.feature_columns))
    assert np.array_equal(fast.classifier.predict_proba(x), ref)
    src = trained.root / "anomaly"
    for t, det in fast.detectors.items():
        torch_scores = load_device(src / t).score(x)
        np.testing.assert_allclose(det.score(x), torch_scores, rtol=1e-4, atol=1e-7)


def test_export_is_reproducible(trained, tmp_path: Path) -> None:
    from iotwatch.bundle import ExportInputs, write_bundle
    from iotwatch.flowmeter.config import FlowConfig

    work = trained.root / "models-all"
    inputs = ExportInputs(work / "classifier.skops", work / "anomaly", work / "validation.parquet",
                          [work / "train.parquet", work / "validation.parquet"], None,
                          FlowConfig(), [])  # fmt: skip
    write_bundle(inputs, tmp_path / "again")
    assert (tmp_path / "again" / MANIFEST).read_bytes() == (trained.bundle / MANIFEST).read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "no model bundle here"),
        ("no_manifest", "manifest.json: missing"),
        ("bad_json", "cannot read the manifest"),
        ("format", "bundle format 'iotwatch-bundle/0'"),
        ("columns", "feature columns differ"),
        ("profile", "flow profile does not fit"),
        ("corrupt_weights", "does not match its SHA-256"),
        ("missing_file", "missing from the bundle"),
        ("unlisted_member", "extra.scaler.json is not in the bundle's manifest"),
    ],
)
def test_a_bad_bundle_is_refused_with_one_line(
    trained, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    b = _copy(trained.bundle, tmp_path)
    weights = next(b.glob("anomaly/*/weights.safetensors"))
    if damage == "missing":
        shutil.rmtree(b)
    elif damage == "no_manifest":
        (b / MANIFEST).unlink()
    elif damage == "bad_json":
        (b / MANIFEST).write_text("{not json")
    elif damage == "format":
        _edit_manifest(b, format="iotwatch-bundle/0")
    elif damage == "columns":
        m = json.loads((b / MANIFEST).read_text())
        _edit_manifest(b, features={"n_packets": 8, "columns": m["features"]["columns"]})
    elif damage == "profile":
        m = json.loads((b / MANIFEST).read_text())
        _edit_manifest(b, flow_profile={**m["flow_profile"], "idle_timeuot": 5})
    elif damage == "corrupt_weights":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "missing_file":
        weights.unlink()
    elif damage == "unlisted_member":  # model.json names files the manifest does not vouch for
        folder = weights.parent
        meta = json.loads((folder / "model.json").read_text())
        meta["members"][1]["prefix"] = "extra."
        (folder / "model.json").write_text(json.dumps(meta))
        for name in ("scaler.json", "weights.safetensors"):
            shutil.copyfile(folder / f"sorted.{name}", folder / f"extra.{name}")
        m = json.loads((b / MANIFEST).read_text())
        rel = folder.relative_to(b).as_posix() + "/model.json"
        _edit_manifest(b, files={**m["files"], rel: sha256(folder / "model.json")})
    cap = trained.other_home / "benign"
    rc = cli(["monitor", str(cap), "--model", str(b), "--out", str(tmp_path / "a.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "a.jsonl").exists()  # refused before anything was started


def test_safetensors_round_trip_and_garbage(tmp_path: Path) -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, -2], np.int64)}
    write_arrays(arrays, tmp_path / "a.safetensors", {"k": "v"})
    got, meta = read_arrays(tmp_path / "a.safetensors")
    assert meta == {"k": "v"} and set(got) == {"w", "i"}
    assert all(np.array_equal(got[k], arrays[k]) and got[k].dtype == arrays[k].dtype for k in got)
    (tmp_path / "b.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(InputError, match="not a safetensors file"):
        read_arrays(tmp_path / "b.safetensors")
    # a header pointing past the data
    raw = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(raw[:-4])
    with pytest.raises(InputError, match="byte range"):
        read_arrays(tmp_path / "c.safetensors")


def test_manifest_lists_every_file_with_its_hash(trained) -> None:
    m = read_manifest(trained.bundle)
    for rel, digest in m["files"].items():
        assert sha256(trained.bundle / rel) == digest


@pytest.mark.parametrize("name", ["decision_tree", "random_forest", "svm"])
def test_tree_models_compile_to_the_same_probabilities(name: str) -> None:
    import pandas as pd

    from iotwatch.classify import ModelConfig, make_pipeline
    from iotwatch.monitor.forest import compile_pipeline

    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(300, 200, (400, 6))).round()
    y = np.where(x[:, 0] + rng.normal(0, 80, 400) > 300, "a", np.where(x[:, 1] > 250, "b", "c"))
    cols = [f"f{i}" for i in range(6)]
    params = {"n_estimators": 7} if name == "random_forest" else {}
    pipe = make_pipeline(name, ModelConfig(log1p=True, scale=True, params=params), 0)
    pipe.fit(pd.DataFrame(x, columns=cols), y)
    forest = compile_pipeline(pipe)
    if name == "svm":
        assert forest is None  # loaded from skops instead
        return
    assert forest is not None
    x_new = np.abs(rng.normal(300, 250, (300, 6)))
    ref = pipe.predict_proba(pd.DataFrame(x_new, columns=cols))
    assert np.array_equal(forest.predict_proba(x_new), ref)  # the compiled kernel where built
    assert np.array_equal(forest.predict_proba_numpy(x_new), ref)


def test_a_sorted_detector_names_and_values_its_sorted_columns() -> None:
    """With anomaly.order sorted, explain's names and the alert's values are the sorted ones."""
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.monitor.autoencoder import Detector

    cols = ["size_sent_1", "size_sent_2", "iat_sent_1"]
    x = np.array([[40.0, 930.0, 0.5], [930.0, 40.0, 0.5], [60.0, 215.0, 0.1]])
    rng = np.random.default_rng(0)
    w = {"encoder.weight": rng.normal(size=(4, 3)), "encoder.bias": np.zeros(4),
         "decoder.weight": rng.normal(size=(3, 4)), "decoder.bias": np.zeros(3)}  # fmt: skip
    det = Detector.from_parts(
        "plug", FeatureScaler(order="sorted").fit(x, cols), w, "linear", 1.0, 1.0
    )
    assert det.feature_names == [f"{c} (sorted)" for c in cols]
    assert np.array_equal(det.model_view(x[:1]), [[930.0, 40.0, 0.5]])
    assert det.score(x[:1]) == pytest.approx(det.score(x[1:2]))  # one flow, two ACK positions
    names = {n for n, _ in det.explain(x[:1], top=3)[0]}
    assert names == set(det.feature_names)


def test_a_two_member_detector_scores_explains_and_names_both_members() -> None:
    """anomaly.order both: the numpy detector combines the members as the stage does, and an
    alert's top features say which member's column they are."""
    from iotwatch.anomaly.members import combine, specs_for
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.monitor.autoencoder import Detector

    cols = ["size_sent_1", "size_sent_2", "iat_sent_1"]
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(300, 200, (30, 3)))

    def weights() -> dict[str, np.ndarray]:
        return {"encoder.weight": rng.normal(size=(4, 3)), "encoder.bias": np.zeros(4),
                "decoder.weight": rng.normal(size=(3, 4)), "decoder.bias": np.zeros(3)}  # fmt: skip

    specs = specs_for(["positional", "sorted"], [0.4, 0.1])
    parts = [(FeatureScaler(order=s.order).fit(x, cols), weights()) for s in specs]
    det = Detector.from_members("plug", parts, specs, "linear", 1.0, 2.0)
    single = [Detector.from_parts("plug", sc, w, "linear", 1.0, 2.0) for sc, w in parts]
    assert np.array_equal(det.score(x), combine([d.score(x) for d in single], specs))
    assert det.feature_names == cols + [f"{c} (sorted)" for c in cols]
    assert det.model_view(x).shape == (30, 6)
    top = det.explain(x[:5], top=6)
    assert all(abs(sum(share for _, share in row) - 1.0) < 1e-6 for row in top)
    with pytest.raises(ValueError, match="one spec per member"):
        Detector.from_members("plug", parts[:1], specs, "linear", 1.0, 2.0)
