"""`token create` and `token revoke` at the same moment, in separate processes: no change is lost, and a revoked
token stays revoked (edge/tokens.py rereads and writes the file under an exclusive lock)."""

import multiprocessing as mp
import os
import stat

from pneumo_edge.edge.tokens import TokenStore

ROUNDS = 30


def _act(path: str, what: str, name: str, barrier, results) -> None:
    store = TokenStore(path)  # reads the file now, as the command does, before the others write
    barrier.wait()
    if what == "revoke":
        store.revoke(name)
        results.put((name, None))
    else:
        results.put((name, store.create(name)))


def test_concurrent_create_and_revoke_never_lose_a_change(tmp_path):
    ctx = mp.get_context("fork")
    path = tmp_path / "cfg" / "tokens.json"
    created: dict[str, str] = {}
    revoked: list[str] = []
    for i in range(ROUNDS):
        old = f"old-{i}"
        secret = TokenStore(path).create(old)
        jobs = [("revoke", old), ("create", f"new-{i}-a"), ("create", f"new-{i}-b")]
        barrier, results = ctx.Barrier(len(jobs)), ctx.Queue()
        procs = [ctx.Process(target=_act, args=(str(path), what, name, barrier, results)) for what, name in jobs]
        for p in procs:
            p.start()
        got = dict(results.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        store = TokenStore(path)
        assert store.check(secret) is None, f"round {i}: the revoked token works again"
        revoked.append(secret)
        created.update({name: token for name, token in got.items() if token})
        for name, token in created.items():
            assert store.check(token) == name, f"round {i}: token '{name}' was lost"
    assert sorted(r.name for r in TokenStore(path).records) == sorted(created)
    assert not any(TokenStore(path).check(s) for s in revoked)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.with_name(".tokens.json.lock")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_a_store_read_before_a_revoke_does_not_bring_the_token_back(tmp_path):
    path = tmp_path / "tokens.json"
    first = TokenStore(path)
    a = first.create("a")
    stale = TokenStore(path)  # holds 'a'
    first.revoke("a")
    b = stale.create("b")  # rereads under the lock: writes without 'a'
    now = TokenStore(path)
    assert now.check(a) is None and now.check(b) == "b"
