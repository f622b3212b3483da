"""The main job, end to end on the embedded default, against a simulated WeCom tenant.

simulate a tenant → serve it over the real wire protocol (a separate process) → ingest
through the official SDK → status and a few searches → check the archive against the
simulator's answer key (nothing lost, nothing duplicated, every msgtype present).

A face-level module (like cli.py): it may use the simulator, product code never does.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy import select

from wxarchive.archive.catalog import schema as s


@dataclass
class AnswerCheck:
    expected_archived: int = 0
    expected_quarantined: int = 0
    archived: int = 0
    quarantined: int = 0
    missing: list[str] = field(default_factory=list)  # in the answer key, not in the archive
    unexpected: list[str] = field(default_factory=list)  # in the archive, not in the answer key
    wrong_kind: list[str] = field(default_factory=list)
    media_expected: int = 0
    media_ok: int = 0
    media_bad: list[str] = field(default_factory=list)
    msgtypes_expected: set[str] = field(default_factory=set)
    msgtypes_archived: set[str] = field(default_factory=set)

    @property
    def lost(self) -> int:
        return len(self.missing)

    @property
    def ok(self) -> bool:
        return (not self.missing and not self.unexpected and not self.wrong_kind and not self.media_bad
                and self.media_ok == self.media_expected
                and self.msgtypes_expected <= self.msgtypes_archived)


def _lines(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _source_type(plain: dict[str, Any] | None) -> str | None:
    if not isinstance(plain, dict):
        return None
    return "switch" if plain.get("action") == "switch" else plain.get("msgtype")


def check_answer_key(engine, tenant: Path) -> AnswerCheck:
    """Compare the catalog with ``answer/*.jsonl`` of a simulated tenant."""
    chk = AnswerCheck()
    corp = json.loads((tenant / "tenant.json").read_text())["corp_id"]
    source = f"wecom:{corp}"
    with engine.connect() as c:
        msgs = {mid: kind for mid, kind in c.execute(
            select(s.messages.c.msgid, s.messages.c.kind).where(s.messages.c.source == source))}
        types = {t for (t,) in c.execute(select(s.messages.c.source_type).where(s.messages.c.source == source).distinct())}
        quarantined = {k for (k,) in c.execute(
            select(s.records.c.key).where(s.records.c.source == source, s.records.c.state == "quarantined"))}
        atts = {
            (mid, path): (state, sha)
            for mid, path, state, sha in c.execute(
                select(s.messages.c.msgid, s.attachments.c.path, s.attachments.c.state, s.attachments.c.sha256)
                .join(s.messages, s.messages.c.id == s.attachments.c.message_id)
                .where(s.messages.c.source == source))
        }
    chk.msgtypes_archived = types
    seen: set[str] = set()
    for a in _lines(tenant / "answer" / "messages.jsonl"):
        mid = a["msgid"]
        seen.add(mid)
        if a["expected"] == "archived":
            chk.expected_archived += 1
            st = _source_type(a.get("plaintext"))
            if st:
                chk.msgtypes_expected.add(st)
            if mid not in msgs:
                chk.missing.append(mid)
            else:
                chk.archived += 1
                if a.get("kind") and msgs[mid] != a["kind"]:
                    chk.wrong_kind.append(f"{mid}: {msgs[mid]} != {a['kind']}")
        else:
            chk.expected_quarantined += 1
            if mid in quarantined:
                chk.quarantined += 1
            else:
                chk.missing.append(mid)
    chk.unexpected = sorted(set(msgs) - seen)
    for m in _lines(tenant / "answer" / "media.jsonl"):
        chk.media_expected += 1
        got = atts.get((m["msgid"], m["path"]))
        want_state = m["state"]
        if got and got[0] == want_state and (want_state != "present" or got[1] == m["sha256"]):
            chk.media_ok += 1
        else:
            chk.media_bad.append(f"{m['msgid']}/{m['path'] or '-'}: {got[0] if got else 'absent'}, expected {want_state}")
    return chk


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server_process(tenant: Path, faults: str = "") -> tuple[subprocess.Popen, str]:
    """``wxarchive simulate serve`` in its own process; returns it and the proxy URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "wxarchive.cli", "simulate", "serve", str(tenant), "--port", str(port)]
    if faults:
        cmd += ["--faults", faults]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited: {proc.stderr.read().decode(errors='replace')[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the simulator did not start listening within 30 s")


def _tenant_matches(tenant: Path, messages: int, seed: int) -> bool:
    try:
        t = json.loads((tenant / "tenant.json").read_text())
    except (OSError, ValueError):
        return False
    return t.get("messages") == messages and t.get("seed") == seed and (tenant / "answer" / "media.jsonl").exists()


def run_demo(home: Path, tenant: Path, messages: int, seed: int, out: Console, err: Console,
             open_archive=None) -> bool:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from wxarchive.archive.archive import Archive
    from wxarchive.archive.status import status
    from wxarchive.config import load_settings
    from wxarchive.ingest import WeComOptions
    from wxarchive.search.query import Query, count, search
    from wxarchive.simulate.tenant import generate_tenant

    out.rule("1. simulate a WeCom tenant")
    if _tenant_matches(tenant, messages, seed):
        out.print(f"reusing the tenant in {tenant}")
    else:
        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err) as bar:
            task = bar.add_task("generating", total=messages)
            generate_tenant(tenant, messages=messages, seed=seed, progress=lambda n: bar.update(task, completed=n))
    info = json.loads((tenant / "tenant.json").read_text())
    out.print(f"corp {info['corp_id']}: {len(info['users'])} employees, {len(info['externals'])} external contacts, "
              f"{len(info['groups'])} groups, {messages} records in {len(info['msgtypes'])} msgtypes, "
              f"key versions {info['key_versions']}")

    out.rule("2. serve it over the real wire protocol (TLS CONNECT proxy)")
    proc, proxy = start_server_process(tenant)
    out.print(f"simulated qyapi.weixin.qq.com behind {proxy}")
    try:
        out.rule("3. ingest through the official WeCom SDK")
        from wxarchive.cli import _run_capture

        keys = {int(p.stem.split("_v")[1]): p.read_bytes() for p in sorted((tenant / "keys").glob("private_v*.pem"))}
        opts = WeComOptions(corp_id=info["corp_id"], secret=(tenant / "secret").read_text().strip(),
                            private_keys=keys, proxy=proxy)
        # the CLI's opener: it honours config.toml (master_key_file, catalog_encryption)
        archive = open_archive() if open_archive is not None else Archive.open(home, create=True)
        from wxarchive.cli import _setup_logging

        _setup_logging(home)
        t0 = time.monotonic()
        result = _run_capture(archive, opts, None)
        took = time.monotonic() - t0
        c = result.counts
        out.print(f"run {result.status} in {took:.1f} s ({c['pulled'] / max(took, 1e-9):.0f} records/s): pulled "
                  f"{c['pulled']}, archived {c['archived']}, duplicates {c['duplicates']}, quarantined "
                  f"{c['quarantined']}; media {dict(result.media)}")
        if result.status != "ok":
            err.print(f"[red]capture failed:[/] {result.error}")
            return False
        out.rule("3b. the directory: who the ids are (WeCom directory APIs, over the same HTTPS)")
        from wxarchive.capture.wecom.directory import DirectoryOptions
        from wxarchive.ingest import sync_directory

        ca = tenant / "simulator-ca.pem"
        for _ in range(50):  # the server writes its certificate as it starts
            if ca.exists():
                break
            time.sleep(0.1)
        d = sync_directory(archive, DirectoryOptions(info["corp_id"], opts.secret, proxy, ca.read_bytes()),
                           f"wecom:{info['corp_id']}")
        out.print(f"{d.answered} answers journaled (names, departments, group names, consent); "
                  f"{d.not_found} not found")
    finally:
        proc.terminate()
        proc.wait(10)

    out.rule("4. status")
    tz = load_settings(home).timezone
    from wxarchive.cli import _print_message, _print_status

    st = status(archive.catalog.engine, tz)
    log = archive.access_log()  # the demo reads like a person would: its reads are recorded too
    log.record("status", results=st["messages"])
    _print_status(st)

    out.rule("5. a few searches")
    from wxarchive.export.conversations import Directory

    names = Directory(archive.catalog.engine)
    for label, q in [
        ("'合同' (2 Chinese characters)", Query(text="合同")),
        ("'钱' (1 Chinese character)", Query(text="钱")),
        ("'term sheet' (English)", Query(text="term sheet")),
        ("'600519' (a stock code)", Query(text="600519")),
        ("files", Query(kind="file")),
        ("recalls", Query(kind="recall")),
    ]:
        n = count(archive.catalog.engine, q)
        log.record("search", query={k: v for k, v in (("text", q.text), ("type", q.kind)) if v}, results=n)
        out.print(f"{label}: {n} message(s)")
    q = Query(text="合同", has_attachment=True, limit=2)
    log.record("search", query={"text": q.text, "has_attachment": True, "limit": 2},
               results=min(2, count(archive.catalog.engine, q)))
    for r in search(archive.catalog.engine, q, tz):
        _print_message(r, names=names)

    out.rule("6. check against the answer key")
    chk = check_answer_key(archive.catalog.engine, tenant)
    archive.close()
    out.print(f"archived {chk.archived}/{chk.expected_archived}, quarantined as expected "
              f"{chk.quarantined}/{chk.expected_quarantined}, lost {chk.lost}, unexpected {len(chk.unexpected)}, "
              f"wrong kind {len(chk.wrong_kind)}")
    out.print(f"media byte-exact or correctly marked: {chk.media_ok}/{chk.media_expected}")
    missing_types = sorted(chk.msgtypes_expected - chk.msgtypes_archived)
    out.print(f"msgtypes archived: {len(chk.msgtypes_archived & chk.msgtypes_expected)}/{len(chk.msgtypes_expected)}"
              + (f" (missing {missing_types})" if missing_types else " — every msgtype present"))
    for line in (chk.missing[:5] + chk.unexpected[:5] + chk.wrong_kind[:5] + chk.media_bad[:5]):
        err.print(f"  {line}", highlight=False)
    if chk.ok:
        out.print("[bold green]0 lost: the archive equals the answer key[/]")
    else:
        out.print("[bold red]the archive does NOT equal the answer key[/]")
    return chk.ok
