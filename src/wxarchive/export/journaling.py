"""``wxarchive journal --smtp HOST:PORT --to ADDR``: deliver the archive as EML to an enterprise
archive's journaling address (Global Relay, Smarsh, Proofpoint, Purview), exactly once.

Bookkeeping: a delivery ledger per target (``<home>/journaling/<target>.sqlite``, synchronous
writes) records every chat message once the server accepted (250) the EML carrying it. A
run sends only messages not in the ledger, grouped as EML per conversation-day; an EML's
Message-ID is a hash of the messages it carries, so if a crash falls between the server's
250 and the ledger's commit, the re-sent EML has the same Message-ID, on which receiving
archives dedupe. Connection failures, timeouts and 4xx replies are retried with
exponential backoff (the run survives a server restart); a 5xx reply or refused recipients
stop the run with the server's words. Transport: STARTTLS is required unless ``--no-tls``
(for a relay on the same host); the certificate is verified (``--ca-file`` to add a CA);
AUTH only over TLS, with the password from a file or ``WXARCHIVE_SMTP_PASSWORD``.
"""

from __future__ import annotations

import json
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wxarchive.export.conversations import Directory, safe_name
from wxarchive.export.eml import build_eml, eml_slices
from wxarchive.search.query import Query, count

PER_CONNECTION = 400  # Global Relay's limit of messages per SMTP connection


class JournalingError(Exception):
    """Delivery stopped; the message says why (what was delivered before stays delivered)."""


@dataclass
class SmtpTarget:
    host: str
    port: int
    to: list[str]
    sender: str = "wxarchive@localhost"
    tls: bool = True  # STARTTLS required
    ca_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0

    @property
    def slug(self) -> str:
        """The ledger's file name: readable, and unique per target (a hash of the exact host,
        port and recipients: 'a@b' + 'c@d' and 'a_b_c@d' are different targets)."""
        import hashlib

        exact = json.dumps([self.host.lower(), self.port, sorted(self.to)]).encode()
        return f"{safe_name(self.host.lower(), str(self.port), limit=60)}_{hashlib.sha256(exact).hexdigest()[:16]}"


@dataclass
class JournalResult:
    delivered_messages: int = 0
    emls: int = 0
    already_delivered: int = 0
    retries: int = 0
    selected: int = 0


class Ledger:
    """What has been delivered to one target: chat messages and the EML that carried them."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS delivered (source TEXT, msgid TEXT, message_id TEXT NOT NULL,"
                        " delivered_at INTEGER NOT NULL, PRIMARY KEY (source, msgid))")

    def delivered(self) -> set[tuple[str, str]]:
        return {(s, m) for s, m in self.db.execute("SELECT source, msgid FROM delivered")}

    def record(self, keys: list[tuple[str, str]], message_id: str) -> None:
        now = int(time.time() * 1000)
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?)",
                                [(s, m, message_id, now) for s, m in keys])

    def close(self) -> None:
        self.db.close()


class _Connection:
    def __init__(self, target: SmtpTarget):
        self.t = target
        self.smtp: smtplib.SMTP | None = None
        self.sent = 0

    def open(self) -> smtplib.SMTP:
        if self.smtp is not None and self.sent < PER_CONNECTION:
            return self.smtp
        self.close()
        t = self.t
        smtp = smtplib.SMTP(t.host, t.port, timeout=t.timeout)
        try:
            smtp.ehlo()
            if t.tls:
                if not smtp.has_extn("starttls"):
                    raise JournalingError(f"{t.host}:{t.port} does not offer STARTTLS (use --no-tls only for a "
                                          "relay on this host)")
                ctx = ssl.create_default_context(cafile=t.ca_file)
                smtp.starttls(context=ctx)
                smtp.ehlo()
            if t.user:
                if not t.tls:
                    raise JournalingError("refusing to send the SMTP password without TLS")
                smtp.login(t.user, t.password or "")
        except BaseException:
            smtp.close()
            raise
        self.smtp, self.sent = smtp, 0
        return smtp

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError):
                self.smtp.close()
            self.smtp = None


def _retryable(e: BaseException) -> bool:
    if isinstance(e, smtplib.SMTPResponseException):
        return 400 <= e.smtp_code < 500 or e.smtp_code == 421
    return isinstance(e, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError,
                          socket.timeout, TimeoutError, OSError)) and not isinstance(e, ssl.SSLCertVerificationError)


def journal_smtp(archive, q: Query, target: SmtpTarget, *, tz: str = "UTC", per: str = "day",
                 attempts: int = 8, retry_base: float = 1.0, ledger_path: Path | None = None,
                 progress: Callable[[int, int], None] = lambda done, total: None,
                 sleep: Callable[[float], None] = time.sleep) -> JournalResult:
    engine = archive.catalog.engine
    directory = Directory(engine)
    ledger = Ledger(ledger_path or archive.home / "journaling" / f"{target.slug}.sqlite")
    res = JournalResult(selected=count(engine, q))
    conn = _Connection(target)
    try:
        done = ledger.delivered()
        skipped = 0

        def skip(m: dict[str, Any]) -> bool:
            nonlocal skipped
            if (m["source"], m["msgid"]) in done:
                skipped += 1
                return True
            return False

        for sl in eml_slices(engine, q, directory, tz, per=per, skip=skip):
            msg = build_eml(sl, directory, archive.archive_id, archive.blobs.get, tz)
            data = msg.as_bytes()
            refused: dict = {}
            for attempt in range(1, attempts + 1):
                try:
                    smtp = conn.open()
                    refused = smtp.sendmail(target.sender, target.to, data)
                    conn.sent += 1
                    break
                except JournalingError:
                    raise
                except smtplib.SMTPRecipientsRefused as e:
                    raise JournalingError(f"{target.host}:{target.port} refused the recipients: "
                                          f"{_reasons(e.recipients)}") from None
                except smtplib.SMTPAuthenticationError as e:
                    raise JournalingError(f"{target.host}:{target.port}: authentication failed "
                                          f"({e.smtp_code} {_text(e.smtp_error)})") from None
                except ssl.SSLCertVerificationError as e:
                    raise JournalingError(f"{target.host}:{target.port}: TLS certificate not trusted "
                                          f"({e.verify_message}); give --ca-file") from None
                except Exception as e:  # noqa: BLE001 - classified just below
                    conn.close()
                    if not _retryable(e) or attempt == attempts:
                        raise JournalingError(f"{target.host}:{target.port}: {_describe(e)}"
                                              + (f" (after {attempt} attempts)" if attempt > 1 else "")) from None
                    res.retries += 1
                    sleep(min(retry_base * 2 ** (attempt - 1), 60.0))
            ledger.record([(m["source"], m["msgid"]) for m in sl.messages], str(msg["Message-ID"]))
            res.emls += 1
            res.delivered_messages += len(sl.messages)
            if refused:  # accepted for the other recipients (so recorded); these need fixing
                raise JournalingError(f"{target.host}:{target.port} accepted {msg['Message-ID']} but refused "
                                      f"{_reasons(refused)}")
            progress(res.delivered_messages + skipped, res.selected)
        res.already_delivered = skipped
    finally:
        conn.close()
        ledger.close()
    return res


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _reasons(recipients: dict) -> str:
    return "; ".join(f"{r}: {code} {_text(msg)}" for r, (code, msg) in recipients.items())


def _describe(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPResponseException):
        return f"server replied {e.smtp_code} {_text(e.smtp_error)}"
    if isinstance(e, (ConnectionRefusedError,)):
        return "connection refused (is the server up?)"
    return f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
