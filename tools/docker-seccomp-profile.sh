#!/usr/bin/env bash
# Docker's own default seccomp profile (moby's profiles/seccomp/default.json), which
# tests/kernel/test_seccomp_profile.py loads as it is. Debian ships it inside the package of moby's Go source;
# this takes that one file out of the package (apt-get download, dpkg-deb) without installing the package or
# its Go dependencies, to the path the package itself would put it at. Needs root and `apt-get update` done.
set -euo pipefail
PKG=golang-github-docker-docker-dev
FILE=usr/share/gocode/src/github.com/docker/docker/profiles/seccomp/default.json
[ -s "/$FILE" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"  # apt fetches as its own user, _apt
(cd "$tmp" && apt-get download -qq "$PKG" >/dev/null)
mkdir -p "/$(dirname "$FILE")"
dpkg-deb --fsys-tarfile "$tmp"/"$PKG"_*.deb | tar -xO "./$FILE" > "/$FILE.tmp"
mv "/$FILE.tmp" "/$FILE"
