"""Which files are captures: a file named on the command line, or every capture in a folder.

One rule for ``iotwatch flows DIR`` and the pipeline's flows stage (``iotwatch.ingest``):
files are recognised by their magic number (pcap, pcapng, gzip), never by their name, and
hidden files are left out (editors' and our own temporary files).
"""

from __future__ import annotations

from pathlib import Path

from iotwatch.errors import InputError


def capture_magics() -> tuple[bytes, ...]:
    """The leading bytes of every file the flow meter reads (its reader's own table)."""
    from iotwatch.flowmeter.reader import GZIP_MAGIC, PCAP_MAGICS, PCAPNG_MAGIC

    return (*PCAP_MAGICS, PCAPNG_MAGIC, GZIP_MAGIC)


def list_captures(path: Path) -> list[Path]:
    """A capture file, or every capture (recognised by magic number) under a folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such capture file or directory")
    magics = capture_magics()
    found = []
    for p in sorted(path.rglob("*")):
        if p.name.startswith(".") or not p.is_file():
            continue
        try:
            with p.open("rb") as fh:
                head = fh.read(4)
        except OSError as exc:
            raise InputError(f"{p}: cannot read it ({exc.strerror or exc})") from None
        if head.startswith(magics):
            found.append(p)
    return found


def expand_captures(paths: list[Path]) -> list[Path]:
    """Command-line arguments to capture files: files as given, folders listed
    (``list_captures``); a folder without captures is an error naming it."""
    files: list[Path] = []
    for path in paths:
        found = list_captures(path)
        if not found:
            raise InputError(f"{path}: no capture files found (pcap, pcapng or gzip)")
        files.extend(found)
    return files
