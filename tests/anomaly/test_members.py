"""Members of a device type's detector (anomaly.order both) and how their errors combine."""

from __future__ import annotations

import numpy as np
import pytest

from iotwatch.anomaly.members import (
    MemberSpec,
    combine,
    folder_specs,
    read_specs,
    reference_error,
    specs_for,
    stale_files,
)
from iotwatch.errors import InputError


def test_one_member_scores_are_its_errors_unchanged() -> None:
    e = np.array([0.1, 0.25, 3.0], np.float64)
    (spec,) = specs_for(["sorted"], [0.7])  # one member: ref 1, plain file names
    assert spec == MemberSpec("sorted", 1.0, "")
    assert combine([e], [spec]) is not None
    assert np.array_equal(combine([e], [spec]), e)


def test_two_members_give_the_geometric_mean_of_error_over_ref() -> None:
    specs = specs_for(["positional", "sorted"], [0.5, 0.02])
    assert [s.file("weights") for s in specs] == [
        "weights.safetensors",
        "sorted.weights.safetensors",
    ]
    pos = np.array([0.5, 5.0, 0.5, 0.0])
    srt = np.array([0.02, 0.02, 0.2, 0.04])
    # by hand: sqrt((0.5/0.5) * (0.02/0.02)) = 1; sqrt(10 * 1); sqrt(1 * 10); 0
    assert combine([pos, srt], specs) == pytest.approx([1.0, 10**0.5, 10**0.5, 0.0])
    # a flow far off for one member only scores lower than one far off for both
    both_far = combine([np.array([5.0]), np.array([0.2])], specs)
    assert both_far[0] == pytest.approx(10.0) and both_far[0] > combine([pos, srt], specs)[1]


def test_reference_error_is_the_median_and_never_zero() -> None:
    assert reference_error(np.array([3.0, 1.0, 2.0, 100.0, 0.5])) == 2.0
    assert reference_error(np.zeros(4)) > 0


def test_read_specs_defaults_and_refuses_bad_lists() -> None:
    assert read_specs({}, "m.json") == [MemberSpec("positional", 1.0, "")]  # older folders
    good = {"members": [s.to_dict() for s in specs_for(["positional", "sorted"], [0.3, 0.2])]}
    assert [s.prefix for s in read_specs(good, "m.json")] == ["", "sorted."]
    for bad, words in (
        ({"members": []}, "empty"),
        ({"members": [{"order": "positional"}]}, "bad members list"),
        ({"members": [{"order": "sorted", "ref": 0, "prefix": ""}]}, "ref must be"),
        ({"members": [{"order": "sorted", "ref": 1, "prefix": "../"}]}, "bad file prefix"),
        ({"members": [{"order": "sorted", "ref": 1, "prefix": "C:"}]}, "bad file prefix"),
        ({"members": [{"order": "a", "ref": 1, "prefix": ""}, {"order": "b", "ref": 1, "prefix": ""}]},
         "share the file prefix"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=words) as err:
            read_specs(bad, "m.json")
        assert str(err.value).startswith("m.json: ")


def test_a_folder_from_before_members_keeps_its_scalers_order(tmp_path) -> None:
    (tmp_path / "scaler.json").write_text('{"order": "sorted"}')
    assert folder_specs(tmp_path, {"hparams": {}}) == [MemberSpec("sorted", 1.0, "")]


def test_saving_fewer_members_removes_the_old_second_members_files(tmp_path) -> None:
    """order both, then positional in the same folder: no stale sorted.* left to be copied
    into a bundle or registered."""
    import json

    from iotwatch.anomaly.model import SparseAutoencoder
    from iotwatch.anomaly.scaling import FeatureScaler
    from iotwatch.anomaly.stage import THRESHOLD_FORMAT, load_device, save_device

    cols = ["size_sent_1", "size_sent_2"]
    x = np.abs(np.random.default_rng(0).normal(300, 100, (20, 2)))
    hp = {"n_features": 2, "hidden": 3}
    thr = {"format": THRESHOLD_FORMAT, "threshold": 1.0, "fpr_threshold": 1.0}
    two = [(SparseAutoencoder(**hp), FeatureScaler(order=o).fit(x, cols))
           for o in ("positional", "sorted")]  # fmt: skip
    save_device(tmp_path, two, specs_for(["positional", "sorted"], [0.5, 0.25]), hp, thr)
    assert {p.name for p in tmp_path.glob("sorted.*")} == {
        "sorted.state_dict.pt", "sorted.weights.safetensors", "sorted.scaler.json"}  # fmt: skip
    assert load_device(tmp_path).score(x).shape == (20,)
    save_device(tmp_path, two[:1], specs_for(["positional"], [0.5]), hp, thr)
    assert not list(tmp_path.glob("sorted.*")) and not stale_files(
        tmp_path, [MemberSpec("positional", 1.0)]
    )
    assert json.loads((tmp_path / "model.json").read_text())["members"] == [
        {"order": "positional", "ref": 1.0, "prefix": ""}]  # fmt: skip
