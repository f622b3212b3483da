"""Journal append and verify throughput, against a bare crypto loop measured in the same run.

    python bench/journal.py [--records 1000000] [--size 600] [--rounds 3] [--workdir DIR]

Prints, measured now on this machine over the same records:
- ``baseline``: a bare loop doing only what the journal's format requires per record — the
  SHA-256 chain over AES-256-GCM ciphertext (fresh 96-bit nonce per record) — with no
  framing, metadata, file I/O or checks;
- ``append``: every record (kind, JSON metadata, data) appended by ``Journal.append_many``
  a batch of 1,000 at a time with group commit, as the ingest journals each batch of raw
  items: the batch's fsync is started (``sync_start``) and runs while the next batch is
  appended, and is waited for (``sync_wait``) before the next one starts — one fsync in
  flight, every batch durable one batch later, and every record durable before each timed
  chunk ends (the ingest overlaps the same fsync with building the catalog transaction it
  waits for before committing);
- ``append serial``: the same with each batch's ``sync`` (write + fsync) waited for before the
  next batch is appended (``--single``: one ``Journal.append`` call per record instead, as the
  ingest journals decrypted messages);
  both timed per 20,000 records, each chunk right after the baseline over the same chunk
  (this machine's speed drifts); each round also says how much of it was spent inside
  the sync calls: the disk's fsync latency, which other processes' I/O can multiply
  (0.5 us/record on a quiet disk here, 3-5 us/record beside a busy test run);
- ``verify``: ``wxarchive.archive.verify.verify_archive`` over that journal (every frame's
  serial, chain hash and GCM tag, every segment header and key), catalog and blobs absent,
  as ``wxarchive verify --no-catalog --no-blobs`` runs it (a journal over 128 MiB is checked
  a segment per worker process, one per core); the baseline is the single-core loop, run
  before and after;
and the ratios append/baseline (target >= 0.5: read on the group-commit figure, the ingest's
path; the serial one is printed beside it) and verify/baseline (>= 0.5), append records/s
(target >= 50,000) and the time to verify (target < 60 s at 1,000,000 records).
Records are ~``--size`` bytes of random data: the size of a typical encrypted chatdata item.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wxarchive.archive.checkpoints import Signer, write_checkpoint
from wxarchive.archive.journal import Journal
from wxarchive.archive.keys import LocalMasterKey
from wxarchive.archive.verify import verify_archive


def _records(n: int, size: int) -> list[tuple[dict, bytes]]:
    blob = os.urandom(size * 64)
    out = []
    for i in range(n):
        o = (i * 131) % (len(blob) - size)
        out.append(({"source": "wecom:wwbench", "key": f"{i:019d}_1710000000", "cursor": str(i + 1)},
                    blob[o : o + size]))
    return out


def baseline(records: list[tuple[dict, bytes]]) -> float:
    """Seconds for the bare loop over ``records``."""
    aead = AESGCM(os.urandom(32))
    prev = b"\0" * 32
    t = time.perf_counter()
    for _, data in records:
        nonce = os.urandom(12)
        ct = aead.encrypt(nonce, data, None)
        prev = hashlib.sha256(prev + nonce + ct).digest()
    return time.perf_counter() - t


def append(d: Path, master: LocalMasterKey, records: list[tuple[dict, bytes]],
           chunk: int = 20_000, single: bool = False, overlap: bool = False) -> tuple[float, float, int, float]:
    """Append every record, timed chunk by chunk with the baseline over the same chunk run just
    before it (so that both see the same machine: this one's speed drifts by a third within
    seconds). Returns (append rec/s, baseline rec/s, journal bytes, seconds of the append time
    spent inside ``sync``: writing the last frames and waiting for the fsync)."""
    shutil.rmtree(d, ignore_errors=True)
    (d / "journal").mkdir(parents=True)
    t_app = t_base = t_sync = 0.0
    clock = time.perf_counter
    inflight = 0
    with Journal.open(d / "journal", master) as j:
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            t_base += baseline(part)
            t = clock()
            if single:
                for i, (meta, data) in enumerate(part, start + 1):
                    j.append("wecom.chatdata", meta, data)
                    if i % 1000 == 0:
                        s = clock()
                        j.sync()
                        t_sync += clock() - s
            elif overlap:
                for b in range(0, len(part), 1000):
                    j.append_many("wecom.chatdata", part[b : b + 1000])
                    s = clock()
                    j.sync_wait(inflight)  # the batch before: durable before this one's fsync starts
                    inflight = j.sync_start()
                    t_sync += clock() - s
                s = clock()
                j.sync_wait(inflight)  # durable inside the timed chunk (not during the next baseline)
                t_sync += clock() - s
            else:
                for b in range(0, len(part), 1000):
                    j.append_many("wecom.chatdata", part[b : b + 1000])
                    s = clock()
                    j.sync()
                    t_sync += clock() - s
            t_app += clock() - t
        t = clock()
        j.sync()
        t_app += clock() - t
        t_sync += clock() - t
        # sign the head as an archive does on close (verify checks the checkpoint too)
        signer = Signer.load_or_create(d / "keys", master)
        write_checkpoint(j.dir, signer.sign("wxa-bench", j.head_serial, j.head_hash, j.head_segment()))
    size = sum(p.stat().st_size for p in (d / "journal").glob("seg-*.wxj"))
    return len(records) / t_app, len(records) / t_base, size, t_sync


def verify(d: Path, master: LocalMasterKey, n: int) -> tuple[float, float]:
    t = time.perf_counter()
    report = verify_archive(d, master, "wxa-bench", blobs=False, catalog=False)
    dt = time.perf_counter() - t
    if not report.ok or report.entries != n:
        raise SystemExit(f"verify failed on the bench journal: {report.problems[:3]}")
    return n / dt, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--single", action="store_true", help="one Journal.append call per record")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wxarchive-bench-journal")
    args = ap.parse_args()
    master = LocalMasterKey(os.urandom(32), "bench")
    records = _records(args.records, args.size)
    mb = args.records * args.size / 1e6
    print(f"records {args.records} x {args.size} B ({mb:.0f} MB of data), {args.rounds} rounds, "
          f"baseline interleaved with append (per 20,000) and run before and after verify")
    to_base_a, to_base_v, rates_a, times_v, to_base_s = [], [], [], [], []
    for r in range(1, args.rounds + 1):
        sa, sba, _, sts = append(args.workdir, master, records, single=args.single)
        to_base_s.append(sa / sba)
        a, ba, size, ts = append(args.workdir, master, records, overlap=True)
        b1 = len(records) / baseline(records)
        v, vt = verify(args.workdir, master, args.records)
        b2 = len(records) / baseline(records)
        to_base_a.append(a / ba)
        to_base_v.append(v / ((b1 + b2) / 2))
        rates_a.append(a)
        times_v.append(vt)
        n = len(records)
        print(f"round {r}: append {a:8.0f} rec/s ({a * args.size / 1e6:5.1f} MB/s, journal {size / 1e6:.0f} MB; "
              f"{1e6 / a:.2f} us/rec, of which sync {ts / n * 1e6:.2f}) vs baseline {ba:8.0f} ({1e6 / ba:.2f} us/rec) "
              f"= {a / ba:.2f}   verify {v:8.0f} rec/s ({v * args.size / 1e6:5.1f} MB/s, {vt:.1f} s) "
              f"vs baseline {b1:8.0f}/{b2:8.0f} = {to_base_v[-1]:.2f}")
        print(f"         append serial {sa:8.0f} rec/s ({1e6 / sa:.2f} us/rec, of which sync {sts / n * 1e6:.2f}) "
              f"vs baseline {sba:8.0f} = {to_base_s[-1]:.2f}")
    shutil.rmtree(args.workdir, ignore_errors=True)
    med = statistics.median
    print(f"ratio append/baseline {med(to_base_a):.2f}   (target >= 0.50; rounds {min(to_base_a):.2f}-{max(to_base_a):.2f}; "
          f"group commit, as the ingest appends)")
    print(f"ratio append serial/baseline {med(to_base_s):.2f}   (rounds {min(to_base_s):.2f}-{max(to_base_s):.2f}; "
          f"each batch's fsync waited for before the next append)")
    print(f"ratio verify/baseline {med(to_base_v):.2f}   (target >= 0.50; rounds {min(to_base_v):.2f}-{max(to_base_v):.2f})")
    print(f"append {med(rates_a):.0f} records/s   (target >= 50,000)")
    print(f"verify of {args.records} records {med(times_v):.1f} s   (target < 60 s at 1,000,000)")
    print(json.dumps({"append_ratio": round(med(to_base_a), 3), "append_serial_ratio": round(med(to_base_s), 3),
                      "verify_ratio": round(med(to_base_v), 3),
                      "append_per_s": round(med(rates_a)), "verify_s": round(med(times_v), 2)}), file=sys.stderr)


if __name__ == "__main__":
    main()
