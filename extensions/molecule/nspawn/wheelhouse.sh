#!/usr/bin/env bash
# Build (once) the wheelhouse of the worker's dependencies for the test container, which has no route to a
# package index: the role installs from it with pip --no-index (drain_worker_wheelhouse).
#
# Built with the host's Python 3.11 (the container runs Debian's 3.11, so binary wheels fit), cached under
# build/ keyed by the worker's pyproject.toml and the extras built in. The extras' dependencies are in it too
# (boto3 for `sqs`, which the role installs with drain_worker_queue_url), so one wheelhouse serves both
# scenarios. The worker's own wheel is left out: the role builds that one from the collection's source, and a
# second copy in the wheelhouse could shadow it.
#
# Usage: wheelhouse.sh PYTHON [CACHE_DIR]   prints the wheelhouse directory on stdout.
set -euo pipefail

PYTHON=${1:?usage: wheelhouse.sh PYTHON [CACHE_DIR]}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
CACHE_DIR=${2:-$REPO/build/wheelhouse}
WORKER=$REPO/worker

EXTRAS=sqs
key=$({ cat "$WORKER/pyproject.toml"; echo "extras: $EXTRAS"; } | sha256sum | cut -c1-12)
target=$CACHE_DIR/$key
if [[ -f $target/.complete ]]; then
    echo "$target"
    exit 0
fi

mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/.build.XXXXXX")
src=$(mktemp -d)
trap 'rm -rf "$work" "$src"' EXIT
# Out of tree, so the worker's directory gets no build/ or *.egg-info from this.
cp -r "$WORKER/pyproject.toml" "$WORKER/spot_drain_worker" "$src/"
[[ -f $WORKER/README.md ]] && cp "$WORKER/README.md" "$src/"
"$PYTHON" -m pip wheel -q --wheel-dir "$work" "${src}[${EXTRAS}]" >&2
rm -f "$work"/spot_drain_worker-*.whl
touch "$work/.complete"
rm -rf "$target"
mv "$work" "$target"
echo "$target"
