"""The tests' moto server (tests/support/moto.py) answers on a port that is its own.

pytest-xdist runs one session, and so one moto server, per process. A port chosen by the test process and bound
by the server a second later could meanwhile be taken by another process's server; this server would then fail
to bind and the test would talk to the other one. A server started without a port binds port 0 and reports the
port the kernel gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.moto import MotoServer


def listening_socket_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:`port` (Linux /proc/net/tcp: address and port in hex)."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes


def socket_inodes_of(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


def test_a_server_without_a_port_listens_on_the_port_it_reports(tmp_path):
    servers = [MotoServer(log_path=tmp_path / f"moto-{n}.log") for n in range(2)]
    assert [server.port for server in servers] == [None, None], "no port is chosen before the server binds it"
    try:
        for server in servers:
            server.start()
            server.reset()  # it answers on its url
        assert servers[0].port != servers[1].port
        for server in servers:
            listening = listening_socket_inodes(server.port)
            assert listening and listening <= socket_inodes_of(server.proc.pid), \
                f"port {server.port} is not held by moto server {server.proc.pid}"
    finally:
        for server in servers:
            server.stop()
    assert [server.proc for server in servers] == [None, None]
