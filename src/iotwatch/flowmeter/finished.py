"""The store of finished flows: the kernel's output rows as compact typed column chunks."""

from __future__ import annotations

import numpy as np

from iotwatch.flowmeter import _meter_kernels as K

Block = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # (flows, features) columns


class _FinishedFlows:
    """Finished flows as compact column chunks (about 0.36 KB a flow with N = 10).

    Rows are split into typed columns as they leave the kernel's output buffer, so the store
    costs what the table needs (not the kernel's 64-bit record layout), and ``result`` can free
    each column's chunks as soon as that column is gathered.
    """

    # name -> (record array, column, dtype) for the columns stored whole; the packed ones
    # (ports, protocol, IP version, VLAN, initiator, end reason) are unpacked in ``add``
    _FROM = {
        "a_hi": ("u", K.U_A_HI, np.uint64), "a_lo": ("u", K.U_A_LO, np.uint64),
        "b_hi": ("u", K.U_B_HI, np.uint64), "b_lo": ("u", K.U_B_LO, np.uint64),
        "mac_a": ("u", K.U_MAC_A, np.uint64), "mac_b": ("u", K.U_MAC_B, np.uint64),
        "start": ("i", K.I_T0, np.int64), "end": ("i", K.I_TL, np.int64),
        "pab": ("i", K.I_PAB, np.int64), "pba": ("i", K.I_PBA, np.int64),
        "bab": ("i", K.I_BAB, np.int64), "bba": ("i", K.I_BBA, np.int64),
        "seq0": ("i", K.I_SEQ0, np.int64),
    }  # fmt: skip
    _PACKED = {"proto": np.uint8, "ipver": np.uint8, "vlan": np.int32, "a_port": np.uint16,
               "b_port": np.uint16, "init_a": np.bool_, "reason": np.int8}  # fmt: skip
    _FEAT = ("s_ab", "s_ba", "t_ab", "t_ba")

    def __init__(self, n: int, res: int = 1) -> None:
        self.n = n
        self.res = res  # ns per unit of the packed feature times
        self.rows = 0
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in self._names()}

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return (*cls._FROM, *cls._PACKED, *cls._FEAT)

    def add(self, ou: np.ndarray, oi: np.ndarray, of: np.ndarray) -> None:
        """Keep output rows as typed column copies (the kernel's buffers are reused)."""
        self.rows += len(oi)
        src = {"u": ou, "i": oi}
        for name, (which, j, dtype) in self._FROM.items():
            self.cols[name].append(src[which][:, j].astype(dtype))
        small, misc = ou[:, K.U_SMALL], oi[:, K.I_MISC]
        unpacked = {
            "a_port": small, "b_port": small >> np.uint64(16), "proto": small >> np.uint64(32),
            "ipver": misc >> K.M_IPVER_SHIFT, "reason": misc >> K.M_REASON_SHIFT,
            "vlan": misc >> K.M_VLAN_SHIFT, "init_a": (misc & K.M_INIT_A) != 0,
        }  # fmt: skip
        for name, dtype in self._PACKED.items():
            # astype to a narrower integer keeps the low bits: the field's own
            self.cols[name].append(unpacked[name].astype(dtype))
        # the packed first-N features: size -1 / time 0 where absent, as the table expects
        t0 = oi[:, K.I_T0, None]
        for d in range(2):
            f = of[:, d, :]
            absent = f < 0
            size = (f & K.FEATURE_SIZE_MAX).astype(np.int32)
            size[absent] = -1
            t = t0 + (f >> K.FEATURE_SIZE_BITS) * self.res
            t[absent] = 0
            self.cols[("s_ab", "s_ba")[d]].append(size)
            self.cols[("t_ab", "t_ba")[d]].append(t)

    def take_all(self) -> Block:
        """Take every stored flow (in the order they finished); the store starts empty again."""
        out = self.result()
        self.cols = {k: [] for k in self._names()}
        return out

    def pop_before(self, bound: int) -> Block:
        """Take the flows that started before ``bound`` (ns); keep the others."""
        flows, feats = self.result()
        early = flows["start"] < bound
        late = ~early
        self.cols = {k: [] for k in self._names()}
        for d in (flows, feats):
            for k, v in d.items():
                self.cols[k].append(v[late])
        self.rows = int(late.sum())
        return {k: v[early] for k, v in flows.items()}, {k: v[early] for k, v in feats.items()}

    def result(self) -> Block:
        """(flows, features) columns in a/b endpoint order; the chunks are consumed."""
        self.rows = 0
        out: dict[str, np.ndarray] = {}
        for name in list(self.cols):
            chunks = self.cols.pop(name)
            if chunks:
                out[name] = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            elif name in self._FROM:
                out[name] = np.zeros(0, self._FROM[name][2])
            elif name in self._PACKED:
                out[name] = np.zeros(0, self._PACKED[name])
            else:
                out[name] = np.zeros((0, self.n), np.int32 if name[0] == "s" else np.int64)
            del chunks  # this column's chunks are freed before the next column is gathered
        feats = {k: out.pop(k) for k in self._FEAT}
        return out, feats
