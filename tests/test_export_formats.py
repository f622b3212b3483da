"""EML, HTML and CSV exports, and journaling over SMTP to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import csv
import email
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from email import policy
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.export.conversations import Directory
from wxarchive.export.csv import cell
from wxarchive.export.html import render_message, safe_href
from wxarchive.export.journaling import JournalingError, SmtpTarget, journal_smtp
from wxarchive.search.query import Query, iter_results


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", "--home", str(home), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


@pytest.fixture(scope="module")
def source(ingested, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("formats-source") / "home"
    shutil.copytree(ingested, home)
    return home


@pytest.fixture(scope="module")
def messages(source) -> list[dict]:
    with Archive.open(source, readonly=True) as ar:
        return list(iter_results(ar.catalog.engine, Query(), "Asia/Shanghai"))  # the default zone, as the CLI shows


# ---- EML ----------------------------------------------------------------------------------


def _lines(text: str) -> str:
    return "\n".join(text.splitlines())


def _parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=policy.default)


@pytest.mark.parametrize("per", ["day", "message"])
def test_eml_parses_back_to_the_same_content(source, messages, tmp_path, per):
    out = tmp_path / "eml"
    done = _cli(source, "export", "--format", "eml", "--per", per, "--out", str(out))
    assert done.returncode == 0, done.stderr
    by_id = {m["msgid"]: m for m in messages}
    seen: list[str] = []
    with Archive.open(source, readonly=True) as ar:
        for f in sorted((out / "eml").glob("*.eml")):
            msg = _parse(f)
            assert msg["Message-ID"] and msg["From"] and msg["X-GlobalRelay-MsgType"] == "WeCom"
            assert str(msg["Date"]).endswith("+0800")  # the zone the body's times are in (Asia/Shanghai)
            ids = str(msg["X-Wxarchive-Msgids"]).split()
            assert int(msg["X-Wxarchive-Message-Count"]) == len(ids)
            if per == "message":
                assert len(ids) == 1
            # line ends are the only difference allowed: an e-mail's text is lines (CRLF on the wire)
            plain = _lines(msg.get_body(("plain",)).get_content())
            html_part = _lines(msg.get_body(("html",)).get_content())
            days = set()
            for i in ids:
                m = by_id[i]
                assert _lines(m["text"]) in plain  # every message's text
                assert (_lines(m["text"]).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                        .replace('"', "&quot;").replace("'", "&#x27;")) in html_part
                days.add((m["sent_at"] or "")[:10])
            if per == "day":
                assert len(days) == 1
            attached = sorted(hashlib.sha256(a.get_payload(decode=True)).hexdigest() for a in msg.iter_attachments())
            want = [a for i in ids for a in by_id[i]["attachments"] if a["state"] == "present"]
            assert attached == sorted(a["sha256"] for a in want)  # the stored bytes, exactly
            for a in want:
                assert hashlib.sha256(ar.blobs.get(a["sha256"])).hexdigest() == a["sha256"]
            seen += ids
    assert sorted(seen) == sorted(by_id)  # each message in exactly one e-mail
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["reconciled"] and manifest["per"] == per


# ---- HTML ---------------------------------------------------------------------------------


def _tags(page: str) -> list[tuple[str, list[tuple[str, str]]]]:
    from html.parser import HTMLParser

    found = []

    class P(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, [(k, v or "") for k, v in attrs]))

    P().feed(page)
    return found


def test_html_transcripts_are_escaped_and_complete(source, messages, tmp_path):
    out = tmp_path / "html"
    done = _cli(source, "export", "--format", "html", "--out", str(out))
    assert done.returncode == 0, done.stderr
    pages = sorted(p for p in out.glob("*.html") if p.name != "index.html")
    text = "".join(p.read_text(encoding="utf-8") for p in pages)
    assert len(pages) == len({(m["source"], m["conversation"]) for m in messages})
    index = (out / "index.html").read_text(encoding="utf-8")
    assert {v for t, attrs in _tags(index) for k, v in attrs if t == "a" and k == "href"} == {p.name for p in pages}
    tags = _tags(text)
    assert tags and not any(t == "script" or t == "iframe" or t == "object" for t, _ in tags)
    for t, attrs in tags:
        for k, v in attrs:
            assert not k.startswith("on"), (t, k)
            if k in ("href", "src"):
                assert v.startswith(("media/", "#m-", "http://", "https://")), (t, k, v)
    assert text.count('class="msg') == len(messages)
    for p in pages:
        assert "Content-Security-Policy" in p.read_text(encoding="utf-8")
    for m in messages:
        for a in m["attachments"]:
            if a["state"] == "present":
                media = list((out / "media").glob(a["sha256"] + "*"))
                assert media and hashlib.sha256(media[0].read_bytes()).hexdigest() == a["sha256"]


def test_html_neutralises_hostile_content(source):
    with Archive.open(source, readonly=True) as ar:
        directory = Directory(ar.catalog.engine)
    hostile = {
        "msgid": 'x"><script>alert(1)</script>', "source": "wecom:x", "sender": "<img src=x onerror=alert(1)>",
        "sent_at": "2024-01-01T00:00:00+08:00", "kind": "link", "text": "<script>alert('t')</script> & <b>bold</b>",
        "recalls": None, "reply_to": None, "attachments": [], "conversation": "c", "recipients": [],
        "content": {"link": {"link_url": "javascript:alert(document.cookie)", "title": "<i>t</i>"}},
    }
    page = render_message(hostile, directory, None, lambda a: "", None)
    assert [t for t, _ in _tags(page)] == ["div", "span", "span", "span", "div", "div"]  # ours only
    assert "<script" not in page and "<img" not in page and "<b>" not in page
    assert 'href="javascript' not in page and "link (not followed)" in page
    assert safe_href("https://example.com/a?b=1") == "https://example.com/a?b=1"
    for bad in ("javascript:alert(1)", " JavaScript:x", "data:text/html,x", "vbscript:x", "file:///etc/passwd",
                "https://ok.example/\nSet-Cookie", None, 5):
        assert safe_href(bad) is None, bad


# ---- CSV ----------------------------------------------------------------------------------


def test_csv_cells_never_run_as_formulas():
    for evil in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "  =HYPERLINK(\"x\")", "＝1"):
        assert cell(evil).startswith("'"), evil
    for fine in ("hello", "1-2", "a=b", "", None, 42, "中文=1"):
        assert not cell(fine).startswith("'"), fine


def test_csv_round_trips_every_message(source, messages, tmp_path):
    out = tmp_path / "csv"
    done = _cli(source, "export", "--format", "csv", "--out", str(out))
    assert done.returncode == 0, done.stderr
    raw = (out / "messages.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert len(rows) == len(messages)
    by_id = {r["msgid"]: r for r in rows}
    multiline = 0
    for m in messages:
        got = by_id[m["msgid"]]["text"]
        assert got == cell(m["text"])  # intact, newlines included (formulas get their apostrophe)
        multiline += "\n" in m["text"]
    assert multiline > 0


# ---- journaling over SMTP -----------------------------------------------------------------


class _Sink:
    """An aiosmtpd handler keeping what it accepted; can restart its server after the n-th."""

    def __init__(self):
        self.received: list[email.message.EmailMessage] = []
        self.restart_after: int | None = None
        self.on_restart = None
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append(email.message_from_bytes(envelope.content, policy=policy.default))
            n = len(self.received)
        if self.restart_after is not None and n == self.restart_after and self.on_restart:
            threading.Thread(target=self.on_restart, daemon=True).start()
        return "250 OK"


class _Server:
    """An aiosmtpd server on localhost (optionally STARTTLS-only and with AUTH) that can be
    restarted on the same port."""

    def __init__(self, *, tls: bool = False, auth: tuple[str, str] | None = None):
        import socket

        self.sink = _Sink()
        self.cert: bytes | None = None
        self.kw: dict = {}
        with socket.socket() as s:  # a free port, kept across restarts
            s.bind(("localhost", 0))
            self.port = s.getsockname()[1]
        if tls:
            from wxarchive.simulate.proxy import make_certificate, server_tls_context

            self.cert, key = make_certificate("localhost")
            self.kw.update(tls_context=server_tls_context(self.cert, key), require_starttls=True)
        if auth:
            def authenticator(server, session, envelope, mechanism, data):
                from aiosmtpd.smtp import AuthResult

                return AuthResult(success=(data.login.decode(), data.password.decode()) == auth, handled=False)

            self.kw.update(authenticator=authenticator, auth_require_tls=True)
        self.c = None
        self.start()

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.c = Controller(self.sink, hostname="localhost", port=self.port, **self.kw)
        self.c.start()

    def stop(self) -> None:
        if self.c is not None:
            self.c.stop()
            self.c = None

    def restart(self, down: float = 0.8) -> None:
        time.sleep(0.05)  # let the 250 reach the client first
        self.stop()
        time.sleep(down)
        self.start()


@pytest.fixture
def smtp_server():
    servers: list[_Server] = []

    def make(**kw) -> _Server:
        servers.append(_Server(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def _ids(sink: _Sink) -> list[str]:
    return [i for m in sink.received for i in str(m["X-Wxarchive-Msgids"]).split()]


def test_journaling_survives_a_server_restart_with_no_loss_and_no_duplicates(source, messages, smtp_server,
                                                                             tmp_path):
    srv = smtp_server()
    srv.sink.restart_after = 5
    srv.sink.on_restart = srv.restart
    target = SmtpTarget("localhost", srv.port, ["journal@archive.example"], tls=False)
    ledger = tmp_path / "ledger.sqlite"
    with Archive.open(source, readonly=True) as ar:
        res = journal_smtp(ar, Query(), target, ledger_path=ledger, retry_base=0.2)
        assert res.retries >= 1  # the restart was felt, and ridden out
        got = _ids(srv.sink)
        assert sorted(got) == sorted(m["msgid"] for m in messages)  # none lost, none twice
        assert len({str(m["Message-ID"]) for m in srv.sink.received}) == len(srv.sink.received)
        again = journal_smtp(ar, Query(), target, ledger_path=ledger, retry_base=0.2)
    assert again.delivered_messages == 0 and again.already_delivered == len(messages)
    assert len(_ids(srv.sink)) == len(messages)


def test_journaling_a_crash_after_delivery_resends_the_same_message_id(source, smtp_server, tmp_path):
    """A crash between the server's 250 and the ledger commit: the re-sent e-mail carries the
    same Message-ID, so the receiving archive's dedupe drops it."""
    srv = smtp_server()
    target = SmtpTarget("localhost", srv.port, ["j@archive.example"], tls=False)
    q = Query(since=None)
    with Archive.open(source, readonly=True) as ar:
        first = journal_smtp(ar, q, target, ledger_path=tmp_path / "a.sqlite")
        ids_first = sorted(str(m["Message-ID"]) for m in srv.sink.received)
        srv.sink.received.clear()
        journal_smtp(ar, q, target, ledger_path=tmp_path / "b.sqlite")  # as if the ledger had lost it all
        assert sorted(str(m["Message-ID"]) for m in srv.sink.received) == ids_first and first.emls == len(ids_first)


