#!/bin/bash
# Print the path of a User-Mode-Linux kernel for
#   V2VM_KERNEL=$(tools/v2vm/kernel.sh) ../shared/v2vm/run-in-v2-vm.sh ...
# Ours: the patched kernel cached at ${XDG_CACHE_HOME:-~/.cache}/corral-v2vm/linux-v2vm, built first by
# build-kernel.sh (~4-7 min) when it is absent or was built from other inputs. The shared kernel
# (../shared/v2vm/uml/linux-v2vm) lacks its two fixes (it does not boot on AVX-512/AMX hosts, and a fork that
# a fatal signal interrupts panics it on any host, which made a CI run fail at random), so it is used only
# when ours cannot be built or does not boot, and if it boots, with a warning. Exits non-zero, saying why,
# when no kernel boots. Progress goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="$(cd "$HERE/../../.." && pwd)/shared/v2vm" # ../shared/v2vm beside the repository
RUN="$SHARED/run-in-v2-vm.sh"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/corral-v2vm"
OURS="$CACHE/linux-v2vm"

die() { echo "v2vm kernel: $*" >&2; exit 1; }
# True when the guest boots with kernel $1 and runs a command.
boots() { timeout 90 "$RUN" --kernel "$1" --timeout 20 -C /tmp /bin/true </dev/null >/dev/null 2>&1; }
# The shared kernel as the last resort, when ours cannot be had.
fallback() {
    if [ -x "$SHARED/uml/linux-v2vm" ] && boots "$SHARED/uml/linux-v2vm"; then
        echo "v2vm kernel: WARNING: $1; using the shared kernel $SHARED/uml/linux-v2vm, which a fork" \
            "interrupted by a fatal signal can panic (tools/v2vm/uml-fork-zero-entry.patch)" >&2
        echo "$SHARED/uml/linux-v2vm"
        exit 0
    fi
    die "$1, and the shared kernel does not boot here either; see why with:
    $RUN --debug --kernel $OURS /bin/true"
}

[ -x "$RUN" ] || die "$RUN is absent (../shared/v2vm beside the repository)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 # one build at a time; a second caller waits for it and then uses its kernel
if [ ! -x "$OURS" ] || [ "$(cat "$OURS.stamp" 2>/dev/null)" != "$("$HERE/build-kernel.sh" --stamp)" ]; then
    echo "v2vm kernel: building the patched kernel into $OURS (~4-7 min, once)" >&2
    start=$SECONDS
    CORRAL_V2VM_LOCKED=1 "$HERE/build-kernel.sh" >&2 || fallback "building the patched kernel failed (see above)"
    echo "v2vm kernel: built in $((SECONDS - start)) s" >&2
fi
boots "$OURS" || fallback "$OURS does not boot on this host"
echo "$OURS"
