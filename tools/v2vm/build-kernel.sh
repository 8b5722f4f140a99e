#!/bin/bash
# Build a User-Mode-Linux kernel for ../shared/v2vm/run-in-v2-vm.sh with two fixes the shared kernel lacks:
# - uml-xstate.patch: it boots on hosts whose XSAVE area is larger than UML 6.12 expects (AVX-512 + AMX: the
#   shared kernel panics at boot with "ptrace set fp regs failed, errno = 14");
# - uml-fork-zero-entry.patch: a fork that fails part-way (a fatal signal while the parent forks, as when a
#   test kills a fork storm) no longer panics the guest ("Kernel mode fault at addr 0x40e" in flush_tlb_mm:
#   the UML process aborts, exit 134, and the run reports no status), on any host.
# Same recipe as ../shared/v2vm/build-uml-kernel.sh (Debian's linux-source-6.12 from trixie, fetched with a
# private apt configuration that leaves the system's sources alone, + ../shared/v2vm/uml-v2vm.config) plus
# the uml-*.patch files beside this script (applied in name order) and the config additions below.
#
#   tools/v2vm/build-kernel.sh            build into ${XDG_CACHE_HOME:-~/.cache}/corral-v2vm/linux-v2vm
#   tools/v2vm/build-kernel.sh --stamp    print the hash of the inputs (kernel.sh rebuilds when it changes)
#
# ~5 min on 2 cores; needs ~2 GB in the cache dir while building (the source tree is deleted afterwards, the
# 150 MB source .deb is kept). Missing build tools are apt-get installed, as the shared script does.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SHARED="$(cd "$HERE/../../.." && pwd)/shared/v2vm" # ../shared/v2vm beside the repository
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/corral-v2vm"
OUT="$CACHE/linux-v2vm"
PATCHES=("$HERE"/uml-*.patch)
# Config additions: a release name that says which kernel this is (uname -r: 6.12.x-uml-cgv2-corral).
EXTRA_CONFIG='CONFIG_LOCALVERSION="-uml-cgv2-corral"'

# The inputs that make the kernel what it is; kernel.sh rebuilds when they change.
stamp() { { cat "${PATCHES[@]}" "$SHARED/uml-v2vm.config"; echo "$EXTRA_CONFIG"; } | sha256sum | cut -c1-16; }
if [ "${1:-}" = --stamp ]; then stamp; exit 0; fi
exec >&2 # progress only: nothing of this may land on a caller's stdout (kernel.sh prints just a path)
[ -f "$SHARED/uml-v2vm.config" ] || { echo "build-kernel: $SHARED/uml-v2vm.config is absent" >&2; exit 1; }

mkdir -p "$CACHE"
# kernel.sh already holds this lock while it checks and builds; a direct call takes it here.
if [ -z "${CORRAL_V2VM_LOCKED:-}" ]; then
    exec 9>"$CACHE/.lock"
    flock 9
fi

need=()
for t in gcc:gcc make:make flex:flex bison:bison bc:bc xz:xz-utils patch:patch; do
    command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "build-kernel: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

B="$CACHE/build"; A="$CACHE/apt"
mkdir -p "$B" "$A/lists/partial" "$A/cache/archives/partial"
# Same mirror as the system's own Debian source, suite trixie (as ../shared/v2vm/build-uml-kernel.sh).
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
echo "deb $MIRROR trixie main" > "$A/sources.list"
APTOPT=(-o "Dir::Etc::SourceList=$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
cd "$B"
if ! ls linux-source-6.12_*_all.deb >/dev/null 2>&1; then
    apt-get "${APTOPT[@]}" update -qq
    apt-get "${APTOPT[@]}" download linux-source-6.12
fi
# Always a fresh tree, so the patch applies to pristine sources.
rm -rf linux-source-6.12 usr
dpkg-deb --fsys-tarfile linux-source-6.12_*_all.deb | tar -x ./usr/src/linux-source-6.12.tar.xz
tar -xJf usr/src/linux-source-6.12.tar.xz && rm -rf usr
cd linux-source-6.12
for p in "${PATCHES[@]}"; do
    patch -p1 --forward --no-backup-if-mismatch < "$p" ||
        { echo "build-kernel: $p does not apply to $(ls "$B"/linux-source-6.12_*_all.deb)" >&2; exit 1; }
done
make ARCH=um x86_64_defconfig >/dev/null
printf '%s\n' "$EXTRA_CONFIG" > "$B/extra.config"
./scripts/kconfig/merge_config.sh -m .config "$SHARED/uml-v2vm.config" "$B/extra.config" >/dev/null
make ARCH=um olddefconfig >/dev/null
grep -q '^CONFIG_SECURITY_LANDLOCK=y' .config
grep -q '^CONFIG_LOCALVERSION="-uml-cgv2-corral"' .config
echo "build-kernel: building ($(nproc) jobs; log: $B/build.log)"
if ! nice make ARCH=um -j"$(nproc)" linux >"$B/build.log" 2>&1; then
    tail -30 "$B/build.log" >&2
    echo "build-kernel: kernel build failed (full log: $B/build.log)" >&2
    exit 1
fi
strip -o "$OUT.tmp" linux
mv -f "$OUT.tmp" "$OUT"
stamp > "$OUT.stamp"
cd "$B" && rm -rf linux-source-6.12
echo "build-kernel: built $OUT" >&2
