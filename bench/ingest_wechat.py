"""WeChat 4.x ingest throughput against a plain decrypt-and-read of the same database.

    python bench/ingest_wechat.py [--messages 1000000] [--workdir DIR] [--rounds 1]

Both measurements run in child processes, on the same generated ``message_N.db`` shards
(SQLCipher 4, zstd app messages, two thirds of the chats work, one third personal):

- ``baseline``: open every shard with the same key (``sqlcipher3``, the same private
  encrypted copy wxarchive makes) and ``SELECT *`` every row of every ``Msg_*`` table: what any
  reader of this database must pay at least;
- ``wxarchive``: ``ingest_wechat`` into an empty archive — policy, census, every work row
  parsed, journaled (AES-GCM, hash chain, fsync per chunk), the catalog and its full-text
  indexes written, voice stored — and the personal rows counted, not read.

Rates are messages *of the database* per second (the ingest decides about every one of
them), printed with the ratio wxarchive/baseline (target >= 0.5) and each child's peak RSS
(target < 300 MB). ``--no-catalog`` also times the ingest with the catalog updates left to a
later catch-up, to show where the time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from pathlib import Path
mode, device, key, home, policy = sys.argv[1:6]
from wxarchive.capture.wechat import open_reader, parse_key
t = time.perf_counter()
if mode == "baseline":
    from wxarchive.capture.wechat import sqlcipher
    from wxarchive.capture.wechat.v4 import find_storage
    n = 0
    for f in sorted((find_storage(Path(device)) / "message").glob("message_*.db")):
        with sqlcipher.open_db(f, sqlcipher.V4, bytes.fromhex(key)) as c:
            c.text_factory = bytes
            for (tname,) in c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'Msg_%'").fetchall():
                for row in c.execute(f'SELECT * FROM "{tname.decode() if isinstance(tname, bytes) else tname}"'):
                    n += 1
    out = {"messages": n}
else:
    from wxarchive.archive.archive import Archive
    from wxarchive.capture.wechat.policy import load
    from wxarchive.ingest_wechat import ingest_wechat
    import wxarchive.ingest_wechat as iw
    if mode == "no-catalog":  # the catalog left behind the journal (a later writer would catch it up)
        import wxarchive.ingest as ing
        iw.apply = lambda *a, **k: None
        ing.catch_up = lambda *a, **k: 0
    with Archive.open(Path(home), create=True) as ar, open_reader("v4", Path(device), key=parse_key("v4", key)) as r:
        res = ingest_wechat(ar, r, load(Path(policy)))
    out = {"messages": res.total, "archived": res.counts["archived"], "excluded": res.counts["excluded"],
           "status": res.status}
out["seconds"] = time.perf_counter() - t
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork+exec)
out["rss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps(out))
"""


def _device(workdir: Path, n: int) -> dict:
    d = workdir / f"v4-{n}"
    answer = d / "device.json"  # the totals only: answer.json lists every message
    if answer.exists():
        return json.loads(answer.read_text())
    shutil.rmtree(d, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wxarchive.cli", "simulate", "wechat", str(d), "--format", "v4",
                    "--messages", str(n)], check=True, stdout=subprocess.DEVNULL)
    print(f"generated a {n}-message 4.x device in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return json.loads(answer.read_text())


def _child(mode: str, answer: dict, root: Path, home: Path) -> dict:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home.parent / "xdg")}
    p = subprocess.run([sys.executable, "-c", CHILD, mode, answer["device"], answer["key"], str(home),
                        str(root / "policy.toml")], capture_output=True, text=True, env=env)
    if p.returncode:
        raise SystemExit(f"{mode} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--workdir", type=Path, default=None, help="keeps the generated device between runs")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-catalog", action="store_true", help="also time the ingest without catalog updates")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wxarchive-bench-wechat-"))
    work.mkdir(parents=True, exist_ok=True)
    answer = _device(work, args.messages)
    root = work / f"v4-{args.messages}"
    print(f"device: {answer['total']} messages ({answer['work']} work, {answer['personal']} personal), "
          f"{sum(p.stat().st_size for p in root.rglob('*.db*')) / 1e6:.0f} MB of databases; {os.cpu_count()} cores")
    ratios = []
    for r in range(1, args.rounds + 1):
        results = {}
        modes = ["baseline", "wxarchive"] + (["no-catalog"] if args.no_catalog else []) + ["baseline"]
        for i, mode in enumerate(modes):
            home = work / f"home-{r}-{i}"
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            results.setdefault(mode, []).append(_child(mode, answer, root, home / "archive"))
            shutil.rmtree(home, ignore_errors=True)
        base = sum(x["messages"] / x["seconds"] for x in results["baseline"]) / len(results["baseline"])
        ours = results["wxarchive"][0]
        rate = ours["messages"] / ours["seconds"]
        ratios.append(rate / base)
        line = (f"round {r}: baseline {base:9.0f} msg/s (RSS {max(x['rss_mb'] for x in results['baseline']):.0f} MB)"
                f"   wxarchive {rate:8.0f} msg/s (RSS {ours['rss_mb']:.0f} MB; archived {ours['archived']}, "
                f"excluded {ours['excluded']})   ratio {rate / base:.3f}")
        if "no-catalog" in results:
            nc = results["no-catalog"][0]
            line += f"\n         without catalog updates {nc['messages'] / nc['seconds']:8.0f} msg/s " \
                    f"(ratio {nc['messages'] / nc['seconds'] / base:.3f}, RSS {nc['rss_mb']:.0f} MB)"
        print(line, flush=True)
    ratios.sort()
    print(f"ratio wxarchive/baseline {ratios[len(ratios) // 2]:.3f} median of {len(ratios)}   (target >= 0.50)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
