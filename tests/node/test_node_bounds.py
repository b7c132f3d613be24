"""The node within its stated bounds whatever arrives: a deflate bomb, a PDU declaring 4 GiB, an instance over
the size limit, peers that trickle or say nothing; and rates over a recent window.

`pneumo-edge listen` runs as a process of its own; its memory is read from /proc while the hostile input
arrives, and peers are raw sockets from other loopback addresses (127.0.0.2 and up: a peer of their own)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")

from pneumo_edge.testing.dicomfilm import film_dataset
from pneumo_edge.edge.node.counters import Counters
from pneumo_edge.edge.node.gate import MAX_PDU, REJECT_LIMIT
from pneumo_edge.benchmarks.node_bounds import (
    RSS_BOUND_MB,
    RssWatch,
    Trickler,
    connect_from,
    deflate_bomb,
    echo_within,
    wait_for,
)
from pneumo_edge.benchmarks.node_bounds import send_file as send
from pneumo_edge.testing.orthanc import free_port

@pytest.fixture
def start(node_processes, tmp_path):
    """A node sending to a port nobody listens on (the results stay queued: what these tests look at)."""
    return lambda *extra: node_processes.start(tmp_path, f"PACS@127.0.0.1:{free_port()}", *extra)


def results_for(node) -> list[Path]:
    return list((node.spool / "outbox").glob("*/*.dcm"))


def test_a_deflate_bomb_stays_within_the_memory_bound(tmp_path, start):
    """1 MB deflated, 1 GB inflated, by C-STORE: the node's memory grows by less than RSS_BOUND_MB (it grew 2.2 GB
    when the header read inflated the whole stream), and the instance gets a 'not assessed' result."""
    from pneumo_edge.edge.node.sr import read_sr

    bomb = deflate_bomb(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 2 << 20
    node = start()
    watch = RssWatch(node.proc.pid)
    assert send(node.port, bomb) == 0
    (result,) = wait_for(lambda: results_for(node), 120, "the bomb's result")
    grew = watch.growth_mb()
    assert grew < RSS_BOUND_MB, f"the node's memory grew {grew:.0f} MB"
    import pydicom

    info = read_sr(pydicom.dcmread(result))
    assert info["finding"] == "not assessed" and "expands past" in info["comment"]
    assert node.terminate() == 0


def test_a_pdu_declaring_4_gib_is_refused_before_it_is_read(tmp_path, start):
    """The node advertises MAX_PDU; a PDU header declaring 4 GiB is refused at once (the connection closed, the
    audit naming why), and the node's memory does not move; 512 MB sent behind it is not read either."""
    node = start()
    watch = RssWatch(node.proc.pid)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"\x01\x00\xff\xff\xff\xff")
        sent = 0
        try:
            for _ in range(512):
                s.sendall(bytes(1 << 20))
                sent += 1
        except OSError:
            pass
        s.settimeout(5)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    assert sent < 512, "the node read on after a PDU declared 4 GiB"
    assert watch.growth_mb() < 50
    refused = wait_for(lambda: [r for r in node.audit() if r["event"] == "association-refused"], 10, "an audit line")
    assert refused[0]["reason"] == f"a PDU declared 4,294,967,295 bytes, over the maximum of {MAX_PDU:,}"
    assert refused[0]["peer"] == "127.0.0.1"
    assert node.terminate() == 0


def test_an_instance_over_the_size_limit_is_cut_off(tmp_path, start):
    """--max-instance-mb 1: a 3 MB CR is cut off while it arrives (no success, nothing spooled), the audit says
    why; a small one on the next association is taken."""
    node = start("--max-instance-mb", "1")
    big = film_dataset(np.full((1800, 1800), 100, np.uint8))
    big.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    assert send(node.port, tmp_path / "big.dcm") is None
    assert not list((node.spool / "incoming").glob("*.dcm")) and not results_for(node)
    refused = wait_for(lambda: [r for r in node.audit() if r["event"] == "association-refused"], 10, "an audit line")
    assert refused[0]["reason"] == f"an instance passed the size limit of {1 << 20:,} bytes"
    small = film_dataset(np.full((256, 256), 100, np.uint8))
    small.save_as(tmp_path / "small.dcm", enforce_file_format=True)
    assert send(node.port, tmp_path / "small.dcm") == 0
    assert node.terminate() == 0


