"""Members of a device type's detector (anomaly.order both) and how their errors combine."""

from __future__ import annotations

import numpy as np
import pytest

from iotwatch.anomaly.members import (
    MemberSpec,
    combine,
    read_specs,
    reference_error,
    specs_for,
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
        ({"members": [{"order": "a", "ref": 1, "prefix": ""}, {"order": "b", "ref": 1, "prefix": ""}]},
         "share the file prefix"),
    ):  # fmt: skip
        with pytest.raises(InputError, match=words) as err:
            read_specs(bad, "m.json")
        assert str(err.value).startswith("m.json: ")
