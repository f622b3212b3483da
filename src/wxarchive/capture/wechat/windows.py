"""Windows WeChat 3.x: ``Msg/Multi/MSG0..N.db`` + ``Msg/MicroMsg.db`` + ``Msg/Multi/MediaMSG*.db``.

One 32-byte key opens every database of the account (SQLCipher 3 parameters with 4096-byte
pages, fact sheet §2.2). Shards may differ in their columns (case W4): each shard's ``MSG``
columns are read as they are, and only a column the mapping truly needs is an error, naming
the shard. The group sender is in ``BytesExtra`` and app-message XML often only in lz4
``CompressContent`` — both kept in the raw row and decoded by the parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from wxarchive.capture.protobuf import ProtobufError, iter_fields
from wxarchive.capture.wechat import mediafiles, sqlcipher
from wxarchive.capture.wechat.records import (
    Contact, ConversationCensus, Group, Media, RawRow, contact_kind, count_into, fingerprint, ident, label,
    make_record,
)
from wxarchive.capture.wechat.sqlcipher import WeChatDbError
from wxarchive.model import Attachment

REQUIRED = {"localId", "MsgSvrID", "Type", "SubType", "IsSender", "CreateTime", "StrTalker", "StrContent"}
_SHARD = re.compile(r"^MSG(\d+)\.db$")
_MEDIA = re.compile(r"^MediaMSG(\d+)\.db$")


def _is_msg_dir(d: Path) -> bool:
    return (d / "MicroMsg.db").is_file() or (d / "Multi").is_dir()


def find_msg_dir(path: Path) -> Path:
    """The ``Msg`` folder given itself, or found below an account folder, ``WeChat Files`` or a
    device copy's root (exactly one account there)."""
    for candidate in (path, path / "Msg"):
        if _is_msg_dir(candidate):
            return candidate
    if not path.exists():
        raise WeChatDbError(f"{path}: no such folder")
    found = sorted({p for pattern in ("*/Msg", "*/*/Msg") for p in path.glob(pattern) if _is_msg_dir(p)})
    if len(found) == 1:
        return found[0]
    if found:
        raise WeChatDbError(f"{path}: holds {len(found)} WeChat 3.x accounts ({', '.join(p.parent.name for p in found)}); "
                            "give one account folder")
    raise WeChatDbError(f"{path}: not a WeChat 3.x Msg folder (no MicroMsg.db or Multi/ in it, in Msg/, or in an "
                        "account folder below it)")


def _numbered(folder: Path, pattern: re.Pattern) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.glob("*.db") if (m := pattern.match(p.name))] if folder.is_dir() else []
    return [p for _, p in sorted(found)]


def room_members(blob: bytes) -> dict[str, str]:
    """RoomData protobuf: repeated field 1 = {1: username, 2: display name in the group}."""
    out: dict[str, str] = {}
    try:
        for num, val in iter_fields(blob):
            if num == 1 and isinstance(val, bytes):
                m = dict(iter_fields(val))
                if isinstance(m.get(1), bytes):
                    out[ident(m[1])] = label(m[2]) if isinstance(m.get(2), bytes) else ""
    except ProtobufError:
        return out
    return out


