"""The binary wheel is what other machines install: tools/build_wheel.py builds it and auditwheel repairs it
to a manylinux tag; it is then installed into a fresh venv with no compiler on PATH (so nothing can be
compiled at install time) and the installed package, not this source tree, runs real sandboxes: `corral
--version`, `corral run -- /bin/echo hi`, `Supervisor().run(...)` under `profiles.workspace_write` and a
memory-limit violation, the way the demo's first calls do.

The interpreters tested: the one running the tests (Debian's 3.11 in CI), plus any listed in
$CORRAL_WHEEL_PYTHONS (space-separated paths of other CPythons with pip and venv, e.g. pyenv's 3.12 and 3.13
on a developer's machine; CI installs only Debian's packages, which carry 3.11 alone).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.kernel]

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tools" / "build_wheel.py"
SCRATCH = Path("/var/tmp/corral-tests")
# Every name under which a C compiler could be found; none may be reachable while the wheel installs.
COMPILERS = ("cc", "gcc", "c99", "c89", "musl-gcc", "clang", "tcc", "x86_64-linux-gnu-gcc")
# The only host tools the install and the runs get on PATH besides the venv's own bin/.
TOOLS = ("sh", "env", "uname")
MANYLINUX = re.compile(r"^cp3\d+-cp3\d+-manylinux_2_\d+_x86_64$")


def _interpreters() -> list[str]:
    return [sys.executable, *os.environ.get("CORRAL_WHEEL_PYTHONS", "").split()]


def _run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def ws() -> Iterator[Path]:
    SCRATCH.mkdir(mode=0o755, exist_ok=True)
    d = SCRATCH / f"wheel-{uuid.uuid4().hex[:10]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


SNIPPET = textwrap.dedent(
    """
    import sys

    import anyio

    import supervisor
    from policies import profiles
    from supervisor import Supervisor


    async def main() -> None:
        ws = sys.argv[1]
        print("module", supervisor.__file__)
        async with Supervisor() as sup:
            write = ["/bin/sh", "-c", "echo written > note.txt && /bin/cat note.txt"]
            r = await sup.run(write, policy=profiles.workspace_write(ws))
            print("run", r.exit_code, r.stdout.decode().strip(), r.violation, repr(r.stderr[-300:]))
            hog = "b = []\\nfor i in range(160): b.append(bytearray(8 << 20))\\nprint('survived')"
            capped = profiles.workspace_write(ws, memory="64M")
            r = await sup.run(["/usr/bin/python3", "-c", hog], policy=capped)
            v = r.violation
            kind, limit = (v.kind, int(v.limit)) if v else (None, None)
            print("hog", r.exit_code, kind, limit, b"survived" in r.stdout)


    anyio.run(main)
    """
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("python", _interpreters())
def test_repaired_wheel_installs_without_a_compiler_and_runs_sandboxes(
    python: str, tmp_path: Path, ws: Path
) -> None:
    # Build and repair (the same script `make wheel` runs).
    p = subprocess.run(
        [sys.executable, str(BUILD), "--python", python, "--out", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    wheel_path, tag = p.stdout.strip().splitlines()[-1].split("\t")
    wheel = Path(wheel_path)

    # An honest manylinux tag: in the file name, in WHEEL, and auditwheel agrees the wheel satisfies it.
    assert MANYLINUX.match(tag), tag
    assert wheel.name.endswith(f"-{tag}.whl")
    scripts = Path(sys.executable).parent
    show = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", str(wheel)],
        env=dict(os.environ, PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert show.returncode == 0, show.stderr
    assert f'"{tag.split("-")[-1]}"' in " ".join(show.stdout.split()), show.stdout

    # The wheel carries the init as an executable regular file, and the extension for this interpreter.
    with zipfile.ZipFile(wheel) as z:
        infos = {i.filename: i for i in z.infolist()}
    init = infos["supervisor/sandbox/corral-init"]
    mode = init.external_attr >> 16
    assert stat.S_ISREG(mode), oct(mode)
    assert mode & 0o111 == 0o111, oct(mode)
    abi = tag.split("-")[0].removeprefix("cp")
    extension = rf"supervisor/sandbox/_cinit\.cpython-{abi}-x86_64-linux-gnu\.so"
    assert any(re.fullmatch(extension, n) for n in infos), sorted(infos)

    # A machine view with no compiler: PATH is the venv's bin/ and a directory of a few symlinked tools.
    tools = tmp_path / "tools"
    tools.mkdir()
    for t in TOOLS:
        found = shutil.which(t)
        if found:
            (tools / t).symlink_to(found)
    venv = tmp_path / "venv"
    base = subprocess.run(
        [python, "-c", "import sys; print(getattr(sys, '_base_executable', sys.executable))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    r = subprocess.run(
        [base, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    path = f"{venv / 'bin'}{os.pathsep}{tools}"
    assert [c for c in COMPILERS if shutil.which(c, path=path)] == []
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "CC", "CFLAGS"}}
    env.update(PATH=path, VIRTUAL_ENV=str(venv), PYTHONDONTWRITEBYTECODE="1")
    py = str(venv / "bin" / "python")

    r = _run([py, "-m", "pip", "install", "-q", str(wheel)], env, tmp_path, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # The installed package (not this checkout) is what runs, and it finds its init beside the extension.
    r = _run(
        [
            py,
            "-c",
            "import importlib.resources as ir, os, supervisor.sandbox._cinit as c; "
            "i = ir.files('supervisor.sandbox') / 'corral-init'; "
            "print(c.__file__); print(i); print(os.access(i, os.X_OK))",
        ],
        env,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    ext, init_path, executable = r.stdout.split()
    site = str(venv / "lib")
    assert ext.startswith(site), ext
    assert init_path.startswith(site), init_path
    assert executable == "True"

    corral = str(venv / "bin" / "corral")
    r = _run([corral, "--version"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"corral {wheel.name.split('-')[1]}"

    r = _run([corral, "run", "--", "/bin/echo", "hi"], env, ws)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr

    r = _run([py, "-c", SNIPPET, str(ws)], env, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["module"].startswith(site), lines["module"]
    assert lines["run"].startswith("0 written None"), lines["run"]
    assert (ws / "note.txt").read_text() == "written\n"  # checked from outside the sandbox
    assert lines["hog"] == f"137 memory {64 << 20} False"
