"""Build the offline HTML template of `dvc plots show` (vega built in, no CDN).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so without internet the
page is blank. `python -m iotwatch.plots_offline` writes ``.dvc/plots/offline.html`` with the
three libraries inlined, at the versions DVC's renderer asks for, taken from the npm registry
with `npm pack` and checked against the pinned integrity hashes; ``.dvc/config``
(``plots.html_template``) makes `dvc plots show` use it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from iotwatch.errors import IotwatchError

# package@version (what dvc_render's vega page loads) -> (file in the tarball, sha512 integrity)
LIBRARIES = {
    "vega@5.20.2": (
        "package/build/vega.min.js",
        "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    "vega-lite@5.2.0": (
        "package/build/vega-lite.min.js",
        "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    "vega-embed@6.18.2": (
        "package/build/vega-embed.min.js",
        "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
}
TEMPLATE = Path(".dvc/plots/offline.html")
# DVC replaces these three placeholders (plain text replacement, so inlined code is safe).
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>iotwatch: DVC plots</title>
SCRIPTS
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        img { max-width: 640px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _fetch(spec: str, member: str, integrity: str, work: Path) -> str:
    """The JS file ``member`` of npm package ``spec``, after checking the tarball's hash."""
    try:
        out = subprocess.run(
            ["npm", "pack", "--silent", spec], cwd=work, capture_output=True, text=True, check=True
        )
    except FileNotFoundError:
        raise IotwatchError(
            "npm not found: install Node.js (Debian: apt-get install npm)"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise IotwatchError(f"npm pack {spec} failed: {exc.stderr.strip()[:300]}") from None
    tarball = work / out.stdout.strip().splitlines()[-1]
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        raise IotwatchError(f"{spec}: tarball hash {digest} is not the pinned {integrity}")
    with tarfile.open(tarball) as tar:
        f = tar.extractfile(member)
        if f is None:
            raise IotwatchError(f"{spec}: no {member} in the package")
        code = f.read().decode("utf-8")
    if "</script" in code or any(p in code for p in PLACEHOLDERS):
        raise IotwatchError(f"{spec}: {member} cannot be inlined in an HTML template")
    return code


def build(out: Path = TEMPLATE) -> Path:
    """Write the template with the libraries inlined."""
    with tempfile.TemporaryDirectory(prefix="iotwatch-vega-") as tmp:
        scripts = [
            f"    <script>/* {spec} (npm) */\n{_fetch(spec, member, integrity, Path(tmp))}\n"
            "    </script>"
            for spec, (member, integrity) in LIBRARIES.items()
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.replace("SCRIPTS", "\n".join(scripts)), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iotwatch.plots_offline", description=__doc__)
    parser.add_argument("--out", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except IotwatchError as exc:
        print(f"plots_offline: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
