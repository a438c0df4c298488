"""A LiveKit create sent into a cut link must not reach LiveKit after its run gave up on it.

A worker on a host whose link is cut keeps its request's bytes in its kernel's send buffer;
a plain close still delivers them once the link is back, which may be after another worker
took the job over and looked for what the first one created: a duplicate no fencing can stop.
The client closes with SO_LINGER 0 (worker/livekit/deadline.py): the request is dropped.

Both behaviours run side by side on one real "host" (a network namespace) against the real
livekit-server: the plain client's create lands after the link is back (the hazard is
real), the Trunkline client's never does, and its kernel holds nothing for LiveKit at all.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import REPO, Stack, wait_for
from tests.support.netns import NetnsHost, TcpForwarder
from worker.livekit import LiveKitSIP

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("clean")]

# Runs inside the namespace: connect (a list), then on "go" one create that times out.
CLIENT = textwrap.dedent("""
    import sys, httpx
    from worker.livekit import LiveKitSIP, LiveKitTimeout, OutboundTrunk
    url, key, secret, name, mode = sys.argv[1:6]
    http = None if mode == "trunkline" else httpx.Client(timeout=2.0)  # plain close
    with LiveKitSIP(url, key, secret, http=http, timeout=2.0) as lk:
        lk.list_outbound_trunks()
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            lk.create_outbound_trunk(OutboundTrunk(
                name=name, address="sip.example.com", numbers=["+15550001111"],
                metadata="late-landing-test"))
            print("created", flush=True)
        except LiveKitTimeout:
            print("gave up", flush=True)
        sys.stdin.readline()
""")


class HostClient:
    def __init__(self, host: NetnsHost, url: str, stack: Stack, name: str, mode: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            host.command([sys.executable, "-c", CLIENT, url, stack.api_key, stack.api_secret,
                          name, mode]),
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()  # bounded by the test's timeout
        assert got == line, f"{self.name}: expected {line!r}, got {got!r}: {self.stderr()}"

    def say(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)  # reaps it and closes its pipes


def queued_for(host: NetnsHost, port: int) -> list[int]:
    """Bytes waiting to be sent, per TCP socket of the host (orphaned ones included) toward
    `port` that has any."""
    listed = subprocess.run(host.command(["ss", "-tnH", "state", "all", "dport", f"= :{port}"]),
                            capture_output=True, text=True, check=True, timeout=10).stdout
    sizes = [int(line.split()[2]) for line in listed.splitlines() if line.strip()]
    return [size for size in sizes if size > 0]


def outbound_names(livekit: LiveKitSIP) -> set[str]:
    return {trunk.name for trunk in livekit.list_outbound_trunks()}


@contextlib.contextmanager
def started(*clients: HostClient) -> Iterator[None]:
    try:
        yield
    finally:
        for client in clients:
            client.stop()


@pytest.mark.timeout(150)
def test_a_create_given_up_on_behind_a_cut_link_never_lands(stack: Stack,
                                                            livekit: LiveKitSIP) -> None:
    target = urlsplit(stack.livekit_url)
    assert target.hostname is not None and target.port is not None
    with NetnsHost("l", 0) as host, \
            TcpForwarder(host.root_ip, target.hostname, target.port) as forward:
        url = f"http://{host.root_ip}:{forward.port}"
        plain = HostClient(host, url, stack, "late-plain", "plain")
        ours = HostClient(host, url, stack, "late-trunkline", "trunkline")
        with started(plain, ours):
            plain.expect("ready")
            ours.expect("ready")
            host.cut()
            try:
                # Ours first, alone: once it has given up, the host holds nothing for LiveKit.
                ours.say()
                ours.expect("gave up")
                assert queued_for(host, forward.port) == [], \
                    "the given-up create is still queued in the host's kernel"
                plain.say()
                plain.expect("gave up")
                assert len(queued_for(host, forward.port)) == 1, \
                    "the plain client's create should wait, queued, for the link"
            finally:
                host.restore()
            # TCP retransmits the plain client's request once the link is back (its back-off
            # after a few seconds' outage is well under a minute).
            wait_for(lambda: "late-plain" in outbound_names(livekit), 90,
                     "the plain client's create landing after the link came back")
            assert queued_for(host, forward.port) == []
            assert "late-trunkline" not in outbound_names(livekit)
