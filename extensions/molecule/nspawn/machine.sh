#!/usr/bin/env bash
# Boot or tear down the test "instance" of the drain_worker scenario: a real systemd in a systemd-nspawn
# container with its own network namespace, joined to the host by a veth pair on a private /30.
#
#   machine.sh up   STATE_DIR ROOTFS   boot; writes STATE_DIR/{nspawn.pid,init.pid,address}; prints the init pid
#   machine.sh down [STATE_DIR]        stop the container, delete the namespace and the veth; safe to repeat
#
# Everything made here carries the name in $DW_MACHINE (default ec2spot-dw) and is recorded in STATE_DIR, so
# `down` removes exactly what `up` made, also after a failed or interrupted `up`.
set -euo pipefail

MACHINE=${DW_MACHINE:-ec2spot-dw}
NETNS=$MACHINE
HOST_IF=${DW_HOST_IF:-dwh0}          # host end of the veth (interface names are limited to 15 bytes)
GUEST_IF=${DW_GUEST_IF:-dwc0}        # container end, inside $NETNS
HOST_ADDR=${DW_HOST_ADDR:-10.213.0.1}
GUEST_ADDR=${DW_GUEST_ADDR:-10.213.0.2}
PREFIX=30
BOOT_TIMEOUT=${DW_BOOT_TIMEOUT:-60}

die() { echo "machine.sh: $*" >&2; exit 1; }

# The container's init is the only child of the nspawn process.
init_pid_of() {
    local nspawn_pid=$1 children
    children=$(cat "/proc/$nspawn_pid/task/$nspawn_pid/children" 2>/dev/null || true)
    # Word splitting on purpose: the children file is a space-separated list of pids.
    # shellcheck disable=SC2086
    set -- $children
    [[ $# -ge 1 ]] && echo "$1"
}

up() {
    local state_dir=$1 rootfs=$2
    [[ -x $rootfs/usr/lib/systemd/systemd ]] || die "no bootable rootfs at $rootfs"
    mkdir -p "$state_dir"
    if [[ -e /run/netns/$NETNS ]] || ip link show "$HOST_IF" >/dev/null 2>&1; then
        die "namespace $NETNS or interface $HOST_IF already exists (another run, or a leftover: machine.sh down)"
    fi

    ip netns add "$NETNS"
    echo "$NETNS" >"$state_dir/netns"
    ip link add "$HOST_IF" type veth peer name "$GUEST_IF" netns "$NETNS"
    ip addr add "$HOST_ADDR/$PREFIX" dev "$HOST_IF"
    ip link set "$HOST_IF" up
    ip -n "$NETNS" link set lo up
    ip -n "$NETNS" addr add "$GUEST_ADDR/$PREFIX" dev "$GUEST_IF"
    ip -n "$NETNS" link set "$GUEST_IF" up
    ip -n "$NETNS" route add default via "$HOST_ADDR"

    # setsid + closed descriptors: the container must outlive the Ansible task that starts it, and Ansible
    # waits for every process holding the task's stdout.
    setsid systemd-nspawn -q -D "$rootfs" --machine="$MACHINE" --register=no --keep-unit -b \
        --volatile=overlay --network-namespace-path="/run/netns/$NETNS" \
        </dev/null >"$state_dir/console.log" 2>&1 &
    local nspawn_pid=$!
    echo "$nspawn_pid" >"$state_dir/nspawn.pid"

    local deadline=$((SECONDS + BOOT_TIMEOUT)) init_pid="" status=""
    while ((SECONDS < deadline)); do
        kill -0 "$nspawn_pid" 2>/dev/null || die "systemd-nspawn exited during boot; console: $(tail -5 "$state_dir/console.log")"
        init_pid=$(init_pid_of "$nspawn_pid" || true)
        if [[ -n $init_pid ]]; then
            status=$(nsenter -t "$init_pid" -m -u -i -n -p systemctl is-system-running 2>/dev/null || true)
            [[ $status == running || $status == degraded ]] && break
        fi
        sleep 0.2
    done
    [[ $status == running || $status == degraded ]] || die "container not up within ${BOOT_TIMEOUT}s (state: ${status:-none})"
    echo "$init_pid" >"$state_dir/init.pid"
    echo "$GUEST_ADDR" >"$state_dir/address"
    echo "$init_pid"
}

# Without a pid file (a run that died before writing it, or a cleanup from another shell), the container is
# found through its network namespace: its init runs there, and the init's parent is the nspawn process.
nspawn_pid_in_netns() {
    local pid parent
    [[ -e /run/netns/$NETNS ]] || return 0
    for pid in $(ip netns pids "$NETNS" 2>/dev/null); do
        parent=$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        if [[ -n $parent && $(cat "/proc/$parent/comm" 2>/dev/null) == systemd-nspawn ]]; then
            echo "$parent"
            return 0
        fi
    done
}

down() {
    local state_dir=${1:-} nspawn_pid=""
    [[ -n $state_dir && -f $state_dir/nspawn.pid ]] && nspawn_pid=$(cat "$state_dir/nspawn.pid")
    [[ -n $nspawn_pid ]] || nspawn_pid=$(nspawn_pid_in_netns)
    # Only the recorded pid, and only while it still is a systemd-nspawn (pids are reused).
    if [[ -n $nspawn_pid && $(cat "/proc/$nspawn_pid/comm" 2>/dev/null) == systemd-nspawn ]]; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true      # nspawn turns TERM into an orderly container shutdown
        for _ in $(seq 1 100); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
    fi
    [[ -n $state_dir ]] && rm -f "$state_dir/nspawn.pid" "$state_dir/init.pid" "$state_dir/netns"
    ip link del "$HOST_IF" 2>/dev/null || true          # deleting one end removes the pair
    if [[ -e /run/netns/$NETNS ]]; then
        ip netns del "$NETNS"
    fi
}

case ${1:-} in
    up) [[ $# -eq 3 ]] || die "usage: machine.sh up STATE_DIR ROOTFS"; up "$2" "$3" ;;
    down) [[ $# -le 2 ]] || die "usage: machine.sh down [STATE_DIR]"; down "${2:-}" ;;
    *) die "usage: machine.sh up STATE_DIR ROOTFS | down [STATE_DIR]" ;;
esac
