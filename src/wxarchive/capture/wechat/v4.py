"""WeChat 4.x (Windows, macOS, Linux): ``db_storage/message/message_N.db`` shards.

Each chat has its own table ``Msg_<md5(chat id)>`` in whichever shards cover its time span;
the sender is ``real_sender_id`` → ``Name2Id.rowid`` *of the same shard*; ``local_type`` is
64-bit with the app-message subtype in the high 32 bits (filtering on ``= 49`` misses app
messages, case W2); ``message_content`` is zstd when it starts with the zstd magic. Voice is
in ``message/media_0.db`` (``VoiceInfo``), contacts in ``contact/contact.db``. SQLCipher 4
defaults, one 32-byte key for every file of the account (fact sheet §3).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

from wxarchive.capture.wechat import mediafiles, sqlcipher
from wxarchive.capture.wechat.records import (
    Contact, ConversationCensus, Group, Media, RawRow, contact_kind, count_into, fingerprint, ident, label,
    make_record,
)
from wxarchive.capture.wechat.windows import room_members
from wxarchive.capture.wechat.sqlcipher import WeChatDbError
from wxarchive.model import Attachment

REQUIRED = {"local_id", "server_id", "local_type", "real_sender_id", "create_time", "message_content"}
_SHARD = re.compile(r"^message_(\d+)\.db$")
_ACCOUNT_DIR = re.compile(r"^(.+)_[0-9a-fA-F]{4}$")


def find_storage(path: Path) -> Path:
    """``db_storage`` given itself, or found below an account folder, ``xwechat_files`` or a
    device copy's root (exactly one account there)."""
    for candidate in (path, path / "db_storage"):
        if (candidate / "message").is_dir():
            return candidate
    if not path.exists():
        raise WeChatDbError(f"{path}: no such folder")
    found = sorted({p.parent for pattern in ("*/db_storage/message", "*/*/db_storage/message")
                    for p in path.glob(pattern) if p.is_dir()})
    if len(found) == 1:
        return found[0]
    if found:
        raise WeChatDbError(f"{path}: holds {len(found)} WeChat 4.x accounts ({', '.join(p.parent.name for p in found)}); "
                            "give one account folder")
    raise WeChatDbError(f"{path}: not a WeChat 4.x db_storage folder (no message/ in it, in db_storage/, or in an "
                        "account folder below it)")


