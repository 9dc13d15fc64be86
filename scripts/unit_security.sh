#!/usr/bin/env bash
# Render the drain_worker role's systemd unit with the role's defaults, check it with
# `systemd-analyze verify`, and score its sandbox with `systemd-analyze security --offline=yes`.
#
# Fails when the unit does not verify or its exposure is above 2.0 (--threshold=20); prints the score.
# Usage: scripts/unit_security.sh [-e KEY=VALUE ...]   (extra vars are passed to the render, e.g. a grace period)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROLE=$REPO/roles/drain_worker
BIN=${BIN:-$REPO/.venv/bin}
export ANSIBLE_CONFIG=${ANSIBLE_CONFIG:-$REPO/ansible.cfg}

command -v systemd-analyze >/dev/null || { echo "unit_security.sh: systemd-analyze missing" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The unit is checked inside a small alternate root, so `verify` finds the ExecStart it names there (a
# stand-in executable), not on this machine, which never had the worker installed.
cat >"$work/render.yml" <<PLAY
- name: Render the drain_worker unit with the role's defaults
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  vars_files:
    - $ROLE/defaults/main.yml
  tasks:
    - name: Render the unit
      ansible.builtin.template:
        src: $ROLE/templates/drain-worker.service.j2
        dest: $work/unit.service
        mode: "0644"
    - name: Tell the shell the unit name and its ExecStart
      ansible.builtin.copy:
        dest: $work/names
        content: "{{ drain_worker_name }} {{ drain_worker_install_dir }}/venv/bin/spot-drain-worker {{ drain_worker_config_dir }}\n"
        mode: "0644"
PLAY
"$BIN/ansible-playbook" -i localhost, "$work/render.yml" "$@" >"$work/render.log" 2>&1 \
    || { cat "$work/render.log" >&2; exit 1; }
read -r name exec_start config_dir <"$work/names"

root=$work/root
mkdir -p "$root/etc/systemd/system" "$root$(dirname "$exec_start")" "$root$config_dir"
cp "$work/unit.service" "$root/etc/systemd/system/$name.service"
# The targets and units the unit depends on (sysinit.target, network-online.target, ...) come from this host.
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
printf '#!/bin/sh\n' >"$root$exec_start" && chmod 0755 "$root$exec_start"
: >"$root$config_dir/worker.env"

echo "== systemd-analyze verify $name.service"

# verify exits 0 on unknown keys and unparsable values (it only warns), and a sandbox option that is
# silently ignored is a hole: any message at all fails the check.
verify_out=$(systemd-analyze verify --root="$root" "$name.service" 2>&1) || { echo "$verify_out" >&2; exit 1; }
if [[ -n $verify_out ]]; then
    echo "$verify_out" >&2
    echo "verify: FAILED (warnings above)" >&2
    exit 1
fi
echo "verify: OK"

echo "== systemd-analyze security --offline=yes --threshold=20 $name.service"
status=0
out=$(systemd-analyze security --offline=yes --threshold=20 --root="$root" "$name.service" 2>&1) || status=$?
grep -v '^✓' <<<"$out"
score=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' <<<"$out")
echo "exposure score: ${score:-unknown} (must be <= 2.0, target 1.5)"
exit "$status"
