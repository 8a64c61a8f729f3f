"""Rebuild the fault corpus: small captures that once made the flow meter give a wrong answer.

``.venv/bin/python tests/data/fault_corpus/build.py`` writes the files next to this script;
``expected.json`` says what each must give (``tests/flowmeter/test_fault_corpus.py``). Each is a
clean hand-made capture with one kind of damage put in by hand, the damage the fault campaign
(``bench/bench_faults.py``) found: kept as files so the cases stay fixed whatever the builders.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.flowmeter.handmade import T0, connection, udp, write_pcap  # noqa: E402

YEARS_12_7 = 400_000_000  # seconds: "about 12.7 years ahead"


def records(data: bytes) -> list[int]:
    """Byte offsets of the records of a little-endian classic pcap."""
    out, pos = [], 24
    while pos + 16 <= len(data):
        out.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return out


def patch(data: bytearray, offset: int, field: int, value: int) -> None:
    """Set 32-bit field ``field`` (0 ts_sec, 1 ts_frac, 2 incl_len, 3 orig_len) of a record."""
    struct.pack_into("<I", data, offset + 4 * field, value)


def busy(path: Path, n: int = 40) -> bytearray:
    """``n`` TCP connections 5 s apart (and DNS beside them) as a pcap; returns its bytes."""
    pk = []
    for i in range(n):
        pk += connection(T0 + 5 * i, sport=40000 + i)
        pk.append(udp(T0 + 5 * i + 0.1, "192.168.1.10", "8.8.8.8", 5353, 53))
    pk.sort(key=lambda p: float(p.time))
    write_pcap(path, pk)
    return bytearray(path.read_bytes())


def main() -> None:
    tmp = HERE / ".build.pcap"
    # one flipped byte makes a record's wire length 4 GiB (a 5-packet flow of 4,294,967,657 B)
    data = busy(tmp, 2)
    at = records(bytes(data))
    patch(data, at[3], 3, 0xFFFFFF00 | (struct.unpack_from("<I", data, at[3] + 12)[0] & 0xFF))
    (HERE / "wire_len_4gib.pcap").write_bytes(data)
    # a wire length shorter than the bytes captured
    data = busy(tmp, 2)
    at = records(bytes(data))
    patch(data, at[4], 3, 20)
    (HERE / "wire_len_short.pcap").write_bytes(data)
    # TSO/GSO style: IPv4 total length 0 and a wire length of 3 GiB (the IP length falls back
    # on the wire length)
    data = busy(tmp, 2)
    at = records(bytes(data))
    struct.pack_into(">H", data, at[4] + 16 + 14 + 2, 0)
    patch(data, at[4], 3, 3_000_000_000)
    (HERE / "ip_len_zero_wire_3gb.pcap").write_bytes(data)
    # two records about 12.7 years ahead in a busy capture (two adjacent, one alone)
    data = busy(tmp)
    at = records(bytes(data))
    for k in (60, 61, 200):
        sec = struct.unpack_from("<I", data, at[k])[0]
        patch(data, at[k], 0, sec + YEARS_12_7)
    (HERE / "clock_ahead_12y.pcap").write_bytes(data)
    # the first record stamped ahead, one near the end stamped at the epoch
    data = busy(tmp, 10)
    at = records(bytes(data))
    sec = struct.unpack_from("<I", data, at[0])[0]
    patch(data, at[0], 0, sec + YEARS_12_7)
    patch(data, at[-3], 0, 0)
    (HERE / "clock_first_ahead_epoch_late.pcap").write_bytes(data)
    # only an unsupported link type (USER0, 147): nothing can be metered
    data = busy(tmp, 1)
    struct.pack_into("<I", data, 20, 147)
    (HERE / "linktype_unsupported.pcap").write_bytes(data)
    tmp.unlink()


if __name__ == "__main__":
    main()