class WindowsReader(sqlcipher.OpenDatabases):
    format = "win3"
    profile = sqlcipher.WIN3

    def __init__(self, path: Path, key: bytes, account: str | None = None):
        self.path = find_msg_dir(path)
        self.owner = account or self.path.resolve().parent.name
        if not self.owner or self.owner in (".", "/"):
            raise WeChatDbError(f"{self.path}: cannot tell the account from the folder name; pass --account WXID")
        self.owner_name = None
        shard_files = _numbered(self.path / "Multi", _SHARD)
        if not shard_files:
            raise WeChatDbError(f"{self.path}: no Multi/MSG0.db … MSGn.db (an old data folder without Multi/ "
                                "keeps its messages elsewhere and is not supported)")
        super().__init__()
        try:
            self.shards = []
            for f in shard_files:
                conn = self.open(f, key)
                if not sqlcipher.has_table(conn, "MSG"):
                    raise WeChatDbError(f"{f}: decrypts, but has no MSG table: not a WeChat 3.x message shard")
                cols = sqlcipher.columns(conn, "MSG")
                if REQUIRED - cols:
                    raise sqlcipher.schema_error(f, conn, "MSG", REQUIRED - cols)
                self.shards.append((f"Multi/{f.name}", conn))
            micro = self.path / "MicroMsg.db"
            self.micro = self.open(micro, key) if micro.exists() else None
            if self.micro is None:
                self.warnings.append(f"{micro}: missing from the copy: no contact names or labels, and no policy "
                                     "rule by label, name, mobile or WeChat ID can match")
            self.media = []
            for f in _numbered(self.path / "Multi", _MEDIA):
                conn = self.open(f, key)
                if {"Reserved0", "Buf"} <= sqlcipher.columns(conn, "Media"):
                    self.media.append(conn)
                else:
                    self.warnings.append(f"{f}: no Media(Reserved0, Buf) table: its voice messages are archived "
                                         "without their audio")
        except BaseException:
            self.close()
            raise


    def contacts(self) -> dict[str, Contact]:
        c = self.micro
        if c is None or not sqlcipher.has_table(c, "Contact"):
            return {}
        labels = {}
        if sqlcipher.has_table(c, "ContactLabel"):
            labels = {label(i): label(n) for i, n in c.execute("SELECT LabelId, LabelName FROM ContactLabel")}
        sel = sqlcipher.select_list(sqlcipher.columns(c, "Contact"), ("UserName", "Alias", "Remark", "NickName", "LabelIDList"))
        out = {}
        for u, alias, remark, nick, label_ids in c.execute(f"SELECT {sel} FROM Contact"):
            u = ident(u)
            if u:
                names = [labels.get(x.strip(), x.strip()) for x in (label(label_ids) or "").split(",") if x.strip()]
                out[u] = Contact(u, nickname=label(nick) or None, remark=label(remark) or None,
                                 alias=ident(alias) or None, labels=names, kind=contact_kind(u))
        if not labels and any(c.labels for c in out.values()):
            self.labels_supported = False
            text = (f"{self.path / 'MicroMsg.db'}: contacts carry label ids but there is no ContactLabel table to "
                    "name them: work_labels cannot match")
            if text not in self.warnings:
                self.warnings.append(text)
        return out

    def groups(self) -> dict[str, Group]:
        c = self.micro
        if c is None or not sqlcipher.has_table(c, "ChatRoom"):
            return {}
        sel = sqlcipher.select_list(sqlcipher.columns(c, "ChatRoom"), ("ChatRoomName", "UserNameList", "Reserved2", "RoomData"))
        out = {}
        for name, members, owner, data in c.execute(f"SELECT {sel} FROM ChatRoom"):
            name = ident(name)
            if not name:
                continue
            names = room_members(data) if isinstance(data, bytes) else {}
            out[name] = Group(name, owner=ident(owner) or None,
                              members=[m for m in (ident(members) or "").split("^G") if m],
                              member_names={k: v for k, v in names.items() if v})
        return out

    def census(self) -> list[ConversationCensus]:
        out: dict[str, ConversationCensus] = {}
        q = ("SELECT StrTalker, CASE WHEN CreateTime > 0 THEN date(CreateTime, 'unixepoch') END, count(*) "
             "FROM MSG GROUP BY 1, 2")
        for _, conn in self.shards:
            for talker, day, n in conn.execute(q):
                count_into(out, talker, day, n)
        return list(out.values())

    def rows(self, talker: str, after: dict[str, int], raw: object = None) -> Iterator[RawRow]:
        match = "CAST(StrTalker AS BLOB) = ?" if isinstance(raw, bytes) else "StrTalker = ?"
        value = raw if raw is not None else talker
        for file, conn in self.shards:
            key = f"{file}|MSG|{talker}"
            cur = conn.execute(f"SELECT * FROM MSG WHERE {match} AND localId > ? ORDER BY localId",
                               (value, after.get(key, 0)))
            names = [d[0] for d in cur.description]
            for values in cur:
                row = dict(zip(names, values))
                occurrence = None
                if not row.get("MsgSvrID"):
                    occurrence = conn.execute(
                        f"SELECT count(*) FROM MSG WHERE {match} AND CreateTime IS ? AND Type IS ? AND localId < ? "
                        "AND (MsgSvrID IS NULL OR MsgSvrID = 0)",
                        (value, row["CreateTime"], row["Type"], row["localId"])).fetchone()[0]
                rec = make_record(self.format, file, "MSG", talker, self.owner, row, occurrence=occurrence)
                yield RawRow(key, row["localId"], rec, self._voice(row), row,
                             fingerprint(row["MsgSvrID"], row["CreateTime"]))

    def row_at(self, cursor_key: str, local_id: int) -> RawRow | None:
        """The row a cursor position names, in this copy (to look again for its media)."""
        file = cursor_key.split("|", 1)[0]
        for f, conn in self.shards:
            if f == file:
                cur = conn.execute("SELECT * FROM MSG WHERE localId = ?", (local_id,))
                got = cur.fetchone()
                if got is None:
                    return None
                row = dict(zip([d[0] for d in cur.description], got))
                return RawRow(cursor_key, local_id, {"talker": cursor_key.split("|", 2)[2]}, [], row,
                              server_id=row["MsgSvrID"])
        return None

    def fingerprint(self, cursor_key: str, local_id: int) -> str | None:
        file = cursor_key.split("|", 1)[0]
        for f, conn in self.shards:
            if f == file:
                got = conn.execute("SELECT MsgSvrID, CreateTime FROM MSG WHERE localId = ?", (local_id,)).fetchone()
                return fingerprint(*got) if got else None
        return None

    def media_file(self, row: RawRow, att: Attachment) -> Media:
        """The path ``BytesExtra`` gives (attribute 4; 3 is the thumbnail), relative to the
        ``WeChat Files`` folder (``wxid_…\\FileStorage\\MsgAttach\\…\\Image\\2024-03\\<hash>.dat``);
        images are XOR-wrapped ``.dat`` files (fact sheet §2.1, §2.3, §2.6)."""
        kind = att.kind
        extra = (row.values or {}).get("BytesExtra")
        paths = bytes_extra_paths(extra) if isinstance(extra, bytes) else {}
        account = self.path.parent
        full, thumb = paths.get(4), paths.get(3)
        if not full and not thumb:
            return Media("", kind, None, None, looked="the row's BytesExtra names no file")
        dat = kind in ("image", "emotion")
        tries = [(full, None)] + ([(thumb, "only the thumbnail was on the device")] if kind == "image" else [])
        chat = mediafiles.md5_hex(str(row.record.get("talker") or ""))
        why = []
        for rel, note in tries:
            if not rel:
                continue
            f = _account_file(account, rel)
            parts = f.relative_to(account).parts if f is not None else ()
            if len(parts) > 2 and parts[:2] == ("FileStorage", "MsgAttach") and parts[2].lower() != chat:
                why.append(f"{rel} is another chat's folder: not read")  # a per-chat folder of some other chat
                continue
            if f is not None and mediafiles.first_file([f], account):
                return Media("", kind, None, None, file=f, dat=dat and f.suffix.lower() == ".dat", note=note)
            why.append(mediafiles.why_not(f, account))
        return Media("", kind, None, None, looked="; ".join(why) + " (never downloaded on the PC, or cleared?)")

    def _voice(self, row: dict) -> list[Media]:
        if row.get("Type") != 34 or not isinstance(row.get("MsgSvrID"), int) or not row["MsgSvrID"]:
            return []
        for conn in self.media:
            got = conn.execute("SELECT Buf FROM Media WHERE Reserved0 = ?", (row["MsgSvrID"],)).fetchone()
            if got and got[0]:
                return [Media("", "voice", bytes(got[0]), "audio/silk")]
        return []


def bytes_extra_paths(blob: bytes) -> dict[int, str]:
    """The file paths of a ``BytesExtra`` protobuf: attribute 4 (the file) and 3 (its thumbnail)."""
    out: dict[int, str] = {}
    try:
        for num, val in iter_fields(blob):
            if num == 3 and isinstance(val, bytes):
                attr = dict(iter_fields(val))
                if attr.get(1) in (3, 4) and isinstance(attr.get(2), bytes) and attr[2]:
                    out[attr[1]] = attr[2].decode("utf-8", "replace")
    except (ProtobufError, ValueError):
        return out
    return out


def _account_file(account: Path, rel: str) -> Path | None:
    """A ``BytesExtra`` path under the account folder: its first part is the account's own folder
    name when the second is ``FileStorage``."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p]
    if len(parts) > 1 and parts[1] == "FileStorage":
        parts = parts[1:]
    return mediafiles.inside(account, "/".join(parts))
