"""A bad value in params.yaml is one line naming the key and the value, never a traceback.

Every value that reaches the flow meter, the synthesizer, the feature split, t-SNE or an
estimator is checked when its stage types its section (estimators with scikit-learn's own
parameter validation, before any model is fitted).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from iotwatch.cli import main
from iotwatch.pipeline.params_cli import compose_params

REPO = Path(__file__).resolve().parents[1]

CASES = [
    ("flows.n_packets", "abc", "flows.n_packets"),
    ("flows.n_packets", -3, "n_packets"),
    ("flows.idle_timeout", -1, "idle_timeout"),
    ("flows.size", "bogus", "flows.size"),
    ("synth.days", 0, "days"),
    ("synth.seed", "x", "synth.seed"),
    ("features.test_size", 2, "test_size"),
    ("features.validation_size", 0, "validation_size"),
    ("tsne.perplexity", -1, "perplexity"),
    ("classify.models.knn.params.n_neighbors", "abc", "classify.models.knn.params.n_neighbors"),
    ("classify.models.svm.params.C", -1, "classify.models.svm.params.C"),
    ("classify.models.random_forest.params.criterion", "best", "criterion"),
]
STAGE_OF = {"flows": "flows", "synth": "synth", "features": "features", "tsne": "tsne",
            "classify": "classify"}  # fmt: skip


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(compose_params([], REPO / "conf"))


@pytest.mark.parametrize(("key", "value", "needle"), CASES)
def test_bad_value_is_one_line_naming_key_and_value(
    base: dict, key: str, value: object, needle: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    data = copy.deepcopy(base)
    *parents, last = key.split(".")
    cur = data
    for k in parents:
        cur = cur[k]
    assert last in cur, f"{key} is not a real setting"
    cur[last] = value
    data["tracking"]["enabled"] = False
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    rc = main(["stage", STAGE_OF[parents[0]], "--params", str(params)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert needle in err[0] and str(value) in err[0], err[0]