def _peer(n: int) -> str:
    return f"127.0.0.{n}"


def _connect_from(address: str, port: int):
    from pneumo_edge.edge.errors import PneumoEdgeError

    try:
        return connect_from(address, port)
    except PneumoEdgeError as e:
        pytest.skip(str(e))


def _trickler(address: str, port: int) -> Trickler:
    with socket.socket() as probe:  # where other loopback addresses cannot be bound: skipped
        try:
            probe.bind((address, 0))
        except OSError:
            pytest.skip(f"cannot bind a socket to {address} on this machine")
    return Trickler(address, port)


def test_trickling_peers_cannot_hold_the_slots(tmp_path, start):
    """Ten peers at one address trickle an association request a byte every 0.5 s: two get a slot (the per-peer
    cap) and lose it at the request deadline, eight are rejected at once (A-ASSOCIATE-RJ, audited as the
    per-peer limit); the modality's C-ECHO from another address succeeds at once, with --calling-ae set."""
    node = start("--max-per-peer", "2", "--request-timeout", "3", "--calling-ae", "MOD")
    time.sleep(1)  # the start-up probe's association has ended
    peers = [_trickler(_peer(2), node.port) for _ in range(10)]
    time.sleep(0.5)
    assert echo_within(node.port, 5) < 2
    for t in peers:
        t.join(10)
    rejected = [t for t in peers if t.reply.startswith(REJECT_LIMIT)]
    timed_out = [t for t in peers if not t.reply]
    assert len(rejected) == 8 and len(timed_out) == 2
    assert all(2.5 < t.closed_after < 6 for t in timed_out), [t.closed_after for t in timed_out]
    lines = [r for r in node.audit() if r["event"] == "association-refused" and r["peer"] == _peer(2)]
    reasons = {r["reason"] for r in lines}
    assert reasons == {"2 associations are open from this address (the per-peer limit)",
                       "the association request did not arrive whole within 3 s"}
    assert "calling AE title not allowed" not in str(node.audit())
    assert node.terminate() == 0


@pytest.mark.parametrize("kind", ["trickling", "silent"])
def test_many_peers_at_the_association_limit_free_it_within_the_request_deadline(tmp_path, kind, start):
    """Six peers, one address each, fill --max-associations 4 (trickling, or connected and saying nothing): the
    ones over the limit are refused and audited as such, the four admitted are cut off at the request deadline
    and audited as such; the modality's C-ECHO succeeds then, however long the peers keep trying."""
    node = start("--max-associations", "4", "--request-timeout", "3")
    time.sleep(1)  # the start-up probe's association has ended: the four slots are the peers' to take
    if kind == "trickling":
        peers = [_trickler(_peer(10 + i), node.port) for i in range(6)]
    else:
        peers = [_connect_from(_peer(10 + i), node.port) for i in range(6)]
    time.sleep(0.3)
    took = echo_within(node.port, 8)
    assert 2 < took < 5, f"C-ECHO after {took:.1f} s: the peers held the slots until the 3 s deadline, no longer"
    wait_for(lambda: len(node.audit()) >= 3 + 4, 5, "the peers' audit lines")
    reasons = [r["reason"] for r in node.audit() if r["event"] == "association-refused"]
    assert reasons.count("the node's association limit (4) is reached") >= 3  # two peers and the C-ECHO at least
    cut = ("the association request did not arrive whole within 3 s" if kind == "trickling"
           else "no association request within 3 s")
    assert reasons.count(cut) == 4
    if kind == "silent":
        for s in peers:
            s.settimeout(5)
            assert s.recv(64) in (b"", REJECT_LIMIT)  # closed by the node, not held
            s.close()
    assert node.terminate() == 0


def test_rates_are_over_the_recent_window():
    """A node busy for an hour and idle for a minute shows 0/s, not the hour's average."""
    clock = [0.0]
    c = Counters(window_s=60, clock=lambda: clock[0])
    for _ in range(3600):
        clock[0] += 1.0
        c.add("received")
    assert c.rates()["received_per_s"] == pytest.approx(1.0)
    clock[0] += 61
    assert c.rates()["received_per_s"] == 0.0 and c.values["received"] == 3600
    c.add("received", 30)
    assert c.rates()["received_per_s"] == pytest.approx(0.5)
