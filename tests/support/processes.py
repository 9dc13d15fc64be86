"""Finding the processes of one controller (tests/integration/controllers.py, scripts/demo_shared.py): every
process a controller starts, the detached refill job included, inherits its environment, so a marker variable
in that environment finds them all, whatever their command line or PID namespace."""

from __future__ import annotations

import os


def environ_of(pid: int) -> dict[str, str]:
    """The environment `pid` started with ({} when it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]
    except OSError:
        return []


def is_zombie(pid: int) -> bool:
    """Exited and not yet reaped (or gone): not a process that still does anything."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def pids_with_env(name: str, value: str) -> list[int]:
    """Live processes (pids as this process sees them), other than this one, whose environment has name=value."""
    return sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != os.getpid()
                  and environ_of(int(entry)).get(name) == value and not is_zombie(int(entry)))
