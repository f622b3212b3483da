"""Android WeChat: ``EnMicroMsg.db`` (SQLCipher compatibility 1), read with its ``-wal``.

Key: the first 7 hex characters of ``md5(IMEI + uin)``. WeChat uses the fixed string
``1234567890ABCDEF`` when it cannot read the IMEI (Android 10+), and a uin may be negative,
so :func:`passphrases` lists every documented variant and the reader keeps the one that
opens page 1 (fact sheet §1.2; cases W6).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from wxarchive.capture.wechat import mediafiles, sqlcipher
from wxarchive.capture.wechat.records import (
    Contact, ConversationCensus, Group, Media, RawRow, contact_kind, count_into, fingerprint, ident, label,
    make_record,
)
from wxarchive.capture.wechat.sqlcipher import WeChatDbError
from wxarchive.model import Attachment

DB_NAME = "EnMicroMsg.db"
NO_IMEI = "1234567890ABCDEF"
REQUIRED = {"msgId", "msgSvrId", "type", "isSend", "createTime", "talker", "content"}


def candidates(imei: str | None, uin: str) -> list[tuple[str, str, str]]:
    """(IMEI, uin, passphrase) to try, most likely first."""
    uins = [uin.strip()]
    try:
        n = int(uins[0])
        uins.append(str(n & 0xFFFFFFFF) if n < 0 else str(n - (1 << 32)) if n >= 1 << 31 else str(n))
    except ValueError:
        pass
    imeis = [i for i in (imei.strip() if imei else None, NO_IMEI) if i]
    out: list[tuple[str, str, str]] = []
    for i in imeis:
        for u in dict.fromkeys(uins):
            p = hashlib.md5((i + u).encode()).hexdigest()[:7]
            if p not in {x[2] for x in out}:
                out.append((i, u, p))
    return out


def passphrases(imei: str | None, uin: str) -> list[str]:
    """Candidate 7-character passphrases, most likely first."""
    return [p for _, _, p in candidates(imei, uin)]


def find_db(path: Path) -> Path:
    if path.is_file() or not path.exists():
        return path
    if (path / DB_NAME).is_file():
        return path / DB_NAME
    found = [p for p in [*sorted(path.glob(f"*/{DB_NAME}")), *sorted(path.glob(f"*/*/{DB_NAME}"))] if p.is_file()]
    if len(found) == 1:
        return found[0]
    if found:
        raise WeChatDbError(f"{path}: holds {len(found)} Android accounts ({', '.join(p.parent.name for p in found)}); "
                            "give one account folder")
    raise WeChatDbError(f"{path}: no {DB_NAME} in this folder (give the database file or its account folder)")


def pick_passphrase(db: Path, imei: str | None, uin: str) -> str:
    tried = candidates(imei, uin)
    last = None
    for _, _, p in tried:
        try:
            sqlcipher.check(db, sqlcipher.ANDROID, p.encode())
            return p
        except WeChatDbError as e:
            last = e
            if "does not open" not in str(e):
                raise
    what = "; ".join(f"IMEI {'(none: WeChat’s stand-in) ' if i == NO_IMEI and not imei else ''}{i} with uin {u}"
                     for i, u, _ in tried)
    n = len(tried)
    raise WeChatDbError(f"{db}: no key derived from the IMEI and uin opens it ({n} tried: {what})") from last


class AndroidReader(sqlcipher.OpenDatabases):
    format = "android"
    profile = sqlcipher.ANDROID

    def __init__(self, path: Path, passphrase: str, account: str | None = None):
        self.path = find_db(path)
        super().__init__()
        try:
            self.conn = self.open(self.path, passphrase.encode())
            self._check_schema()
            info = dict(self.conn.execute("SELECT id, value FROM userinfo WHERE id IN (2, 4)").fetchall()) \
                if self._has("userinfo") else {}
            self.owner = account or ident(info.get(2)) or ""
            if not self.owner:
                raise WeChatDbError(f"{self.path}: userinfo has no own wxid (id 2); pass --account WXID")
            self.owner_name = label(info.get(4))
        except BaseException:
            self.close()
            raise

    def _has(self, table: str) -> bool:
        return sqlcipher.has_table(self.conn, table)

    def _columns(self, table: str) -> set[str]:
        return sqlcipher.columns(self.conn, table)

    def _check_schema(self) -> None:
        if not self._has("message"):
            raise WeChatDbError(f"{self.path}: decrypts, but has no message table: not an EnMicroMsg.db")
        missing = REQUIRED - self._columns("message")
        if missing:
            raise sqlcipher.schema_error(self.path, self.conn, "message", missing)

    def contacts(self) -> dict[str, Contact]:
        labels: dict[str, str] = {}
        if self._has("ContactLabel"):
            labels = {label(i): label(n) for i, n in self.conn.execute("SELECT labelID, labelName FROM ContactLabel")}
        cols = self._columns("rcontact") if self._has("rcontact") else set()
        if "username" not in cols:
            self._warn(f"{self.path}: no rcontact table with usernames: no contact names, labels or WeChat IDs")
            return {}
        sel = sqlcipher.select_list(cols, ("username", "alias", "conRemark", "nickname", "contactLabelIds"))
        out = {}
        for u, alias, remark, nick, label_ids in self.conn.execute(f"SELECT {sel} FROM rcontact"):
            u = ident(u)
            if not u:
                continue
            names = [labels.get(x.strip(), x.strip()) for x in (label(label_ids) or "").split(",") if x.strip()]
            out[u] = Contact(id=u, nickname=label(nick) or None, remark=label(remark) or None,
                             alias=ident(alias) or None, labels=names, kind=contact_kind(u))
        if not labels and any(c.labels for c in out.values()):
            self.labels_supported = False
            self._warn(f"{self.path}: contacts carry label ids but there is no ContactLabel table to name them: "
                       "work_labels cannot match")
        return out

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def groups(self) -> dict[str, Group]:
        if not self._has("chatroom"):
            return {}
        out = {}
        cols = self._columns("chatroom")
        sel = sqlcipher.select_list(cols, ("chatroomname", "memberlist", "displayname", "roomowner"))
        for name, members, display, owner in self.conn.execute(f"SELECT {sel} FROM chatroom"):
            name = ident(name)
            if name:
                out[name] = Group(id=name, owner=ident(owner) or None,
                                  members=[m for m in (ident(members) or "").split(";") if m])
        return out

    def census(self) -> list[ConversationCensus]:
        out: dict[str, ConversationCensus] = {}
        q = ("SELECT talker, CASE WHEN createTime > 0 THEN date(createTime / 1000, 'unixepoch') END, count(*) "
             "FROM message GROUP BY 1, 2")
        for talker, day, n in self.conn.execute(q):
            count_into(out, talker, day, n)
        return list(out.values())

    def rows(self, talker: str, after: dict[str, int], raw: object = None) -> Iterator[RawRow]:
        key = f"{DB_NAME}|message|{talker}"
        match = "CAST(talker AS BLOB) = ?" if isinstance(raw, bytes) else "talker = ?"
        cur = self.conn.execute(f"SELECT * FROM message WHERE {match} AND msgId > ? ORDER BY msgId",
                                (raw if raw is not None else talker, after.get(key, 0)))
        names = [d[0] for d in cur.description]
        for values in cur:
            row = dict(zip(names, values))
            occurrence = None
            if not row.get("msgSvrId"):
                occurrence = self.conn.execute(
                    f"SELECT count(*) FROM message WHERE {match} AND createTime / 1000 = ? AND type = ? AND msgId < ? "
                    "AND (msgSvrId IS NULL OR msgSvrId = 0)",
                    (raw if raw is not None else talker, _int(row["createTime"]) // 1000, row["type"], row["msgId"])
                ).fetchone()[0]
            rec = make_record(self.format, DB_NAME, "message", talker, self.owner, row, occurrence=occurrence)
            yield RawRow(key, row["msgId"], rec, self._voice(row), row, fingerprint(row["msgSvrId"], row["createTime"]))

    def row_at(self, cursor_key: str, local_id: int) -> RawRow | None:
        """The row a cursor position names, in this copy (to look again for its media)."""
        cur = self.conn.execute("SELECT * FROM message WHERE msgId = ?", (local_id,))
        got = cur.fetchone()
        if got is None:
            return None
        row = dict(zip([d[0] for d in cur.description], got))
        return RawRow(cursor_key, local_id, {"talker": cursor_key.split("|", 2)[2]}, [], row, server_id=row["msgSvrId"])

    def fingerprint(self, cursor_key: str, local_id: int) -> str | None:
        got = self.conn.execute("SELECT msgSvrId, createTime FROM message WHERE msgId = ?", (local_id,)).fetchone()
        return fingerprint(*got) if got else None

    def _voice(self, row: dict) -> list[Media]:
        """``voice2/<h[0:2]>/<h[2:4]>/msg_<imgPath>.amr`` with ``h = md5(imgPath)`` beside the database."""
        if (_int(row.get("type")) & 0xFFFF) != 34 or not row.get("imgPath"):
            return []
        stem = row["imgPath"]
        if not isinstance(stem, str) or "/" in stem or "\\" in stem or stem.startswith("."):
            return []  # a stem from the database never names another folder
        h = hashlib.md5(stem.encode("utf-8", "surrogateescape")).hexdigest()
        f = self.path.parent / "voice2" / h[:2] / h[2:4] / f"msg_{stem}.amr"
        try:
            data = f.read_bytes()
        except OSError:
            return []
        return [Media("", "voice", data, "audio/amr" if data.startswith(b"#!AMR") else "audio/silk")]


    def media_file(self, row: RawRow, att: Attachment) -> Media:
        """Images in ``image2/<n[0:2]>/<n[2:4]>/<n>`` (the full image's name from ``ImgInfo2``
        by server id, else the ``th_`` thumbnail named by ``imgPath``), video in
        ``video/<imgPath>.mp4`` (fact sheet §1.5)."""
        kind = att.kind
        v = row.values or {}
        d = self.path.parent
        stem = v.get("imgPath") if _safe_name(v.get("imgPath")) else None
        if kind == "image":
            big, thumb = [], []
            if stem and stem.startswith("THUMBNAIL_DIRPATH://"):
                thumb.append(stem.split("://", 1)[1])
            elif stem:
                thumb.append(stem)
            svr = v.get("msgSvrId")
            if svr and self._has("ImgInfo2") and "msgSvrId" in self._columns("ImgInfo2"):
                cols = self._columns("ImgInfo2")
                sel = sqlcipher.select_list(cols, ("bigImgPath", "midImgPath", "thumbImgPath"))
                for b, m, t in self.conn.execute(f"SELECT {sel} FROM ImgInfo2 WHERE msgSvrId = ?", (svr,)):
                    big += [x for x in (b, m) if _safe_name(x) and not x.startswith("SERVERID://")]
                    thumb += [x.split("://", 1)[-1] for x in (t,) if isinstance(x, str) and _safe_name(x.split("://", 1)[-1])]

            def where(n: str):
                h = n[3:] if n.startswith("th_") else n
                return d / "image2" / h[:2] / h[2:4] / n

            f = mediafiles.first_file([where(n) for n in big if len(n) > 4], d)
            if f:
                return Media("", kind, None, None, file=f)
            f = mediafiles.first_file([where(n) for n in thumb if len(n) > 4], d)
            if f:
                return Media("", kind, None, None, file=f, note="only the thumbnail was on the device")
            return Media("", kind, None, None, looked="no full image or thumbnail for it in image2/ (never downloaded "
                                                      "on the phone, or cleared)")
        if kind == "video":
            f = mediafiles.first_file([d / "video" / f"{stem}.mp4"], d) if stem else None
            if f:
                return Media("", kind, None, None, file=f)
            return Media("", kind, None, None, looked=f"not in video/ (looked for {stem}.mp4)" if stem else
                         "the row names no video file (imgPath empty)")
        if kind == "file":
            return Media("", kind, None, None, looked="Android keeps received files in the phone's shared storage "
                                                      "(…/MicroMsg/Download), outside the account folder that is read")
        return Media("", kind, None, None, looked=f"{kind} files are not kept in the account folder")


def _safe_name(v: object) -> bool:
    """A file name from the database that names no other folder."""
    return isinstance(v, str) and bool(v) and "/" not in v.split("://", 1)[-1] and "\\" not in v \
        and not v.startswith(".") and ".." not in v


def _int(v: object) -> int:
    return v if isinstance(v, int) else 0
