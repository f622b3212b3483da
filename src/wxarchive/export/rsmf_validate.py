"""``wxarchive validate-rsmf FILE``: check an RSMF file the way Relativity's validator does,
plus the rules its schema leaves out.

Input: a ``.rsmf`` (all three layers), an ``rsmf.zip`` (zip and manifest) or a bare
``rsmf_manifest.json``. Result, as Relativity's: ``Passed``, ``PassedWithWarnings`` or
``Failed``. What is checked (codes are Relativity's where it documents one):

- EML layer: the ``.rsmf`` extension; an ``X-RSMF-Version`` header; exactly one attachment,
  named ``rsmf.zip``, base64; the ``X-RSMF-*`` headers consistent with the manifest
  (version, event count, begin/end dates, collection id, attachment count) — errors.
- ZIP layer: ``rsmf_manifest.json`` at the root; every event attachment present (error);
  avatars and icons present (warning); every other file referenced (warning).
- Manifest: the official JSON Schema of its ``version`` (Draft 7), with format checking
  (RFC 3339 times, e-mail addresses) unless turned off — ``ManifestSchemaViolation``, error.
  Like Relativity's validator, the checks below run only once the schema passes:
  conversation participants resolve (``ManifestInvalidConversationParticipant``), event
  participants belong to their conversation (``ManifestInvalidEventParticipant``), no
  property the spec does not define (``ManifestUndefinedProperty``) — warnings in 2.0,
  errors in 1.0; and, errors in both, the rules the spec states but its schema cannot:
  unique participant, conversation and (per conversation) event ids, event conversations
  and every other participant reference resolve, parents are other events of the same
  conversation, the custodian takes part in its conversation.
"""

from __future__ import annotations

import email
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email import policy
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMAS = {"1.0.0": "rsmf_schema_1_0_0.json", "2.0.0": "rsmf_schema_2_0_0.json"}
MANIFEST_NAME = "rsmf_manifest.json"
MAX_FILE = 2 << 30  # Relativity does not take RSMF files over 2 GB


@dataclass
class Finding:
    severity: str  # error | warning
    code: str
    where: str  # layer and path: eml, zip:<member>, manifest:/events/3/participant
    detail: str

    def line(self) -> str:
        return f"{self.severity}: {self.code}: {self.where}: {self.detail}"


@dataclass
class Validation:
    path: str
    layers: list[str] = field(default_factory=list)  # eml, zip, manifest: what could be read
    findings: list[Finding] = field(default_factory=list)

    @property
    def result(self) -> str:
        if any(f.severity == "error" for f in self.findings):
            return "Failed"
        return "PassedWithWarnings" if self.findings else "Passed"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "result": self.result, "layers": self.layers,
                "findings": [asdict(f) for f in self.findings]}


class CannotValidate(Exception):
    """The file cannot be read at all (missing, unreadable, not one of the three kinds)."""


@lru_cache(maxsize=None)
def _schema(version: str) -> dict[str, Any]:
    text = resources.files("wxarchive.export").joinpath("rsmf_schemas", SCHEMAS[version]).read_text(encoding="utf-8")
    return json.loads(text)


# ---- manifest -----------------------------------------------------------------------------


def _pointer(path) -> str:
    return "/" + "/".join(str(p) for p in path)


