"""uvicorn's h11 protocol with a deadline for each request's headers, the TLS handshake held to the same deadline,
and an access log without query strings (the [serve] extra).

uvicorn has a keep-alive timeout but none for headers: a client that sends one header byte at a time holds its
connection for ever. Here a connection whose request headers are not complete within HEADER_TIMEOUT_ENV seconds
(set by `serve`) is closed. The body's deadline is the application's (serve.read_body).
"""

from __future__ import annotations

import asyncio.constants
import logging
import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "PNEUMO_EDGE_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0


class DeadlineH11Protocol(H11Protocol):
    """Closes a connection whose request headers do not arrive in time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT))
        self._header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """A timer runs while the next request's headers are awaited (from the connection or the last response)."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        elif not waiting:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            self.logger.info("%s - closed: request headers not complete within %g s", client, self.header_timeout)
            self.transport.close()


def tls_handshake_deadline(seconds: float) -> None:
    """Close a TLS connection whose handshake is not done within `seconds`, like headers that do not arrive.

    uvicorn passes asyncio no handshake timeout, and asyncio then reads this default (60 s) as each TLS connection
    is accepted; `serve` runs on asyncio's own loop (uvloop keeps a default of its own), so setting it here, in
    each serving process, is what holds a socket that never starts TLS to the header deadline.
    """
    asyncio.constants.SSL_HANDSHAKE_TIMEOUT = float(seconds)


class NoQueryString(logging.Filter):
    """uvicorn's access line with the request target cut at '?': a token or a name put in a URL's query is never
    written to the log (the service reads nothing from query strings but `heatmap`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) else a for a in record.args)
        return True
