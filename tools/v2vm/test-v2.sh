#!/bin/bash
# Run the cgroup v2 tests (pytest -m cgroup_v2 tests/kernel) inside the ../shared/v2vm User-Mode-Linux guest,
# with a kernel that boots on this host (tools/v2vm/kernel.sh). Extra arguments go to pytest.
# Skips, exit 0, when ../shared/v2vm is absent.
#
# The guest runs with --debug, its kernel log and the command's stderr kept in a file that is printed (its
# last 150 lines) when the run fails, so a VM that dies says why (a guest panic makes the UML kernel abort:
# exit 134, reported as 125). When the VM itself fails (run-in-v2-vm.sh exits 125 without the command
# reporting a status), the tests are run once more, saying so; a test failure, a timeout (124) or a second
# VM failure is never retried.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="$(cd "$ROOT/.." && pwd)/shared/v2vm"
if [ ! -d "$SHARED" ]; then
    echo "test-v2: SKIPPED the cgroup v2 VM tests: $SHARED is absent (../shared/v2vm beside the repository)"
    exit 0
fi
KERNEL="$("$ROOT/tools/v2vm/kernel.sh")"
cd "$ROOT"
LOG="$(mktemp -t corral-v2vm-stderr.XXXXXX)"
trap 'rm -f "$LOG"' EXIT
run() {
    local rc=0
    V2VM_KERNEL="$KERNEL" "$SHARED/run-in-v2-vm.sh" --debug --timeout 900 -C "$ROOT" \
        "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider -m cgroup_v2 tests/kernel "$@" 2>"$LOG" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "test-v2: exit $rc; the guest's stderr and kernel log (last 150 lines):" >&2
        tail -n 150 "$LOG" >&2
    fi
    return "$rc"
}
rc=0
run "$@" || rc=$?
if [ "$rc" -eq 125 ]; then
    echo "test-v2: the VM itself failed (exit 125; kernel $KERNEL on a$(grep -m1 'model name' /proc/cpuinfo |
        cut -d: -f2-) host); running the cgroup v2 tests once more" >&2
    rc=0
    run "$@" || rc=$?
fi
exit "$rc"
