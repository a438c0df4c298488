"""Separate "hosts" for tests: Linux network namespaces on virtual links (root only).

Each :class:`NetnsHost` is a network namespace joined to the root namespace by a veth pair on
a /30 of its own (the root side is ``root_ip``, the namespace side ``host_ip``). Redis and
livekit-server listen on 127.0.0.1 only, so the root namespace runs a :class:`TcpForwarder`
on ``root_ip`` for each service the host needs. ``cut()`` takes the root side of the link
down: packets are dropped, nothing is refused, so the host's open TCP connections hang as in a
real partition; ``restore()`` brings it back and those connections resume.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["NetnsHost", "TcpForwarder"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


_NAME = re.compile(r"^tl(\d+)([a-z])\b")


def remove_leftovers() -> None:
    """Remove the namespaces and links of test processes that are gone (killed mid-test)."""
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True,
                            text=True, timeout=10).stdout
    for line in listed.splitlines():
        match = _NAME.match(line)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", f"tlr{match.group(1)}{match.group(2)}")
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", f"tl{match.group(1)}{match.group(2)}")


class NetnsHost:
    """A network namespace with one veth link into the root namespace."""

    def __init__(self, label: str, index: int) -> None:
        # Names carry the test process's pid: parallel runs never clash, and a killed run's
        # leftovers are recognised (and removed) by the next one.
        tag = f"{os.getpid()}{label}"
        self.name = f"tl{tag}"
        self.veth_root = f"tlr{tag}"  # interface names have at most 15 characters
        self.veth_host = f"tlh{tag}"
        subnet = (os.getpid() % 250) + 1
        self.root_ip = f"10.231.{subnet}.{4 * index + 1}"
        self.host_ip = f"10.231.{subnet}.{4 * index + 2}"

    def up(self) -> None:
        remove_leftovers()
        self.down()
        _ip("netns", "add", self.name)
        _ip("link", "add", self.veth_root, "type", "veth", "peer", "name", self.veth_host,
            "netns", self.name)
        _ip("addr", "add", f"{self.root_ip}/30", "dev", self.veth_root)
        _ip("link", "set", self.veth_root, "up")
        inside = ["netns", "exec", self.name, "ip"]
        _ip(*inside, "addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
        _ip(*inside, "link", "set", self.veth_host, "up")
        _ip(*inside, "link", "set", "lo", "up")

    def down(self) -> None:
        """Remove the link and the namespace (idempotent)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.veth_root)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", self.name)

    def cut(self) -> None:
        _ip("link", "set", self.veth_root, "down")

    def restore(self) -> None:
        _ip("link", "set", self.veth_root, "up")

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self) -> NetnsHost:
        self.up()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()


class TcpForwarder:
    """Accepts on (host, port 0) and pipes each connection to (target_host, target_port)."""

    def __init__(self, host: str, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._stopped = False
        self.connections = 0
        self.error: str | None = None  # why the forwarder stopped accepting, if it did
        self._thread = threading.Thread(target=self._accept, daemon=True,
                                        name=f"forward-{host}:{self.port}")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            sockets = [self._listener, *self._sockets]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError as exc:
                with self._lock:
                    if not self._stopped:
                        self.error = f"accept failed: {exc!r}"
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError as exc:
                self.error = f"upstream connect failed: {exc!r}"
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def __enter__(self) -> TcpForwarder:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
