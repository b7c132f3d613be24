"""uvicorn's h11 protocol with a deadline for each request's headers (the [serve] extra).

uvicorn has a keep-alive timeout but none for headers: a client that sends one header byte at a time holds its
connection for ever. Here a connection whose request headers are not complete within HEADER_TIMEOUT_ENV seconds
(set by `serve`) is closed. The body's deadline is the application's (serve.read_body).
"""

from __future__ import annotations

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
