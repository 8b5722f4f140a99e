"""`make demo`: a few commands through `corral run`, showing what a sandboxed command may and may not do.

Each line runs the real CLI (python -m supervisor.cli run ...) in a scratch workspace and prints the exit
status with a verdict. Exits 0 when every command behaved as expected.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

CORRAL = [sys.executable, "-m", "supervisor.cli", "run"]
ROOT = Path(__file__).resolve().parents[1]

GREEN, RED, DIM, RESET = ("\033[32m", "\033[31m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("",) * 4


def main() -> int:
    ws = Path(tempfile.mkdtemp(prefix="corral-demo-", dir="/var/tmp"))
    outside = Path(tempfile.mkdtemp(prefix="corral-demo-host-", dir="/var/tmp"))
    (outside / "host.txt").write_text("host file\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    env = dict(os.environ, DEMO_API_KEY="sk-demo-secret", PYTHONPATH=str(ROOT))
    py = "/usr/bin/python3"
    cases: list[tuple[str, list[str], str]] = [
        ("write in the workspace", ["/bin/sh", "-c", "echo hi > notes.txt && cat notes.txt"], "ok"),
        (
            "build and run C with gcc",
            ["/bin/sh", "-c", "printf 'int main(){return 0;}' > a.c && gcc -o a a.c && ./a"],
            "ok",
        ),
        (
            "loopback server inside",
            [
                py,
                "-c",
                "import socket;s=socket.socket();s.bind(('127.0.0.1',0));s.listen();"
                "c=socket.create_connection(s.getsockname());print('loopback ok')",
            ],
            "ok",
        ),
        ("write outside the workspace", ["/bin/sh", "-c", f"echo pwned > {outside}/host.txt"], "blocked"),
        ("write /etc", ["/bin/sh", "-c", "echo x >> /etc/hostname"], "blocked"),
        (
            "connect to a host port",
            [py, "-c", f"import socket;socket.create_connection(('127.0.0.1',{port}),timeout=1)"],
            "blocked",
        ),
        ("read a secret variable", ["/bin/sh", "-c", 'test -z "$DEMO_API_KEY"'], "ok"),
        ("see host processes", ["/bin/sh", "-c", "test $(ls /proc | grep -c '^[0-9]') -lt 10"], "ok"),
        ("create a user namespace", ["/usr/bin/unshare", "-U", "true"], "blocked"),
        ("run past --timeout 1", ["--timeout", "1", "--", "/bin/sleep", "10"], "killed"),
    ]
    failures = 0
    print(f"workspace {ws}\n")
    try:
        for title, cmd, expect in cases:
            args = cmd if cmd[0].startswith("--") else ["--", *cmd]
            p = subprocess.run([*CORRAL, *args], cwd=ws, env=env, capture_output=True, text=True, timeout=60)
            got = "ok" if p.returncode == 0 else ("killed" if p.returncode == 137 else "blocked")
            good = got == expect
            failures += not good
            mark = f"{GREEN}as expected{RESET}" if good else f"{RED}UNEXPECTED{RESET}"
            detail = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[-1][:70]
            print(f"  {title:32} exit {p.returncode:3}  {got:8} {mark}  {DIM}{detail}{RESET}")
        intact = (outside / "host.txt").read_text() == "host file\n"
        listener.setblocking(False)
        try:
            listener.accept()
            reached = True
        except BlockingIOError:
            reached = False
        print(f"\n  host file unchanged: {intact}; host listener reached: {reached}")
        failures += (not intact) + reached
    finally:
        listener.close()
        shutil.rmtree(ws, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
    print(f"\n{'all behaved as expected' if not failures else f'{failures} unexpected'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