def check_manifest(manifest: Any, *, zip_names: set[str] | None = None, format_check: bool = True,
                   where: str = "manifest") -> list[Finding]:
    """Findings for one manifest; ``zip_names``: the zip's members, when there is a zip."""
    from jsonschema import Draft7Validator, FormatChecker

    out: list[Finding] = []
    if not isinstance(manifest, dict):
        return [Finding("error", "ManifestSchemaViolation", where, "the manifest is not a JSON object")]
    version = manifest.get("version")
    if not isinstance(version, str) or version not in SCHEMAS:
        return [Finding("error", "ManifestSchemaViolation", f"{where}:/version",
                        f"version {version!r} is not one of {', '.join(SCHEMAS)}")]
    validator = Draft7Validator(_schema(version), format_checker=FormatChecker() if format_check else None)
    for e in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
        out.append(Finding("error", "ManifestSchemaViolation", f"{where}:{_pointer(e.absolute_path)}", e.message))
    if out:
        return out  # as Relativity's: reference findings come once the schema passes
    soft = "warning" if version == "2.0.0" else "error"
    _undefined(_schema(version), manifest, [], out, soft, where)
    people = [p.get("id") for p in manifest["participants"]]
    known = set(people)
    _duplicates(people, "participant", "/participants", out, where)
    convs = {}
    _duplicates([c.get("id") for c in manifest["conversations"]], "conversation", "/conversations", out, where)
    for i, c in enumerate(manifest["conversations"]):
        convs[c["id"]] = c
        for j, pid in enumerate(c.get("participants", [])):
            if pid not in known:
                out.append(Finding(soft, "ManifestInvalidConversationParticipant",
                                   f"{where}:/conversations/{i}/participants/{j}",
                                   f"participant {pid!r} is not in the manifest's participants"))
        cust = c.get("custodian")
        if cust is not None and cust not in c.get("participants", []):
            out.append(Finding("error", "ManifestInvalidCustodian", f"{where}:/conversations/{i}/custodian",
                               f"custodian {cust!r} does not take part in conversation {c['id']!r}"))
    ids_by_conv: dict[Any, set[Any]] = {}
    for e in manifest["events"]:
        if "id" in e:
            ids_by_conv.setdefault(e.get("conversation"), set())
    seen: dict[tuple[Any, Any], int] = {}
    for k, e in enumerate(manifest["events"]):
        conv = e.get("conversation")
        if "id" in e:
            if (conv, e["id"]) in seen:
                out.append(Finding("error", "ManifestDuplicateEventId", f"{where}:/events/{k}/id",
                                   f"event id {e['id']!r} also at /events/{seen[(conv, e['id'])]} "
                                   "in the same conversation"))
            else:
                seen[(conv, e["id"])] = k
                ids_by_conv[conv].add(e["id"])
    for k, e in enumerate(manifest["events"]):
        at = f"{where}:/events/{k}"
        conv = e.get("conversation")
        if conv is not None and conv not in convs:
            out.append(Finding("error", "ManifestInvalidEventConversation", f"{at}/conversation",
                               f"conversation {conv!r} is not in the manifest"))
        pid = e.get("participant")
        if pid is not None and (pid not in known or (conv in convs and pid not in convs[conv].get("participants", []))):
            out.append(Finding(soft, "ManifestInvalidEventParticipant", f"{at}/participant",
                               f"participant {pid!r} is not a participant of conversation {conv!r}"
                               if pid in known else f"participant {pid!r} is not in the manifest"))
        parent = e.get("parent")
        if parent is not None and (parent == e.get("id") or parent not in ids_by_conv.get(conv, set())):
            out.append(Finding("error", "ManifestInvalidParent", f"{at}/parent",
                               f"parent {parent!r} is not another event of conversation {conv!r}"))
        refs = [(f"reactions/{i}/participants/{j}", p) for i, r in enumerate(e.get("reactions", []))
                for j, p in enumerate(r.get("participants", []))]
        refs += [(f"edits/{i}/participant", x.get("participant")) for i, x in enumerate(e.get("edits", []))]
        refs += [(f"read_receipts/{i}/participant", x.get("participant"))
                 for i, x in enumerate(e.get("read_receipts", []))]
        for rel, p in refs:
            if p not in known:
                out.append(Finding("error", "ManifestInvalidParticipantReference", f"{at}/{rel}",
                                   f"participant {p!r} is not in the manifest"))
    if zip_names is not None:
        out += _check_files(manifest, zip_names)
    return out


def _undefined(schema: dict[str, Any], data: Any, path: list, out: list[Finding], severity: str, where: str) -> None:
    if isinstance(data, dict) and "properties" in schema:
        props = schema["properties"]
        for k, v in data.items():
            if k not in props:
                out.append(Finding(severity, "ManifestUndefinedProperty", f"{where}:{_pointer(path + [k])}",
                                   f"property {k!r} is not defined by RSMF (put extra data in 'custom')"))
            else:
                _undefined(props[k], v, path + [k], out, severity, where)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(data):
            _undefined(schema["items"], v, path + [i], out, severity, where)


def _duplicates(ids: list[Any], what: str, at: str, out: list[Finding], where: str) -> None:
    first: dict[Any, int] = {}
    for i, x in enumerate(ids):
        if x in first:
            out.append(Finding("error", f"ManifestDuplicate{what.title()}Id", f"{where}:{at}/{i}/id",
                               f"{what} id {x!r} also at {at}/{first[x]}"))
        else:
            first[x] = i


