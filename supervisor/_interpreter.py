"""The Python interpreter that corral's own helper processes run (the fork server, the stdio helpers),
pinned when corral is imported, before any sandbox ran.

They start later: a fork server for each Supervisor (and again after one died), a stdio helper when the first
file given as stdio needs one. Run by the path `sys.executable`, a virtualenv's `bin/python` in a directory
a sandbox may write (a project's `.venv` in its workdir) would be whatever a command put there, run as the
supervisor's user (root, for a root caller). Run from an fd of the file instead (`/proc/self/fd/N`, kept open
for the exec), it would still be told that path as its argv[0], from which Python finds `pyvenv.cfg` (beside
`bin/` and in it) and takes its standard library from the `home` that names: its `encodings` package is
imported before any line of the helper runs. So the helpers run the BASE interpreter (a virtualenv's
`home`, resolved through its symlinks now), from an fd of it, under that resolved path: no file of the
virtualenv is read. They need none: they run `-I -S`, the standard library and corral's own tree only
(docs/security.md, "The host side", "corral's own code in a writable root").
"""

from __future__ import annotations

import os
import sys


def _pin() -> tuple[str, int]:
    """The resolved path of the base interpreter and an O_PATH fd of it; (sys.executable, -1) when it cannot
    be opened."""
    base = getattr(sys, "_base_executable", "") or sys.executable
    try:
        path = os.path.realpath(base)
        return path, os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return sys.executable, -1


_PATH, _FD = _pin()


def python() -> tuple[str, str, tuple[int, ...]]:
    """How to start a helper interpreter: its argv[0], the file to execute (Popen's `executable`), and the
    fds the child must keep for that exec (Popen's `pass_fds`)."""
    if _FD < 0:
        return sys.executable, sys.executable, ()
    return _PATH, f"/proc/self/fd/{_FD}", (_FD,)