class V4Reader(sqlcipher.OpenDatabases):
    format = "v4"
    profile = sqlcipher.V4
    labels_supported = False  # 4.x keeps them in contact.extra_buffer, not decoded

    def __init__(self, path: Path, key: bytes, account: str | None = None):
        self.path = find_storage(path)
        folder = self.path.resolve().parent.name
        m = _ACCOUNT_DIR.match(folder)
        self.owner = account or (m.group(1) if m else "")
        if not self.owner:
            raise WeChatDbError(f"{self.path}: cannot tell the account from the folder name {folder!r} "
                                "(expected <wxid>_<4 hex>); pass --account WXID")
        self.owner_name = None
        msg_dir = self.path / "message"
        files = sorted(((int(mm.group(1)), p) for p in msg_dir.glob("message_*.db") if (mm := _SHARD.match(p.name))))
        if not files:
            raise WeChatDbError(f"{msg_dir}: no message_0.db … message_N.db")
        super().__init__()
        try:
            self.shards = []  # (file, conn, {rowid: user_name}, {table: talker})
            for _, f in files:
                conn = self.open(f, key)
                if not sqlcipher.has_table(conn, "Name2Id"):
                    raise WeChatDbError(f"{f}: decrypts, but has no Name2Id table: not a WeChat 4.x message shard")
                raw_names = conn.execute("SELECT rowid, user_name FROM Name2Id").fetchall()
                names = {rid: ident(u) for rid, u in raw_names}
                by_md5 = {hashlib.md5(u if isinstance(u, bytes) else u.encode()).hexdigest(): ident(u)
                          for _, u in raw_names if isinstance(u, (str, bytes)) and u}
                tables = {}
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'Msg\\_%' ESCAPE '\\'"):
                    if not isinstance(t, str):
                        raise WeChatDbError(f"{f}: a table whose name is not text ({ident(t)!r})")
                    missing = REQUIRED - sqlcipher.columns(conn, t)
                    if missing:
                        raise sqlcipher.schema_error(f, conn, t, missing)
                    tables[t] = by_md5.get(t[4:].lower(), f"unknown:{t[4:]}")
                self.shards.append((f"message/{f.name}", conn, names, tables))
            contact = self.path / "contact" / "contact.db"
            self.contact = self.open(contact, key) if contact.exists() else None
            if self.contact is None:
                self.warnings.append(f"{contact}: missing from the copy: no contact names, and no policy rule "
                                     "by name, mobile or WeChat ID can match")
            elif not sqlcipher.has_table(self.contact, "contact") or \
                    "username" not in sqlcipher.columns(self.contact, "contact"):
                self.warnings.append(f"{contact}: has no contact table with usernames: contacts unavailable")
            media = msg_dir / "media_0.db"
            self.media = self.open(media, key) if media.exists() else None
            if self.media is not None and not {"svr_id", "voice_data"} <= sqlcipher.columns(self.media, "VoiceInfo"):
                self.warnings.append(f"{media}: no VoiceInfo(svr_id, voice_data) table: voice messages are archived "
                                     "without their audio")
                self.media = None
            if account is None and not any(self.owner in names.values() for _, _, names, _ in self.shards):
                self.warnings.append(f"{self.path}: the account {self.owner} (taken from the folder name) sent no "
                                     "message in these shards; if the folder was renamed, pass --account WXID")
        except BaseException:
            self.close()
            raise


    def contacts(self) -> dict[str, Contact]:
        c = self.contact
        if c is None or not sqlcipher.has_table(c, "contact"):
            return {}
        cols = sqlcipher.columns(c, "contact")
        labels = {}
        if sqlcipher.has_table(c, "contact_label"):
            labels = {label(i): label(n) for i, n in c.execute("SELECT label_id_, label_name_ FROM contact_label")}
        sel = sqlcipher.select_list(cols, ("username", "alias", "remark", "nick_name", "description", "label_id_list"))
        out = {}
        for u, alias, remark, nick, desc, label_ids in c.execute(f"SELECT {sel} FROM contact"):
            u = ident(u)
            if u:
                names = [labels.get(x.strip(), x.strip()) for x in (label(label_ids) or "").split(",") if x.strip()]
                out[u] = Contact(u, nickname=label(nick) or None, remark=label(remark) or None,
                                 alias=ident(alias) or None, description=label(desc) or None, labels=names,
                                 kind=contact_kind(u))
        return out

    def groups(self) -> dict[str, Group]:
        c = self.contact
        if c is None or not sqlcipher.has_table(c, "chat_room"):
            return {}
        out = {}
        sel = sqlcipher.select_list(sqlcipher.columns(c, "chat_room"), ("username", "owner", "ext_buffer"))
        for name, owner, ext in c.execute(f"SELECT {sel} FROM chat_room"):
            name = ident(name)
            if not name:
                continue
            names = room_members(ext) if isinstance(ext, bytes) else {}
            out[name] = Group(name, owner=ident(owner) or None, members=list(names),
                              member_names={k: v for k, v in names.items() if v})
        return out

    def census(self) -> list[ConversationCensus]:
        out: dict[str, ConversationCensus] = {}
        for _, conn, _, tables in self.shards:
            for t, talker in tables.items():
                q = (f"SELECT CASE WHEN create_time > 0 THEN date(create_time, 'unixepoch') END, count(*) "
                     f"FROM {sqlcipher.quote(t)} GROUP BY 1")
                for day, n in conn.execute(q):
                    count_into(out, talker, day, n)
        return list(out.values())

    def rows(self, talker: str, after: dict[str, int], raw: object = None) -> Iterator[RawRow]:
        for file, conn, names, tables in self.shards:
            for t, who in tables.items():
                if who != talker:
                    continue
                key = f"{file}|{t}|{talker}"
                cur = conn.execute(f"SELECT * FROM {sqlcipher.quote(t)} WHERE local_id > ? ORDER BY local_id",
                                   (after.get(key, 0),))
                cols = [d[0] for d in cur.description]
                for values in cur:
                    row = dict(zip(cols, values))
                    occurrence = None
                    if not row.get("server_id"):
                        occurrence = conn.execute(
                            f"SELECT count(*) FROM {sqlcipher.quote(t)} WHERE create_time IS ? AND local_type IS ? "
                            "AND local_id < ? AND (server_id IS NULL OR server_id = 0)",
                            (row["create_time"], row["local_type"], row["local_id"])).fetchone()[0]
                    rec = make_record(self.format, file, t, talker, self.owner, row,
                                      sender=names.get(row["real_sender_id"]), occurrence=occurrence)
                    yield RawRow(key, row["local_id"], rec, self._voice(row), row,
                                 fingerprint(row["server_id"], row["create_time"]))

    def row_at(self, cursor_key: str, local_id: int) -> RawRow | None:
        """The row a cursor position names, in this copy (to look again for its media)."""
        file, table, talker = cursor_key.split("|", 2)
        for f, conn, _, tables in self.shards:
            if f == file and table in tables:
                cur = conn.execute(f"SELECT * FROM {sqlcipher.quote(table)} WHERE local_id = ?", (local_id,))
                got = cur.fetchone()
                if got is None:
                    return None
                row = dict(zip([d[0] for d in cur.description], got))
                return RawRow(cursor_key, local_id, {"talker": talker}, [], row, server_id=row["server_id"])
        return None

    def fingerprint(self, cursor_key: str, local_id: int) -> str | None:
        file, table = cursor_key.split("|", 2)[:2]
        for f, conn, _, tables in self.shards:
            if f == file and table in tables:
                got = conn.execute(f"SELECT server_id, create_time FROM {sqlcipher.quote(table)} WHERE local_id = ?",
                                   (local_id,)).fetchone()
                return fingerprint(*got) if got else None
        return None

    def media_file(self, row: RawRow, att: Attachment) -> Media:
        """Under the account folder (fact sheet §3.1, §3.5): images
        ``msg/attach/<md5(chat)>/<YYYY-MM>/Img/<md5>.dat`` (``_h.dat`` the HD one, ``_t.dat`` the
        thumbnail) with the md5 from ``packed_info_data`` (else the message's own), video
        ``msg/video/<YYYY-MM>/<md5>.mp4``, files ``msg/file/<YYYY-MM>/<name>``. The month folder
        is the local month of the client's machine, so every month folder is looked in."""
        v = row.values or {}
        account = self.path.parent
        talker = row.record.get("talker") or ""
        image_md5, video_md5 = packed_md5s(v.get("packed_info_data"))
        if att.kind == "image":
            name = image_md5 or att.declared_md5
            if not name or not _HEX32.match(name):
                return Media("", "image", None, None, looked="the row names no image file (no md5)")
            base = account / "msg" / "attach" / mediafiles.md5_hex(talker)
            months = _months(base)
            for suffix, note in (("_h.dat", None), (".dat", None), ("_W.dat", None),
                                 ("_t.dat", "only the thumbnail was on the device")):
                f = mediafiles.first_file([m / "Img" / f"{name}{suffix}" for m in months], account)
                if f:
                    return Media("", "image", None, None, file=f, dat=True, note=note)
            return Media("", "image", None, None, looked=f"no msg/attach/{mediafiles.md5_hex(talker)}/*/Img/{name}*.dat "
                                                         "(never downloaded on the PC, or cleared)")
        if att.kind == "video":
            name = video_md5 or att.declared_md5
            if not name or not _HEX32.match(name):
                return Media("", "video", None, None, looked="the row names no video file (no md5)")
            f = mediafiles.first_file([m / f"{name}.mp4" for m in _months(account / "msg" / "video")], account)
            return Media("", "video", None, None, file=f) if f else \
                Media("", "video", None, None, looked=f"no msg/video/*/{name}.mp4 (never downloaded, or cleared)")
        if att.kind == "file":
            name = att.file_name or ""
            if not name or name != Path(name).name or name.startswith("."):
                return Media("", "file", None, None, looked="the message names no usable file name")
            found = [f for f in (m / name for m in _months(account / "msg" / "file")) if mediafiles.first_file([f], account)]
            if not att.declared_md5 and found:
                # msg/file is shared by every chat: without an MD5, only a file of the declared size, saved in
                # the message's month or later, can be this message's
                month = _month_of(v.get("create_time"))
                found = [f for f in found if att.declared_size is not None and _size(f) == att.declared_size
                         and (month is None or f.parent.name >= month)]
                if not found:
                    return Media("", "file", None, None, looked=f"msg/file/*/{name}: none of the files of that name has "
                                                                "the size the message declares, from its month on "
                                                                "(the message declares no MD5)")
            if att.declared_md5 and found:
                # the same name in several months: the one whose content the message declares
                same = [f for f in found if _file_md5(f) == att.declared_md5.lower()]
                if not same:
                    return Media("", "file", None, None, looked=f"msg/file/*/{name} is in the copy, but its MD5 is "
                                                                "not the one the message declares (another file of that name)")
                found = same
            if len(found) == 1 or (found and att.declared_md5):
                return Media("", "file", None, None, file=found[0])
            if found:
                return Media("", "file", None, None, looked=f"{len(found)} files named {name} in msg/file/ and the "
                                                            "message declares no MD5 to tell which")
            return Media("", "file", None, None, looked=f"no msg/file/*/{name} (never downloaded, or cleared)")
        return Media("", att.kind, None, None, looked=f"{att.kind} files are not kept in the account folder")

    def _voice(self, row: dict) -> list[Media]:
        lt, sid = row.get("local_type"), row.get("server_id")
        if not isinstance(lt, int) or lt & 0xFFFFFFFF != 34 or self.media is None or not isinstance(sid, int) or not sid:
            return []
        got = self.media.execute("SELECT voice_data FROM VoiceInfo WHERE svr_id = ?", (row["server_id"],)).fetchone()
        return [Media("", "voice", bytes(got[0]), "audio/silk")] if got and got[0] else []


