"""Compile the flow meter's kernels (and the monitor's forest kernel) ahead of time:
``python -m iotwatch.flowmeter.build_aot``.

Writes ``iotwatch/flowmeter/_aot_<tag>.<ext>`` (``_jit.source_tag()``: a hash of the kernel
sources and numba's version), which ``_jit`` loads instead of JIT-compiling; a module built from
other sources is never loaded (and is removed here). ``make setup`` runs this; without a C
compiler it fails with a message and the kernels stay JIT (same results, ~0.6 s more per run).

How: numba's ahead-of-time compiler (``numba.pycc``, pending deprecation in numba, so the JIT
stays the fallback) with one explicit signature per exported kernel (the ones the Python side
calls with: ``tests/flowmeter/test_aot.py`` checks that a JIT run compiles no other) and the
wrappers set to release the GIL, as ``nogil=True`` does for the JIT: the reader, the per-thread
flow tables and the writer run on both cores either way. Code is generated for this machine's
CPU (the module is built where it runs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any


def signatures() -> dict[str, tuple[str, Any]]:
    """Exported name -> (kernel module, numba signature)."""
    from numba import types as T

    def a(dtype: Any, ndim: int = 1, readonly: bool = False) -> Any:
        return T.Array(dtype, ndim, "C", readonly=readonly)

    i64, u64, i32, u16, u8, b1 = T.int64, T.uint64, T.int32, T.uint16, T.uint8, T.boolean
    f64 = T.float64
    # pool state after the hash table, as ``_Pool.state`` passes it
    pool = (a(i64), a(u64, 2), a(i64, 2), a(i64, 3), a(i64), a(i64), a(u64, 2), a(i64, 2),
            a(i64, 3))  # fmt: skip
    columns = (a(i64), a(i64), a(u8), a(u8), a(u64), a(u64), a(u64), a(u64), a(u16), a(u16),
               a(u8), a(i32), a(u64), a(u64), a(b1), a(i64))  # fmt: skip
    meter = "iotwatch.flowmeter._meter_kernels"
    return {
        "walk": ("iotwatch.flowmeter._decode", T.UniTuple(i64, 2)(
            a(u8, readonly=True), i64, i64, i64, i64, i64, i64, i64, i64, a(i64, 2),
            a(i64, 2), a(u64, 2), a(i32, 2), a(u16, 2), a(u8, 2), a(i64), a(i64))),
        "tpacket3_records": ("iotwatch.flowmeter._ring", T.none(
            a(u8), i64, i64, i64, a(u8), a(i64))),
        "meter_run": (meter, i64(
            T.Tuple(columns), T.Tuple(columns), i64, a(i64), i64, i64, a(b1), a(i64), i64,
            *pool)),
        "expire": (meter, i64(i64, i64, b1, i64, *pool)),
        "emit_slots": (meter, i64(a(i64), i64, i64, i64, b1, *pool)),
        "rehash": (meter, T.none(a(i64), a(u64, 2), a(i64, 2), i64)),
        "format_ips": (meter, T.Tuple((a(i32), a(u8)))(a(u64), a(u64))),
        "format_macs": (meter, T.Tuple((a(i32), a(u8)))(a(u64))),
        "gather_strings": (meter, T.Tuple((a(i32), a(u8)))(
            a(i32), a(u8, readonly=True), a(i64))),
        # the monitor's compiled forest (``iotwatch.monitor.forest``)
        "forest_proba": ("iotwatch.monitor._forest_kernel", T.none(
            a(f64, 2), a(i64), a(i64), a(i64), a(i64), a(f64), a(f64, 2), a(f64, 2))),
    }  # fmt: skip


def build(verbose: bool = True) -> Path:
    """Compile the kernels into the package folder; return the module's path."""
    os.environ["IOTWATCH_KERNELS"] = "jit"  # the kernel modules must define numba functions
    import importlib

    from iotwatch.flowmeter import _jit

    if _jit.AOT is not None:
        raise RuntimeError("imported with ahead-of-time kernels: run this in a fresh process")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's pending-deprecation notice
        import numba.pycc.compiler as pycc_compiler
        from numba.core.compiler import Flags
        from numba.pycc import CC

    class _NogilFlags(Flags):  # the exported wrappers release the GIL like nogil=True
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True

    name = _jit.aot_module_name()
    cc = CC(name)
    cc.target_cpu = "host"
    cc.verbose = False
    for export, (module, sig) in signatures().items():
        mod = importlib.import_module(module)
        cc.export(export, sig)(getattr(mod, export).py_func)
    t = time.perf_counter()
    original = pycc_compiler.Flags
    pycc_compiler.Flags = _NogilFlags
    try:
        with tempfile.TemporaryDirectory(prefix="iotwatch-aot-") as tmp:
            cc.output_dir = tmp
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cc.compile()
            (built,) = Path(tmp).iterdir()
            target = _jit.HERE / built.name
            for old in _jit.HERE.glob("_aot_*"):  # modules of other sources: never loaded
                old.unlink()
            built.replace(target)
    finally:
        pycc_compiler.Flags = original
    if verbose:
        print(f"build_aot: {target.name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return target


def main() -> int:
    try:
        build()
    except Exception as exc:  # a missing compiler, say: the JIT still works
        print(
            f"build_aot: could not compile the kernels ahead of time ({type(exc).__name__}: "
            f"{exc}); iotwatch flows will JIT-compile them (same results, ~0.6 s more per run)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