def test_journaling_over_starttls_with_auth(source, smtp_server, tmp_path):
    srv = smtp_server(tls=True, auth=("journal", "s3cret"))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(srv.cert)
    q = Query(conversation=None, limit=20)
    with Archive.open(source, readonly=True) as ar:
        with pytest.raises(JournalingError, match="not trusted"):
            journal_smtp(ar, q, SmtpTarget("localhost", srv.port, ["j@x.example"], user="journal", password="s3cret"),
                         ledger_path=tmp_path / "l0.sqlite", attempts=1)
        with pytest.raises(JournalingError, match="authentication failed"):
            journal_smtp(ar, q, SmtpTarget("localhost", srv.port, ["j@x.example"], ca_file=str(ca), user="journal",
                                           password="wrong"), ledger_path=tmp_path / "l1.sqlite", attempts=1)
        res = journal_smtp(ar, q, SmtpTarget("localhost", srv.port, ["j@x.example"], ca_file=str(ca), user="journal",
                                             password="s3cret"), ledger_path=tmp_path / "l2.sqlite")
    assert res.delivered_messages == 20 and len(_ids(srv.sink)) == 20


def test_each_target_has_its_own_ledger():
    a = SmtpTarget("h", 25, ["a@b", "c@d"])
    b = SmtpTarget("h", 25, ["a_b_c@d"])
    assert a.slug != b.slug and SmtpTarget("h", 25, ["x@y"]).slug != SmtpTarget("h", 25, ["x_y"]).slug
    assert a.slug == SmtpTarget("H", 25, ["c@d", "a@b"]).slug  # the same target, however written


