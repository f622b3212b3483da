"""kill -9 of ``ingest wechat`` at random points, then a clean run: exactly the answer key,
each row journaled once, no attachment left pending. ``pytest -m stress`` runs many trials."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.simulate.wechat import generate_device


@pytest.fixture(scope="module")
def device(tmp_path_factory) -> dict:
    return generate_device(tmp_path_factory.mktemp("crash-wechat") / "dev", "win3", messages=30000, seed=5)


def _crash_and_resume(tmp_path: Path, answer: dict, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    home = tmp_path / "home"
    root = Path(answer["device"]).parents[1]
    cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home), "ingest", "wechat", answer["device"],
           "--format", "win3", "--key-file", str(root / "key.txt"), "--policy", str(root / "policy.toml")]
    killed = 0
    for _ in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.5, 2.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert killed >= 1
    with Archive.open(home, readonly=True) as ar:
        keys = [e.key for e in ar.journal.entries(kinds={"wechat.row"})]
    assert len(keys) == len(set(keys))  # each row journaled exactly once
    con = sqlite3.connect(home / "catalog.db")
    got = {m for (m,) in con.execute("SELECT msgid FROM messages")}
    pending = con.execute("SELECT count(*) FROM attachments WHERE state = 'pending'").fetchone()[0]
    texts = {(c, t) for c, t in con.execute("SELECT conversation_id, text FROM messages WHERE msgid LIKE 'local:%'")}
    con.close()
    want = {e["msgid"] for e in answer["messages"] if e["msgid"]}
    assert want <= got and len(got) == answer["work"], (len(want - got), len(got), answer["work"])
    assert all((e["conversation_id"], e["text"]) in texts for e in answer["messages"] if not e["msgid"])
    assert set(keys) == got
    assert pending == 0


def test_kill_9_during_wechat_ingest_then_resume(tmp_path, device):
    _crash_and_resume(tmp_path, device, kills=3, seed=1)


@pytest.mark.stress
@pytest.mark.parametrize("trial", range(30))
def test_kill_9_wechat_stress(tmp_path, device, trial):
    _crash_and_resume(tmp_path, device, kills=4, seed=500 + trial)
