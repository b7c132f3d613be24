"""API tokens for `pneumo-edge serve`: made once, shown once, stored only as hashes.

    pneumo-edge token create reading-room-2     # prints the token once
    pneumo-edge token list
    pneumo-edge token revoke reading-room-2

A running server rereads the file when it changes, so a revoked token is refused from the next request.
The file (default ~/.config/pneumo-edge/tokens.json, or PNEUMO_EDGE_TOKENS) holds each token's name, creation time
and SHA-256; it is written atomically with mode 0600. `create` and `revoke` reread it and write it under an
exclusive lock (flock on `.tokens.json.lock` beside it), so two run at once never lose each other's change. A token is 32 random bytes, so a plain SHA-256 is enough:
there is nothing to guess that a slow hash would protect. `check` compares the presented token's hash with every
stored one in constant time and never logs or keeps the token itself.
"""

from __future__ import annotations

import fcntl  # POSIX: the edge boxes run Linux
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import PneumoEdgeError

TOKENS_ENV = "PNEUMO_EDGE_TOKENS"
PREFIX = "pe_"  # tells a leaked token apart from other secrets in a log scan


def default_path() -> Path:
    env = os.environ.get(TOKENS_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "pneumo-edge" / "tokens.json"


@dataclass(frozen=True)
class TokenRecord:
    name: str
    sha256: str
    created: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The token file: read on construction, rewritten whole (mode 0600) by create and revoke."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self._stamp = None
        self.records: list[TokenRecord] = self._read()

    def _read(self) -> list[TokenRecord]:
        self._stamp = self._mtime()
        if not self.path.exists():
            return []
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PneumoEdgeError(f"{self.path} is readable by others (mode {mode:o}): chmod 600 it")
        try:
            rows = json.loads(self.path.read_text())["tokens"]
            return [TokenRecord(r["name"], r["sha256"], r["created"]) for r in rows]
        except (ValueError, KeyError, TypeError) as e:
            raise PneumoEdgeError(f"{self.path} is not a pneumo-edge token file ({e.__class__.__name__})") from None

    def _mtime(self) -> tuple[int, int] | None:
        """Which file is there: an atomic rewrite is a new inode even within the clock's resolution."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the exclusive lock, reread the file, let the caller change `records`, write them."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for another create or revoke to finish
            self.records = self._read()  # what they wrote, not what this store read earlier
            yield
            self._write()
        finally:
            os.close(fd)  # releases the lock

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"tokens": [r.__dict__ for r in self.records]}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def create(self, name: str) -> str:
        """A new token under `name` (unique); returns the token, which is not stored anywhere."""
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise PneumoEdgeError(f"token name '{name}': use letters, digits, '-', '_' or '.'")
        token = PREFIX + secrets.token_urlsafe(32)
        with self._changing():
            if any(r.name == name for r in self.records):
                raise PneumoEdgeError(f"a token named '{name}' exists: revoke it first, or pick another name")
            self.records.append(TokenRecord(name, _digest(token), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        return token

    def revoke(self, name: str) -> None:
        with self._changing():
            if not any(r.name == name for r in self.records):
                raise PneumoEdgeError(f"no token named '{name}' in {self.path}")
            self.records = [r for r in self.records if r.name != name]

    def check(self, token: str | None) -> str | None:
        """The name of the token presented, or None; every stored hash is compared, in constant time."""
        if not token:
            return None
        if self._mtime() != self._stamp:  # created or revoked since: a revocation holds from the next request
            try:
                self.records = self._read()
            except PneumoEdgeError:  # unreadable or opened up to others: refuse every token until fixed
                self.records = []
        presented = _digest(token)
        found = None
        for r in self.records:
            if hmac.compare_digest(presented, r.sha256):
                found = r.name
        return found