def _check_files(manifest: dict[str, Any], names: set[str]) -> list[Finding]:
    out: list[Finding] = []
    referenced = {MANIFEST_NAME}
    for i, p in enumerate(manifest["participants"]):
        if "avatar" in p:
            referenced.add(p["avatar"])
            if p["avatar"] not in names:
                out.append(Finding("warning", "AvatarNotInZip", f"manifest:/participants/{i}/avatar",
                                   f"the avatar {p['avatar']!r} was not found in the zip archive"))
    for i, c in enumerate(manifest["conversations"]):
        if "icon" in c:
            referenced.add(c["icon"])
            if c["icon"] not in names:
                out.append(Finding("warning", "IconNotInZip", f"manifest:/conversations/{i}/icon",
                                   f"the icon {c['icon']!r} was not found in the zip archive"))
    for k, e in enumerate(manifest["events"]):
        for j, a in enumerate(e.get("attachments", [])):
            referenced.add(a["id"])
            if a["id"] not in names:
                out.append(Finding("error", "AttachmentNotInZip", f"manifest:/events/{k}/attachments/{j}/id",
                                   f"the attachment with ID {a['id']!r} was not found in the zip archive"))
    for n in sorted(names - referenced):
        out.append(Finding("warning", "UnreferencedFile", f"zip:{n}",
                           f"the file {n!r} in the zip archive does not have a reference"))
    return out


# ---- zip and EML --------------------------------------------------------------------------


def _read_zip(data: bytes, v: Validation, format_check: bool) -> dict[str, Any] | None:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = {i.filename for i in z.infolist() if not i.is_dir()}
        bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        v.findings.append(Finding("error", "ZipUnreadable", "zip", f"not a readable zip archive ({e})"))
        return None
    v.layers.append("zip")
    if bad is not None:
        v.findings.append(Finding("error", "ZipCorrupt", f"zip:{bad}", "fails its CRC check"))
    if MANIFEST_NAME not in names:
        nested = sorted(n for n in names if n.endswith("/" + MANIFEST_NAME))
        v.findings.append(Finding("error", "ZipNoManifest", "zip", f"no {MANIFEST_NAME} at the root of the zip"
                                  + (f" (found {nested[0]})" if nested else "")))
        return None
    manifest = _parse_json(z.read(MANIFEST_NAME), f"zip:{MANIFEST_NAME}", v)
    if manifest is not None:
        v.layers.append("manifest")
        v.findings += check_manifest(manifest, zip_names=names, format_check=format_check)
    return manifest


def _parse_json(raw: bytes, where: str, v: Validation) -> Any:
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        v.findings.append(Finding("error", "ManifestNotJson", where, f"not JSON ({e})"))
    except RecursionError:
        v.findings.append(Finding("error", "ManifestNotJson", where, "nested too deep to be a manifest"))
    return None


def _check_eml(data: bytes, path: Path, v: Validation, format_check: bool) -> None:
    if path.suffix.lower() != ".rsmf":
        v.findings.append(Finding("error", "RsmfExtension", "eml", f"the file name must end in .rsmf, not "
                                  f"{path.suffix or '(none)'!r}"))
    msg = email.message_from_bytes(data, policy=policy.default)
    if not msg.keys():
        v.findings.append(Finding("error", "RsmfNotEml", "eml", "no RFC 5322 headers: not an RSMF file"))
        return
    v.layers.append("eml")
    version = msg.get("X-RSMF-Version")
    if version is None:
        v.findings.append(Finding("error", "RsmfNoVersionHeader", "eml", "no X-RSMF-Version header"))
    if not msg.is_multipart():
        v.findings.append(Finding("error", "RsmfAttachmentCount", "eml", "not multipart: no rsmf.zip attachment"))
        return
    parts = list(msg.iter_parts())
    body = next((p for p in parts if p.get_content_type() == "text/plain" and not p.is_attachment()), None)
    atts = [p for p in parts if p is not body]
    if len(atts) != 1:
        names = ", ".join(repr(p.get_filename() or p.get_content_type()) for p in atts) or "none"
        v.findings.append(Finding("error", "RsmfAttachmentCount", "eml",
                                  f"exactly one attachment (rsmf.zip) is allowed, found {len(atts)}: {names}"))
    zpart = next((p for p in atts if p.get_filename() == "rsmf.zip"), None)
    if zpart is None:
        if len(atts) == 1:
            v.findings.append(Finding("error", "RsmfAttachmentName", "eml",
                                      f"the attachment is named {atts[0].get_filename()!r}, not 'rsmf.zip'"))
        return
    if (zpart.get("Content-Transfer-Encoding") or "").strip().lower() != "base64":
        v.findings.append(Finding("error", "RsmfAttachmentEncoding", "eml",
                                  "rsmf.zip must be sent with Content-Transfer-Encoding: base64"))
    if not zpart.is_attachment():
        v.findings.append(Finding("error", "RsmfAttachmentDisposition", "eml",
                                  "rsmf.zip must have Content-Disposition: attachment"))
    manifest = _read_zip(zpart.get_payload(decode=True) or b"", v, format_check)
    if isinstance(manifest, dict):
        _check_headers(msg, manifest, v)


