"""`infer --engine ray` on one machine: Ray's services listen on loopback only, and its auth notice shows."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts a server, a browser, a venv or Ray

pytest.importorskip("ray", reason="the cluster extra (pip install '.[cluster]') is not installed")

# In a fresh interpreter: start Ray as infer does, then list every listening TCP socket of the processes it
# started (from /proc), by local address in /proc/net's hex form.
PROBE = r"""
import os, re
from pathlib import Path
from pneumo_edge.edge.cluster import start_ray
ray = start_ray(None)
me = os.getpid()
def parent(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0
def ours(pid):
    while pid > 1:
        if pid == me:
            return True
        pid = parent(pid)
    return False
inodes = set()
for d in Path("/proc").iterdir():
    if d.name.isdigit() and ours(int(d.name)):
        try:
            for fd in (d / "fd").iterdir():
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m:
                    inodes.add(m.group(1))
        except OSError:
            pass
for table in ("tcp", "tcp6"):
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:
            print("LISTEN", f[1].split(":")[0])
ray.shutdown()
"""
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def test_a_local_ray_listens_on_loopback_only_and_says_whether_it_uses_tokens():
    # As a fresh `infer --engine ray` starts: without the RAY_* settings a Ray driver earlier in this test
    # process (tests/test_cluster.py) leaves in the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    listening = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("LISTEN")]
    assert len(listening) >= 3, done.stdout  # the GCS, the raylet and a worker at least
    assert set(listening) <= LOOPBACK, listening  # never 00000000 (every interface) or a network address
    assert "Token authentication is enabled" in done.stderr  # Ray's notice is not hidden
