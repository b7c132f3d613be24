"""The outbox's several associations per destination, with stand-in links (no network): the first link alone
decides whether the destination is down; a further link the destination refuses rests without backing the
destination off; a crash in a link's thread is not swallowed."""

import threading
import time

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("pynetdicom", reason="the node extra is not installed (pip install '.[node]')")

from pneumo_edge.edge.node.audit import Audit, read  # noqa: E402
from pneumo_edge.edge.node.outbox import Destination, Sender, Unreachable  # noqa: E402
from pneumo_edge.edge.node.spool import Spool  # noqa: E402

DEST = "PACS@127.0.0.1:11112"


class FakeLink:
    def __init__(self, refuse: bool = False, crash: bool = False):
        self.refuse, self.crash, self.sent, self.lock = refuse, crash, [], threading.Lock()

    def send(self, path):
        if self.crash:
            raise KeyboardInterrupt("a link thread died")
        if self.refuse:
            raise Unreachable("no association")
        with self.lock:
            self.sent.append(path.name)

    def close(self):
        pass


def sender(tmp_path, links, n=12):
    spool = Spool(tmp_path / "spool")
    for i in range(n):
        spool.put_result(DEST, f"1.2.3.{i}", b"DICM", {"sop_instance_uid": f"1.2.3.{i}"})
    s = Sender(Destination.parse(DEST), spool, Audit(tmp_path / "audit.jsonl"), "NODE", links=len(links))
    s.links = links
    return s


def test_results_are_spread_over_the_links_and_each_sent_once(tmp_path):
    links = [FakeLink(), FakeLink(), FakeLink()]
    s = sender(tmp_path, links)
    assert s.pass_once() and not s.due()
    sent = [name for link in links for name in link.sent]
    assert sorted(sent) == sorted(f"1.2.3.{i}.dcm" for i in range(12)) and all(link.sent for link in links)
    assert sum(r.get("status") == "sent" for r in read(tmp_path / "audit.jsonl")) == 12


def test_a_refused_further_link_rests_and_the_destination_does_not_back_off(tmp_path):
    links = [FakeLink(), FakeLink(refuse=True), FakeLink()]
    s = sender(tmp_path, links)
    assert s.pass_once()
    assert s._dest_next == 0.0 and s._dest_wait_s == 0.0  # reachable: no backoff
    left = s.due()
    assert left and not links[1].sent  # the refused link's share waits for the next pass
    assert s.pass_once() and not s.due()  # the resting link is skipped: the others take it all
    assert links[1].sent == []


def test_an_unreachable_destination_backs_off_once_per_pass(tmp_path):
    links = [FakeLink(refuse=True), FakeLink(), FakeLink()]
    s = sender(tmp_path, links)
    assert not s.pass_once()
    assert s._dest_wait_s == s.retry_after_s and len(s.due()) == 12  # one doubling, nothing sent
    assert not links[1].sent and not links[2].sent


def test_a_crash_in_a_link_thread_is_raised_in_the_sender(tmp_path):
    s = sender(tmp_path, [FakeLink(), FakeLink(crash=True)])
    with pytest.raises(KeyboardInterrupt):
        s.pass_once()


def test_a_sender_survives_an_error_in_a_pass_and_says_so(tmp_path, monkeypatch):
    """A full disk or a failed audit write raises inside a pass: the thread logs it, counts it and goes on."""
    import pneumo_edge.edge.node.outbox as outbox

    monkeypatch.setattr(outbox, "BACKOFF_CAP_S", 0.05)
    s = sender(tmp_path, [FakeLink()], n=2)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no space left on device")
        return False

    s.pass_once = flaky
    s.start()
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stopping.set()
    s.wake.set()
    s.join(5)
    assert len(calls) >= 2 and s.errors == 1 and not s.is_alive()