def _when(value: str) -> datetime | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _check_headers(msg, manifest: dict[str, Any], v: Validation) -> None:
    """§6.4: the X-RSMF-* headers must say what the manifest says."""
    events = manifest.get("events") if isinstance(manifest.get("events"), list) else []

    def mismatch(header: str, says: Any, manifest_says: Any) -> None:
        v.findings.append(Finding("error", "RsmfHeaderMismatch", f"eml:{header}",
                                  f"says {says!r}, the manifest {manifest_says!r}"))

    if msg.get("X-RSMF-Version") is not None and str(msg["X-RSMF-Version"]) != manifest.get("version"):
        mismatch("X-RSMF-Version", str(msg["X-RSMF-Version"]), manifest.get("version"))
    if msg.get("X-RSMF-EventCount") is not None and str(msg["X-RSMF-EventCount"]).strip() != str(len(events)):
        mismatch("X-RSMF-EventCount", str(msg["X-RSMF-EventCount"]), len(events))
    if msg.get("X-RSMF-EventCollectionID") is not None and \
            str(msg["X-RSMF-EventCollectionID"]) != manifest.get("eventcollectionid"):
        mismatch("X-RSMF-EventCollectionID", str(msg["X-RSMF-EventCollectionID"]), manifest.get("eventcollectionid"))
    n_atts = sum(len(e.get("attachments", [])) for e in events if isinstance(e, dict))
    if msg.get("X-RSMF-AttachmentCount") is not None and str(msg["X-RSMF-AttachmentCount"]).strip() != str(n_atts):
        mismatch("X-RSMF-AttachmentCount", str(msg["X-RSMF-AttachmentCount"]), n_atts)
    stamps = [t for t in (_when(e["timestamp"]) for e in events if isinstance(e, dict) and
                          isinstance(e.get("timestamp"), str)) if t is not None]
    aware = [t for t in stamps if t.tzinfo is not None]
    if len(aware) == len(stamps) and stamps:
        for header, want in (("X-RSMF-BeginDate", min(stamps)), ("X-RSMF-EndDate", max(stamps))):
            if msg.get(header) is not None:
                got = _when(str(msg[header]))
                if got is None or got.tzinfo is None or got != want:
                    mismatch(header, str(msg[header]), want.isoformat())


# ---- entry point --------------------------------------------------------------------------


def validate_file(path: Path, *, format_check: bool = True) -> Validation:
    """Validate a .rsmf, an rsmf.zip or an rsmf_manifest.json (told apart by content)."""
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            raise CannotValidate(f"{path}: not a regular file")
        if path.is_file() and path.stat().st_size > MAX_FILE:
            raise CannotValidate(f"{path}: over {MAX_FILE >> 30} GiB, more than Relativity accepts")
        data = path.read_bytes()
    except FileNotFoundError:
        raise CannotValidate(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CannotValidate(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise CannotValidate(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
    v = Validation(str(path))
    if data[:4] == b"PK\x03\x04":
        _read_zip(data, v, format_check)
    elif data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        manifest = _parse_json(data, "manifest", v)
        if isinstance(manifest, dict) and {"archive_id", "exported_by", "files", "counts"} <= manifest.keys() \
                and "version" not in manifest:
            raise CannotValidate(f"{path}: wxarchive's own export manifest (the hashes and signature of the "
                                 "export), not an RSMF manifest: validate the .rsmf files beside it")
        if manifest is not None:
            v.layers.append("manifest")
            v.findings += check_manifest(manifest, format_check=format_check)
    elif b":" in data[:200]:
        _check_eml(data, path, v, format_check)
    else:
        raise CannotValidate(f"{path}: not an RSMF file, rsmf.zip or rsmf_manifest.json")
    return v
