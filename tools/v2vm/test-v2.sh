#!/bin/bash
# Run the cgroup v2 tests (pytest -m cgroup_v2 tests/kernel) inside the ../shared/v2vm User-Mode-Linux guest,
# with a kernel that boots on this host (tools/v2vm/kernel.sh). Extra arguments go to pytest.
# Skips, exit 0, when ../shared/v2vm is absent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SHARED="$(cd "$ROOT/.." && pwd)/shared/v2vm"
if [ ! -d "$SHARED" ]; then
    echo "test-v2: SKIPPED the cgroup v2 VM tests: $SHARED is absent (../shared/v2vm beside the repository)"
    exit 0
fi
KERNEL="$("$ROOT/tools/v2vm/kernel.sh")"
cd "$ROOT"
V2VM_KERNEL="$KERNEL" exec "$SHARED/run-in-v2-vm.sh" --timeout 900 -C "$ROOT" \
    "$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider -m cgroup_v2 tests/kernel "$@"
