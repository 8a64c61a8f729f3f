"""Which compiled kernels the flow meter runs: ahead-of-time (built at setup) or numba JIT.

The kernels (``_decode.walk``, ``_ring.tpacket3_records``, the ``_meter_kernels`` functions and
the monitor's ``_forest_kernel.forest_proba``) are numba code. Run through numba's JIT, every
process pays for importing numba and for its first dispatch (type and target registries) before
the first packet: about 0.6 s, a third of metering a 2 M-packet capture.
``python -m iotwatch.flowmeter.build_aot`` (run by ``make setup``) compiles the same functions
once, with numba's ahead-of-time compiler, into an extension module named after a hash of the
kernel sources; importing it costs under a millisecond and numba is not imported at all.

``IOTWATCH_KERNELS``: ``auto`` (default: the ahead-of-time module when one was built from the
current sources, else JIT), ``jit`` (always JIT), ``aot`` (the ahead-of-time module or an
error). Both give the same results (``tests/flowmeter/test_aot.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from iotwatch.errors import ConfigError

HERE = Path(__file__).resolve().parent
# what the compiled module depends on: the kernels, the signatures the build declares, and the
# modules that allocate the arrays the kernels are called with (their dtypes and layouts)
SOURCES = ("_decode.py", "_ring.py", "_meter_kernels.py", "build_aot.py", "reader.py", "engine.py",
           "flowtable.py", "reorder.py", "arrow_table.py",
           "../monitor/_forest_kernel.py", "../monitor/forest.py")  # fmt: skip


def _cpu_id() -> bytes:
    """The CPU the module is compiled for (``target_cpu = "host"``): its model and features."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            first = fh.read().split("\n\n", 1)[0]
        keep = [line for line in first.splitlines() if line.startswith(("model name", "flags"))]
        return "\n".join(keep).encode()
    except OSError:
        import platform

        return f"{platform.machine()} {platform.processor()}".encode()


def source_tag() -> str:
    """A short hash of the kernel sources, the numba version and the CPU they compile for."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    h.update(_cpu_id())
    # numba's version, read from its files without importing it (importlib.metadata: 50 ms)
    spec = importlib.util.find_spec("numba")
    if spec is not None and spec.origin:
        version_file = Path(spec.origin).with_name("_version.py")
        if version_file.is_file():
            h.update(version_file.read_bytes())
    return h.hexdigest()[:12]


def aot_module_name() -> str:
    return f"_aot_{source_tag()}"


def _load_aot() -> ModuleType | None:
    try:
        return importlib.import_module(f"iotwatch.flowmeter.{aot_module_name()}")
    except ImportError:
        return None


MODE = os.environ.get("IOTWATCH_KERNELS", "auto").strip().lower() or "auto"
if MODE not in ("auto", "jit", "aot"):
    raise ConfigError(f"IOTWATCH_KERNELS must be auto, jit or aot, not {MODE!r}")
AOT: ModuleType | None = None if MODE == "jit" else _load_aot()
if MODE == "aot" and AOT is None:
    raise ConfigError(
        f"IOTWATCH_KERNELS=aot but no compiled kernels match these sources ({aot_module_name()}); "
        "build them with: python -m iotwatch.flowmeter.build_aot"
    )


def njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` when the kernels run JIT; with the ahead-of-time module the decorated
    Python functions are only definitions (the module's compiled ones replace the exports)."""
    if AOT is not None:
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn
    import numba

    return numba.njit(*args, **kwargs)


def use_aot(namespace: dict[str, Any], exports: tuple[str, ...]) -> None:
    """Replace a kernel module's exported functions by the ahead-of-time compiled ones."""
    if AOT is None:
        return
    for name in exports:
        namespace[name] = getattr(AOT, name)


def kind() -> str:
    """'aot' or 'jit': what this process runs."""
    return "aot" if AOT is not None else "jit"
