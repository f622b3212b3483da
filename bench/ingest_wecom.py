"""WeCom ingest throughput through the official SDK, against two baselines from the same run.

    python bench/ingest_wecom.py [--messages 100000] [--rss-messages 0] [--workdir DIR]

Prints, all measured now on this machine over the same simulated tenant:
- ``ceiling``: RSA-2048 PKCS#1 v1.5 private decrypts/s on all cores (a process per core),
  the per-message cost WeCom imposes — no archiver can beat it;
- ``single``: a single-process loop in the style of the existing wrappers: GetChatData →
  for each record RSA → DecryptData → INSERT into SQLite, one message at a time (commit per
  pulled batch, which flatters the baseline);
- ``wxarchive``: ``WeComCapture`` (SDK worker process, decrypt/parse pool, journal with
  fsync, catalog), media fetching off so only the message path is timed;
and the ratios wxarchive/ceiling (target ≥ 0.7) and wxarchive/single (target ≥ 1.8), with
the CPU each message costs in each process group (the machine's cores are all busy during
the run, so total CPU per message is what bounds the rate; RSA alone is cores/ceiling).
With ``--rss-messages N`` it also ingests N messages with the CLI in a child process and
reports the peak RSS of every process involved (target < 400 MB at 1,000,000).
The simulator runs in its own process in every measurement.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding


def _tenant(workdir: Path, n: int) -> Path:
    from wxarchive.demo import _tenant_matches
    from wxarchive.simulate.tenant import generate_tenant

    d = workdir / f"tenant-{n}"
    if not _tenant_matches(d, n, 1):
        t = time.perf_counter()
        generate_tenant(d, messages=n, seed=1)
        print(f"generated tenant of {n} records in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return d


def _keys(tenant: Path) -> dict[int, bytes]:
    return {int(p.stem.split("_v")[1]): p.read_bytes() for p in (tenant / "keys").glob("private_v*.pem")}


# ---- ceiling ----------------------------------------------------------------------------

_RSA = {}


def _rsa_init(pems: dict[int, bytes]) -> None:
    for v, pem in pems.items():
        _RSA[v] = serialization.load_pem_private_key(pem, None)


def _rsa_loop(items: list[tuple[int, bytes]], seconds: float) -> int:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for ver, ct in items:
            _RSA[ver].decrypt(ct, padding.PKCS1v15())
            n += 1
    return n


def rsa_ceiling(tenant: Path, seconds: float = 5.0) -> float:
    items = []
    with open(tenant / "chatdata.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["publickey_ver"] in (1, 2) and len(items) < 200:
                items.append((r["publickey_ver"], base64.b64decode(r["encrypt_random_key"])))
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(cores, initializer=_rsa_init, initargs=(_keys(tenant),)) as pool:
        list(pool.map(_rsa_loop, [items[:5]] * cores, [0.2] * cores))  # warm up
        t = time.perf_counter()
        total = sum(pool.map(_rsa_loop, [items] * cores, [seconds] * cores))
        return total / (time.perf_counter() - t)


# ---- single-process wrapper-style loop ----------------------------------------------------


def single_loop(tenant: Path, proxy: str, limit_records: int) -> float:
    from wxarchive.capture.wecom.decrypt import KeyRing
    from wxarchive.capture.wecom.sdk import FinanceSdk, decrypt_data, load_library

    info = json.loads((tenant / "tenant.json").read_text())
    ring = KeyRing.from_pems(_keys(tenant))
    lib = load_library()
    sdk = FinanceSdk(info["corp_id"], (tenant / "secret").read_text().strip())
    db = sqlite3.connect(tempfile.mktemp(suffix=".db"))
    db.execute("CREATE TABLE msg (msgid TEXT PRIMARY KEY, seq INTEGER, body TEXT)")
    seq, n = 0, 0
    t = time.perf_counter()
    while n < limit_records:
        resp = json.loads(sdk.get_chat_data(seq, 1000, proxy, "", 30))
        items = resp.get("chatdata") or []
        if not items:
            break
        for it in items:
            seq = max(seq, it["seq"])
            n += 1
            try:
                key = ring.unwrap(it["publickey_ver"], it["encrypt_random_key"])
                body = decrypt_data(lib, key, it["encrypt_chat_msg"])
                json.loads(body)
            except Exception:  # the wrappers log and skip a bad record
                continue
            db.execute("INSERT OR IGNORE INTO msg VALUES (?, ?, ?)",
                       (it["msgid"], it["seq"], body.decode("utf-8", "replace")))
        db.commit()
    took = time.perf_counter() - t
    sdk.close()
    return n / took


# ---- wxarchive --------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def wxarchive_rate(tenant: Path, proxy: str, home: Path, sim_pid: int) -> tuple[float, dict, dict]:
    """Messages/s, the run's counts, and CPU microseconds per message by process group:
    main (journal, catalog), workers (SDK and decrypt/parse pool), simulator."""
    from wxarchive.archive.archive import Archive
    from wxarchive.ingest import WeComCapture, WeComOptions

    info = json.loads((tenant / "tenant.json").read_text())
    opts = WeComOptions(corp_id=info["corp_id"], secret=(tenant / "secret").read_text().strip(),
                        private_keys=_keys(tenant), proxy=proxy, fetch_media=False)
    cpu0 = (_rusage_cpu(resource.RUSAGE_SELF), _rusage_cpu(resource.RUSAGE_CHILDREN), _cpu_seconds(sim_pid))
    with Archive.open(home, create=True) as ar:
        t = time.perf_counter()
        result = WeComCapture(ar, opts).run()  # its worker processes have exited and been reaped here
        took = time.perf_counter() - t
    cpu1 = (_rusage_cpu(resource.RUSAGE_SELF), _rusage_cpu(resource.RUSAGE_CHILDREN), _cpu_seconds(sim_pid))
    assert result.status == "ok", result.error
    n = result.counts["pulled"]
    us = {name: (b - a) / n * 1e6 for name, a, b in zip(("main", "workers", "simulator"), cpu0, cpu1)}
    return n / took, result.counts, us


def peak_rss(tenant: Path, proxy: str, home: Path) -> float:
    info = json.loads((tenant / "tenant.json").read_text())
    secret = home.parent / "secret"
    secret.write_text((tenant / "secret").read_text())
    cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home), "ingest", "wecom", "--corp-id",
           info["corp_id"], "--secret-file", str(secret), "--proxy", proxy, "--no-media"]
    for p in (tenant / "keys").glob("private_v*.pem"):
        cmd += ["--private-key", f"{p.stem.split('_v')[1]}={p}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of ceiling/single/wxarchive; ratios are per round, then the median")
    ap.add_argument("--rss-messages", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wxarchive-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("XDG_CONFIG_HOME", str(args.workdir / "config"))
    from wxarchive.demo import start_server_process

    tenant = _tenant(args.workdir, args.messages)
    cores = os.cpu_count()
    print(f"records {args.messages}, {cores} cores, {args.rounds} rounds "
          "(each round: ceiling, single, ceiling, wxarchive, ceiling; a run's ratio uses the mean "
          "of the ceilings measured just before and after it)")
    to_ceiling, to_single = [], []
    for r in range(1, args.rounds + 1):
        proc, proxy = start_server_process(tenant)
        try:
            c0 = rsa_ceiling(tenant, 3.0)
            single = single_loop(tenant, proxy, args.messages)
            c1 = rsa_ceiling(tenant, 3.0)
            home = Path(tempfile.mkdtemp(dir=args.workdir))
            ours, counts, us = wxarchive_rate(tenant, proxy, home / "archive", proc.pid)
            c2 = rsa_ceiling(tenant, 3.0)
            shutil.rmtree(home, ignore_errors=True)
        finally:
            proc.terminate()
            proc.wait()
        to_ceiling.append(ours / ((c1 + c2) / 2))
        to_single.append(ours / single)
        print(f"round {r}: ceiling RSA x{cores} {c0:7.0f}/{c1:7.0f}/{c2:7.0f} decrypts/s   single {single:7.0f} msg/s"
              f"   wxarchive {ours:7.0f} msg/s   ratios {to_ceiling[-1]:.2f} / {to_single[-1]:.2f}")
        rsa_us = 1e6 * cores / ((c1 + c2) / 2)
        print(f"  CPU per message: RSA alone {rsa_us:5.0f} us; wxarchive workers {us['workers']:5.0f} us "
              f"(RSA included), main {us['main']:5.0f} us, simulator {us['simulator']:5.0f} us; "
              f"total {sum(us.values()):5.0f} us on {cores} cores")
    print(f"wxarchive counts (last round): {counts}")
    print(f"ratio wxarchive/ceiling {_median(to_ceiling):.2f} median of {args.rounds}   (target >= 0.70)")
    print(f"ratio wxarchive/single  {_median(to_single):.2f} median of {args.rounds}   (target >= 1.80)")
    if args.rss_messages:
        big = _tenant(args.workdir, args.rss_messages)
        proc, proxy = start_server_process(big)
        try:
            rss = peak_rss(big, proxy, Path(tempfile.mkdtemp(dir=args.workdir)) / "archive")
        finally:
            proc.terminate()
            proc.wait()
        print(f"peak RSS at {args.rss_messages} messages: {rss:.0f} MB (target < 400 MB; largest single process)")


if __name__ == "__main__":
    main()
