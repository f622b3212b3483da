"""kill -9 of the whole ingest (process group) at random points, then resume: exactly the answer key.

The default run kills a handful of times; ``pytest -m stress`` runs many more trials.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.archive.status import status
from wxarchive.demo import check_answer_key
from wxarchive.simulate.server import serve
from wxarchive.simulate.tenant import generate_tenant


@pytest.fixture(scope="module")
def tenant(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("crash-tenant")
    generate_tenant(d, messages=600, seed=23)
    return d


def _cmd(home: Path, tenant: Path, proxy: str) -> list[str]:
    info = json.loads((tenant / "tenant.json").read_text())
    cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home), "ingest", "wecom",
           "--corp-id", info["corp_id"], "--secret-file", str(tenant / "secret"), "--proxy", proxy,
           "--limit", "25", "--workers", "2"]
    for p in sorted((tenant / "keys").glob("private_v*.pem")):
        cmd += ["--private-key", f"{p.stem.split('_v')[1]}={p}"]
    return cmd


def _crash_and_resume(tmp_path: Path, tenant: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with serve(tenant) as sim:
        cmd = _cmd(home, tenant, sim.proxy_url)
        killed = 0
        for _ in range(kills):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
            # a whole run of this tenant takes ~2.3 s on a quiet machine (start-up ~0.5 s): kill
            # points from start-up to near its end (later ones would find it finished)
            time.sleep(rng.uniform(0.3, 2.0))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                killed += 1
            proc.wait()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert killed >= 1
    with Archive.open(home) as ar:
        chk = check_answer_key(ar.catalog.engine, tenant)
        st = status(ar.catalog.engine)
        # the journal holds each raw record exactly once
        raw_keys = [e.key for e in ar.journal.entries(kinds={"wecom.chatdata"})]
    assert chk.missing == [] and chk.unexpected == [] and chk.wrong_kind == []
    assert chk.media_bad == [], chk.media_bad[:5]
    assert len(raw_keys) == len(set(raw_keys))
    assert st["reconciliation"]["catalog_matches_records"]
    assert st["reconciliation"]["pending_records"] == 0


def test_kill_9_during_ingest_then_resume(tmp_path, tenant):
    _crash_and_resume(tmp_path, tenant, kills=3, seed=1)


@pytest.mark.stress
@pytest.mark.parametrize("trial", range(50))
def test_kill_9_stress(tmp_path, tenant, trial):
    _crash_and_resume(tmp_path, tenant, kills=4, seed=1000 + trial)
