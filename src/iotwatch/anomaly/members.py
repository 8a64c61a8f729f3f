"""A device type's detector as one or more autoencoders ("members") and how their errors combine.

``anomaly.order`` positional, sorted or best gives one member: the score is its mean squared
reconstruction error, as the method has it. ``both`` gives two, one per feature order (the method's
positional features and the sorted ones, ``iotwatch.anomaly.scaling``), trained alike; the score
is the geometric mean of each member's error divided by its ``ref``, the median error of the
member's early-stopping flows (held-out legitimate train flows; with ``anomaly.stop_share: 0``
the legitimate validation flows). Dividing puts both errors in
"times a typical legitimate flow" units; the geometric mean then needs both members to find a
flow unusual: a legitimate connection cut by the 600 s timeout at an odd phase is far off for the
positional member but ordinary for the sorted one, while an attack is far off for both.

Measured (default home, training seed 42, smallest best-F1 threshold; bench/bench_anomaly.py):
test split false alarms 20/1050 positional, 15 sorted, 10 both (misses 1, 2, 1 of 563); on a
home of another seed, 8,222 benign and 1,194 attack flows: FPR 1.64 %, 1.18 %, 0.73 %, recall
0.9966, 0.9975, 0.9933.

Files in a detector folder: member k's are ``<prefix>weights.safetensors``,
``<prefix>state_dict.pt`` and ``<prefix>scaler.json`` with prefix "" for the first member and
"<order>." for the others; ``model.json`` lists the members (order, ref, prefix). A folder written
before members existed is one member with ref 1. This module needs numpy only (the monitor uses
it without torch).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iotwatch.errors import InputError

FILES = {"weights": "weights.safetensors", "state_dict": "state_dict.pt", "scaler": "scaler.json"}
COMBINE = "geometric mean of each member's mean squared error / its ref"


@dataclass(frozen=True)
class MemberSpec:
    """Where a member's files are and the error its scores are divided by."""

    order: str
    ref: float
    prefix: str = ""

    def file(self, kind: str) -> str:
        return self.prefix + FILES[kind]

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "ref": self.ref, "prefix": self.prefix}


def specs_for(orders: Sequence[str], refs: Sequence[float]) -> list[MemberSpec]:
    """Member specs of a new detector: the first member's files keep the plain names."""
    if len(orders) != len(refs) or not orders:
        raise ValueError("one ref per member, at least one member")
    if len(orders) == 1:
        return [MemberSpec(orders[0], 1.0, "")]
    return [MemberSpec(o, float(r), "" if i == 0 else f"{o}.")
            for i, (o, r) in enumerate(zip(orders, refs, strict=True))]  # fmt: skip


def read_specs(meta: dict[str, Any], source: str, order: str = "positional") -> list[MemberSpec]:
    """The members a ``model.json`` lists (one plain member when it lists none: a folder from
    before members, whose feature order is its scaler's, passed as ``order``)."""
    raw = meta.get("members")
    if raw is None:
        return [MemberSpec(order, 1.0, "")]
    try:
        specs = [MemberSpec(str(m["order"]), float(m["ref"]), str(m["prefix"])) for m in raw]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: bad members list ({exc})") from None
    if not specs:
        raise InputError(f"{source}: the members list is empty")
    for s in specs:
        if not (math.isfinite(s.ref) and s.ref > 0):
            raise InputError(f"{source}: member {s.order}: ref must be a positive number")
        if not re.fullmatch(r"([A-Za-z0-9_-]+\.)?", s.prefix):  # a plain name: never a path
            raise InputError(f"{source}: member {s.order}: bad file prefix {s.prefix!r}")
    if len({s.prefix for s in specs}) != len(specs):
        raise InputError(f"{source}: two members share the file prefix")
    return specs


def member_files(specs: Sequence[MemberSpec], kinds: Sequence[str]) -> list[str]:
    return [s.file(k) for s in specs for k in kinds]


def folder_specs(folder: Path, meta: dict[str, Any]) -> list[MemberSpec]:
    """``read_specs`` of a detector folder's ``model.json`` (``meta``); for a folder from before
    members, the one member's order is read from its ``scaler.json``."""
    source = str(folder / "model.json")
    if meta.get("members") is not None:
        return read_specs(meta, source)
    try:
        order = json.loads((folder / FILES["scaler"]).read_text(encoding="utf-8")).get("order")
    except (OSError, ValueError, AttributeError):
        order = None
    return read_specs(meta, source, str(order or "positional"))


def stale_files(folder: Path, specs: Sequence[MemberSpec]) -> list[Path]:
    """Member files in ``folder`` that ``specs`` do not name (left by an earlier training with
    other members: removed before saving, so nothing copies or registers them)."""
    keep = set(member_files(specs, list(FILES)))
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.name.endswith(tuple(FILES.values())) and p.name not in keep)  # fmt: skip


def reference_error(errors: np.ndarray) -> float:
    """A member's ref: the median error of its early-stopping flows (floored: never 0)."""
    errors = np.asarray(errors, np.float64)
    med = float(np.median(errors)) if len(errors) else 1.0
    return max(med, 1e-12)


def combine(errors: Sequence[np.ndarray], specs: Sequence[MemberSpec]) -> np.ndarray:
    """Per flow: the single member's error as it is, or the geometric mean of error / ref."""
    if len(errors) != len(specs) or not specs:
        raise ValueError("one error array per member")
    if len(specs) == 1 and specs[0].ref == 1.0:
        return np.asarray(errors[0], np.float64)
    out = np.ones(len(errors[0]), np.float64)
    for e, s in zip(errors, specs, strict=True):
        out *= np.asarray(e, np.float64) / s.ref
    return out ** (1.0 / len(specs))