_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


def packed_md5s(blob: object) -> tuple[str | None, str | None]:
    """(image md5, video md5) from ``packed_info_data``: {3: {4: image md5}, 4: {8: video md5}}."""
    from wxarchive.capture.protobuf import ProtobufError, iter_fields

    image = video = None
    if not isinstance(blob, bytes):
        return None, None
    try:
        for num, val in iter_fields(blob):
            if num in (3, 4) and isinstance(val, bytes):
                inner = dict(iter_fields(val))
                got = inner.get(4 if num == 3 else 8)
                if isinstance(got, bytes):
                    text = got.decode("ascii", "replace")
                    if _HEX32.match(text):
                        image, video = (text, video) if num == 3 else (image, text)
    except (ProtobufError, ValueError):
        pass
    return image, video


def _months(base: Path) -> list[Path]:
    try:
        return sorted((p for p in base.iterdir() if p.is_dir()), reverse=True)
    except OSError:
        return []


def _file_md5(f: Path) -> str | None:
    h = hashlib.md5()
    try:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _month_of(t: object) -> str | None:
    """The month folder a file saved at epoch second ``t`` can be in at the earliest (a day early:
    the folder is the client's local month)."""
    if not isinstance(t, int) or t <= 0:
        return None
    return time.strftime("%Y-%m", time.gmtime(t - 86400))


def _size(f: Path) -> int | None:
    try:
        return f.stat().st_size
    except OSError:
        return None
