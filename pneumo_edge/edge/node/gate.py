"""Association slots and what one association may cost: bounds a silent, trickling or oversized peer cannot pass.

    server = start_server(ae, ("0.0.0.0", 104), handlers, Limits(), on_refused)

pynetdicom reads each PDU whole with blocking reads and believes its declared length, and counts a connection
against its association limit from the moment it opens, so a peer that trickles an A-ASSOCIATE-RQ a byte at
a time holds a slot for as long as it likes (neither the ACSE timer nor the calling-AE check runs before the
request is complete), and a PDU that declares 4 GiB is read into memory. Here, before pynetdicom sees a byte:
- a connection is admitted only under `max_associations` in all and `per_peer` from one IP address; over
  either it gets an A-ASSOCIATE-RJ (transient, local limit exceeded) and is closed;
- the whole A-ASSOCIATE-RQ must arrive within `request_timeout_s` of the connection opening, and every later
  PDU within `pdu_timeout_s` of its first byte; a PDU may not declare more than `max_pdu` bytes (what the node
  advertises as its maximum); the data set of one C-STORE may not pass `max_instance_bytes`. A peer past any of
  these is disconnected, and `on_refused(peer, reason)` is called (the node audits it).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_PDU = 1 << 20  # advertised maximum PDU length, and the largest PDU read (plus its 6-byte header)
REJECT_LIMIT = bytes([0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2])  # A-ASSOCIATE-RJ: transient, provider (presentation), local limit
DRAIN_S = 2.0  # a refused connection is read (and dropped) this long so the peer sees the reject, not a reset
MAX_DRAINING = 32  # refused connections drained at once; beyond, closed at once


@dataclass(frozen=True)
class Limits:
    max_associations: int = 10
    per_peer: int = 4
    request_timeout_s: float = 10.0
    pdu_timeout_s: float = 60.0
    max_pdu: int = MAX_PDU
    max_instance_bytes: int = 256 << 20


class Gate:
    """Open connections per peer address and in all; thread-safe."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._draining = 0

    def admit(self, peer: str) -> str | None:
        """None and a slot taken, or why the connection is refused."""
        with self._lock:
            if sum(self._open.values()) >= self.limits.max_associations:
                return f"the node's association limit ({self.limits.max_associations}) is reached"
            if self._open.get(peer, 0) >= self.limits.per_peer:
                return f"{self.limits.per_peer} associations are open from this address (the per-peer limit)"
            self._open[peer] = self._open.get(peer, 0) + 1
            return None

    def release(self, peer: str) -> None:
        with self._lock:
            left = self._open.get(peer, 0) - 1
            if left > 0:
                self._open[peer] = left
            else:
                self._open.pop(peer, None)

    def open_count(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def reject(self, request: socket.socket) -> None:
        """Send the A-ASSOCIATE-RJ; drain what the peer sends for a moment on a copy of the socket (the server
        closes the original), so the peer reads the reject instead of a reset."""
        try:
            request.settimeout(1.0)
            request.sendall(REJECT_LIMIT)
            with self._lock:
                if self._draining >= MAX_DRAINING:
                    return
                self._draining += 1
            copy = request.dup()
        except OSError:
            return
        threading.Thread(target=self._drain, args=(copy,), name="refused connection", daemon=True).start()

    def _drain(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + DRAIN_S
        try:
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(4096):
                    break
        except OSError:
            pass
        finally:
            sock.close()
            with self._lock:
                self._draining -= 1


class PduGuard:
    """Replaces an AssociationSocket's `recv` (what pynetdicom's DUL reads PDUs through: 6 header bytes, then the
    declared length) with one that enforces the deadlines and sizes of `Limits`."""

    def __init__(self, assoc_socket, limits: Limits, peer: str, on_refused: Callable[[str, str], None]):
        self.sock, self.limits, self.peer, self.on_refused = assoc_socket, limits, peer, on_refused
        self.deadline = time.monotonic() + limits.request_timeout_s  # the first PDU: the association request
        self.first, self.pdu_type, self.instance_bytes, self.refused = True, None, 0, False
        assoc_socket.recv = self.recv

    def _refuse(self, why: str, error: type[OSError] = OSError) -> OSError:
        self.refused = True
        self.on_refused(self.peer, why)
        try:
            self.sock.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return error(why)

    def recv(self, n: int) -> bytearray:
        if self.pdu_type is None:  # a PDU header
            if not self.first:
                self.deadline = time.monotonic() + self.limits.pdu_timeout_s
            data = self._read(n)
            if len(data) == 6:
                self.pdu_type, length = struct.unpack(">B1xL", bytes(data))
                if length > self.limits.max_pdu:
                    raise self._refuse(f"a PDU declared {length:,} bytes, over the maximum of {self.limits.max_pdu:,}")
            return data
        pdu_type, self.pdu_type = self.pdu_type, None
        data = self._read(n)
        if self.first:
            self.first = False
        elif pdu_type == 0x04:
            self._count(data)
        return data

    def _read(self, n: int) -> bytearray:
        raw, out = self.sock.socket, bytearray()
        before = raw.gettimeout()
        try:
            while len(out) < n:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    what = "the association request" if self.first else "a PDU"
                    limit = self.limits.request_timeout_s if self.first else self.limits.pdu_timeout_s
                    raise self._refuse(f"{what} did not arrive whole within {limit:g} s", TimeoutError)
                raw.settimeout(min(left, before) if before else left)
                try:
                    chunk = raw.recv(min(1 << 16, n - len(out)))
                except TimeoutError:
                    continue  # the deadline decides, at the top of the loop
                if not chunk:
                    return out
                out += chunk
        finally:
            try:
                raw.settimeout(before)
            except OSError:
                pass
        return out

    def _count(self, pdu: bytearray) -> None:
        """Data-set bytes of the current DIMSE message, from the P-DATA-TF's PDV items (a command fragment starts
        a new message)."""
        at = 0
        while at + 6 <= len(pdu):
            (length,) = struct.unpack(">L", bytes(pdu[at:at + 4]))
            control = pdu[at + 5]
            if control & 1:
                self.instance_bytes = 0
            else:
                self.instance_bytes += max(0, length - 2)
            at += 4 + length
        if self.instance_bytes > self.limits.max_instance_bytes:
            raise self._refuse(f"an instance passed the size limit of {self.limits.max_instance_bytes:,} bytes")


def server_class(gate: Gate, on_refused: Callable[[str, str], None], on_error: Callable[[str], None]):
    """A pynetdicom ThreadedAssociationServer admitting connections through `gate`, with a PduGuard on each."""
    from pynetdicom import evt  # the [node] extra, only when the node runs
    from pynetdicom.transport import (  # the [node] extra, only when the node runs
        RequestHandler,
        ThreadedAssociationServer,
    )

    class GuardedHandler(RequestHandler):
        def handle(self) -> None:
            assoc = self._create_association()
            guard = PduGuard(assoc.dul.socket, gate.limits, self.client_address[0], on_refused)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()  # the slot is held until the association ends
            if assoc.requestor.primitive is None and not guard.refused and time.monotonic() >= guard.deadline:
                # a peer that said nothing: pynetdicom's own wait (acse_timeout) ended it
                on_refused(self.client_address[0],
                           f"no association request within {gate.limits.request_timeout_s:g} s")

    class GatedServer(ThreadedAssociationServer):
        daemon_threads = True
        block_on_close = False  # shutdown must not wait for open associations: the node bounds that itself

        def __init__(self, *args, **kwargs):
            super().__init__(*args, request_handler=GuardedHandler, **kwargs)

        def verify_request(self, request, client_address) -> bool:
            why = gate.admit(client_address[0])
            if why is None:
                return True
            gate.reject(request)
            on_refused(client_address[0], why)
            return False

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                gate.release(client_address[0])

        def handle_error(self, request, client_address) -> None:
            on_error(sys.exc_info()[0].__name__)  # socketserver would print the traceback: it may quote values

    return GatedServer


def start_server(ae, address: tuple[str, int], handlers: list, limits: Limits,
                 on_refused: Callable[[str, str], None], on_error: Callable[[str], None]):
    """`ae.start_server(address, block=False, ...)` with the gate: returns the running server."""
    gate = Gate(limits)
    ae.maximum_associations = limits.max_associations  # the gate counts first; pynetdicom's count never binds
    ae.acse_timeout = limits.request_timeout_s  # a silent peer: pynetdicom's own wait for the request
    server = ae.make_server(address, evt_handlers=handlers, server_class=server_class(gate, on_refused, on_error))
    thread = threading.Thread(target=server.serve_forever, name="association server", daemon=True)
    thread.start()
    ae._servers.append(server)  # what AE.start_server does: shutdown() removes it again
    server.gate = gate
    return server
