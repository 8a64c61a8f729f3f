"""dvc.yaml lists, for every stage, every project module the stage runs (directly or not).

The modules are derived from the code: the `iotwatch stage NAME` entry (cli.py, the pipeline
wiring), the stage's own module and its config's module, and every `iotwatch` module those
import, transitively (imports inside functions included: they run when the stage runs). A
stage whose code is not among its deps would leave its outputs stale under `dvc repro`.

Run this file as a script to print the deps each stage needs.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENTRY = ("iotwatch.cli", "iotwatch.pipeline.stages")
# Modules whose strings name modules they import only for one command or stage: the stage
# table (each stage's own module is added by stage_files) and the CLI's command table.
DYNAMIC_TABLES = {"iotwatch.pipeline.stages", "iotwatch.cli"}


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _lazy_table(package: str) -> dict[str, str]:
    """A package's lazy attributes: a module-level {"Name": "iotwatch.module"} dict in its
    __init__.py (resolved by its ``__getattr__``); importing ``Name`` from it runs that module."""
    path = _module_file(package)
    if path is None or path.name != "__init__.py":
        return {}
    table: dict[str, str] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        value = getattr(node, "value", None)
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(value, ast.Dict):
            for k, v in zip(value.keys, value.values, strict=True):
                if (
                    isinstance(k, ast.Constant)
                    and isinstance(v, ast.Constant)
                    and isinstance(v.value, str)
                    and _module_file(v.value)
                ):
                    table[str(k.value)] = v.value
    return table


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                todo += child.orelse
                continue
            todo.append(child)
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every iotwatch module the file imports (absolute or relative, any scope)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "iotwatch"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "iotwatch":
                continue
            found.add(mod)
            # `from iotwatch.synth import dataset` imports a submodule
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}")}
            lazy = _lazy_table(mod)
            found |= {lazy[a.name] for a in node.names if a.name in lazy}
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and name not in DYNAMIC_TABLES
            and path.name != "__init__.py"  # a package's lazy table: see _lazy_table
            and re.fullmatch(r"iotwatch(\.\w+)+", node.value)
            and _module_file(node.value)
        ):
            # a module named in a string is imported dynamically (lazy package attributes,
            # importlib.import_module): count it
            found.add(node.value)
    return found


def closure(roots: list[str]) -> set[Path]:
    """Files of the modules ``roots`` import, transitively, with their parent packages."""
    todo, seen, files = list(roots), set(), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = _module_file(name)
        if path is None:
            continue
        files.add(path)
        todo += sorted(_imports(name, path) - seen)
    return files


def stage_files(stage: str) -> set[Path]:
    from iotwatch.pipeline.stages import STAGES

    st = STAGES[stage]
    roots = [*ENTRY, st.module]
    if st.config:
        module, _, _ = st.config.rpartition(":")
        roots.append(module or st.module)
    return closure(roots)


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def dvc_stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    # a foreach stage (synth: one per generated dataset) keeps its definition under `do`
    return {name: st.get("do", st) for name, st in stages.items()}


def test_every_stage_depends_on_the_code_it_runs() -> None:
    from iotwatch.pipeline.stages import STAGES

    dvc = dvc_stages()
    assert set(dvc) == set(STAGES)
    missing = {
        name: sorted(
            str(f.relative_to(REPO))
            for f in stage_files(name)
            if not _covered(f, dvc[name].get("deps", []))
        )
        for name in STAGES
    }
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"dvc.yaml misses code deps: {missing}"


def test_every_listed_code_dep_exists() -> None:
    # a module moved or removed but still listed makes `dvc repro` fail with "No such file"
    stale = {
        name: [d for d in st.get("deps", []) if d.startswith("src/") and not (REPO / d).exists()]
        for name, st in dvc_stages().items()
    }
    stale = {k: v for k, v in stale.items() if v}
    assert not stale, f"dvc.yaml lists code that does not exist: {stale}"


def test_the_derivation_sees_lazy_imports() -> None:
    # classify imports viz (confusion plots) inside a function; the stage must depend on it.
    assert SRC / "iotwatch/viz.py" in stage_files("classify")
    assert SRC / "iotwatch/inventory.py" in stage_files("flows")
    assert SRC / "iotwatch/pipeline/stages.py" in stage_files("report")
    # `from iotwatch.flowmeter import meter_captures` resolves through the package's lazy table
    assert SRC / "iotwatch/flowmeter/meter.py" in stage_files("flows")
    # ...but the stage table does not make every stage depend on every other stage's module
    assert SRC / "iotwatch/classify.py" not in stage_files("flows")


if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    from iotwatch.pipeline.stages import STAGES

    for name in STAGES:
        print(f"{name}:")
        for f in sorted(stage_files(name)):
            print(f"  - {f.relative_to(REPO)}")
