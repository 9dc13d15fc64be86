#!/usr/bin/env bash
# Build (once) the Debian bookworm root file system the drain_worker scenario boots with systemd-nspawn.
#
# debootstrap takes ~45 s and ~300 MB, so the result is cached under the repository's ignored build dir and
# rebuilt only when the package list or the suite changes (the cache key is a hash of both). The tree is made
# in a temporary directory and renamed into place, so an interrupted build never leaves a half rootfs that a
# later run would mistake for a finished one.
#
# Usage: rootfs.sh [CACHE_DIR]   prints the path of the ready rootfs on stdout.
set -euo pipefail

SUITE=bookworm
# python3-venv: the role makes a virtualenv; python3-apt: the role's package task runs offline against
# already-installed packages; dbus: systemctl inside the container.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-apt,ca-certificates
CACHE_DIR=${1:-$(cd "$(dirname "$0")/../../.." && pwd)/build/nspawn}

# The mirror apt already uses on this machine (no other network is reachable).
mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [[ -z $uri ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

key=$(printf '%s %s\n' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
target="$CACHE_DIR/rootfs-$SUITE-$key"
if [[ -x $target/usr/lib/systemd/systemd && -x $target/usr/bin/python3 ]]; then
    echo "$target"
    exit 0
fi

for tool in debootstrap systemd-nspawn; do
    command -v "$tool" >/dev/null || { echo "rootfs.sh: $tool missing (apt-get install -y debootstrap systemd-container)" >&2; exit 2; }
done

mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/.rootfs-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work" "$(mirror)" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }

# A container booted from this tree must not wait for hardware, a console login or the network to be "up".
rm -f "$work/etc/machine-id" && : >"$work/etc/machine-id"   # empty: systemd makes a fresh one per boot
echo drain-worker-test >"$work/etc/hostname"
for unit in getty.target console-getty.service systemd-networkd-wait-online.service apt-daily.timer \
            apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sfn /dev/null "$work/etc/systemd/system/$unit"
done
# No package index inside the test container: apt must never try to reach one.
rm -f "$work/etc/apt/sources.list" && : >"$work/etc/apt/sources.list"
rm -rf "$work/var/cache/apt/archives/"*.deb "$work/var/lib/apt/lists/"* 2>/dev/null || true

rm -rf "$target"
mv "$work" "$target"
trap - EXIT
echo "$target"