def test_empty_or_undecodable_filters_are_refused(source):
    for args in (["search", "--sender", ""], ["search", "--ext", " "], ["search", ""],
                 ["export", "--format", "csv", "--out", "/tmp/never-written", "--text", ""],
                 ["export", "--format", "rsmf", "--out", "/tmp/never-written", "--text", "(合同"],
                 ["journal", "--smtp", "host:²", "--to", "x@y"]):
        done = _cli(source, *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
    assert not Path("/tmp/never-written").exists()


def test_journal_refuses_what_is_not_one_bare_address(source):
    for flag, addr in (("--to", "not an address"), ("--to", "Name <j@archive.example>"),
                       ("--to", "a@archive.example,b@archive.example"), ("--to", "j@"), ("--from", "me")):
        args = ["journal", "--smtp", "localhost:1", "--no-tls", "--to", "j@archive.example"]
        args += [flag, addr] if flag == "--from" else []
        if flag == "--to":
            args[-1] = addr
        done = _cli(source, *args)
        assert done.returncode == 2, (addr, done.stderr)
        assert f"{flag} {addr!r}: not an e-mail address" in done.stderr


def test_journal_command(source, smtp_server, tmp_path):
    srv = smtp_server()
    done = _cli(source, "journal", "--smtp", f"localhost:{srv.port}", "--to", "j@archive.example", "--no-tls",
                "--per", "message", "--since", "2000-01-01")
    assert done.returncode == 0, done.stderr
    assert "delivered" in done.stdout and len(srv.sink.received) == len(_ids(srv.sink)) > 0
    again = _cli(source, "journal", "--smtp", f"localhost:{srv.port}", "--to", "j@archive.example", "--no-tls",
                 "--per", "message", "--since", "2000-01-01")
    assert again.returncode == 0 and "delivered 0 message(s)" in again.stdout
    srv.stop()
    down = _cli(source, "journal", "--smtp", f"localhost:{srv.port}", "--to", "other@archive.example", "--no-tls",
                "--attempts", "1")  # a new target: everything to send, and nobody there
    assert down.returncode == 1 and "Traceback" not in down.stderr and "connection refused" in down.stderr
    need_tls = _cli(source, "journal", "--smtp", "localhost:1", "--to", "x@y", "--user", "u")
    assert need_tls.returncode == 2 and "no password" in need_tls.stderr
    bad = _cli(source, "journal", "--smtp", "nohostport", "--to", "x@y")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


# ---- the recipient's check ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["html", "csv", "eml"])
def test_a_recipient_checks_an_export_without_an_archive(source, tmp_path, fmt):
    out = tmp_path / "out"
    assert _cli(source, "export", "--format", fmt, "--out", str(out), "--text", "合同").returncode == 0
    shown = _cli(source, "keys", "public")
    assert shown.returncode == 0, shown.stderr
    fingerprint = shown.stderr.split("fingerprint (SHA-256 of the raw key):")[1].split()[0]
    nowhere = tmp_path / "no-archive"  # the recipient has wxarchive, not the archive
    ok = _cli(nowhere, "verify-export", str(out), "--expect-key", fingerprint)
    assert ok.returncode == 0 and "intact:" in ok.stdout and "the expected one" in ok.stdout, ok.stdout + ok.stderr
    summary = json.loads(_cli(nowhere, "verify-export", str(out), "--json").stdout)
    assert summary["ok"] and fmt in summary["format"] and summary["query"]["text"] == "合同" and not summary["pinned"]
    assert not nowhere.exists()
    wrong = _cli(nowhere, "verify-export", str(out), "--expect-key", "0" * 64)
    assert wrong.returncode == 1 and "not the expected" in wrong.stderr
    victim = next(p for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json")
    victim.write_bytes(victim.read_bytes() + b" ")
    altered = _cli(nowhere, "verify-export", str(out))
    assert altered.returncode == 1 and "SHA-256 differs from the manifest" in altered.stderr
    victim.unlink()
    (out / "extra.txt").write_text("slipped in")
    both = _cli(nowhere, "verify-export", str(out))  # every difference is named, not the first only
    assert both.returncode == 1 and "2 files differ" in both.stderr
    assert f"{victim}: listed in the manifest but missing" in both.stderr
    assert "extra.txt: not listed in the manifest (added after export)" in both.stderr
    gone = _cli(nowhere, "verify-export", str(tmp_path / "nope"))
    assert gone.returncode == 2 and "no such folder" in gone.stderr
    (tmp_path / "plain").mkdir()
    assert _cli(nowhere, "verify-export", str(tmp_path / "plain")).returncode == 2
