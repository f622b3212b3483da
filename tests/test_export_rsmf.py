"""RSMF export and ``validate-rsmf``.

The validator is checked on Relativity's own samples (tests/data/rsmf: valid ones pass,
warning ones pass with the warnings Relativity's walkthrough names, invalid ones fail for
the reason it gives), then on our export of the session archive, with format checking on,
and on altered copies of it: every alteration is reported for what it is.
"""

from __future__ import annotations

import email
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email import policy
from pathlib import Path

import pytest

from wxarchive.archive.archive import Archive
from wxarchive.export import rsmf as rsmf_mod
from wxarchive.export.rsmf_validate import check_manifest, validate_file
from wxarchive.search.query import Query, count

SAMPLES = Path(__file__).parent / "data" / "rsmf"


def _cli(home: Path | None, *args: str) -> subprocess.CompletedProcess:
    pre = ["--home", str(home)] if home else []
    return subprocess.run([sys.executable, "-m", "wxarchive.cli", *pre, *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


# ---- the validator on Relativity's samples ------------------------------------------------

EXPECTED = {
    # file: (result, codes of the findings), as Relativity's walkthrough reports them
    "invalid/manifest/v2_official_sample1_participant_missing_id.json": ("Failed", ["ManifestSchemaViolation"]),
    "invalid/manifest/v2_official_sample4_participant_id_not_string.json": ("Failed", ["ManifestSchemaViolation"]),
    "invalid/manifest/v1_official_sample1_participant_missing_display.json": ("Failed", ["ManifestSchemaViolation"]),
    "invalid/manifest/v1_official_sample4_participant_id_not_string.json": ("Failed", ["ManifestSchemaViolation"]),
    "invalid/rsmf/v2_official_sample3_extra_eml_attachment.rsmf": ("Failed", ["RsmfAttachmentCount"]),
    "invalid/rsmf/v1_official_sample3_extra_eml_attachment.rsmf": ("Failed", ["RsmfAttachmentCount"]),
    "invalid/rsmf/v2_official_sample3_extra_eml_attachment_message.eml": (
        "Failed", ["RsmfExtension", "RsmfAttachmentCount"]),
    "warnings/manifest/v2_derived_sample4_step1_unresolved_participant_and_undefined_property.json": (
        "PassedWithWarnings", ["ManifestUndefinedProperty", "ManifestInvalidConversationParticipant",
                               "ManifestInvalidEventParticipant"]),
    "warnings/zip/v1_official_sample2_avatar_missing_from_zip.zip": ("PassedWithWarnings", ["AvatarNotInZip"]),
}


def _samples() -> list[str]:
    return sorted(str(p.relative_to(SAMPLES)) for p in SAMPLES.rglob("*")
                  if p.is_file() and p.suffix in {".json", ".zip", ".rsmf", ".eml"})


@pytest.mark.parametrize("name", _samples())
def test_relativity_samples_get_relativitys_result(name):
    v = validate_file(SAMPLES / name, format_check=False)  # Relativity writes zone-less times
    codes = [f.code for f in v.findings]
    if name.startswith("valid/"):
        assert v.result == "Passed", [f.line() for f in v.findings]
    else:
        assert (v.result, codes) == EXPECTED[name], [f.line() for f in v.findings]


def test_schema_violation_names_the_field():
    v = validate_file(SAMPLES / "invalid/manifest/v2_official_sample4_participant_id_not_string.json",
                      format_check=False)
    assert v.findings[0].where == "manifest:/participants/0/id" and "not of type 'string'" in v.findings[0].detail


def test_format_checking_rejects_zoneless_times_as_documented():
    """With format checking on, Relativity's own samples fail: their times carry no offset."""
    v = validate_file(SAMPLES / "valid/manifest/v2_derived_sample4_fixed.json")
    assert v.result == "Failed" and "date-time" in v.findings[0].detail


def test_version_1_findings_are_errors_and_version_2_warnings():
    m = json.loads((SAMPLES / "warnings/manifest/v2_derived_sample4_step1_unresolved_participant_and_undefined_"
                    "property.json").read_text())
    assert {f.severity for f in check_manifest(m, format_check=False)} == {"warning"}
    m1 = {**m, "version": "1.0.0"}
    m1["conversations"] = [{**c, "type": "channel", "display": "C1"} for c in m["conversations"]]
    assert {f.severity for f in check_manifest(m1, format_check=False)} == {"error"}


def test_rules_the_schema_leaves_out():
    base = json.loads((SAMPLES / "valid/manifest/v2_derived_sample4_fixed.json").read_text())
    base["events"][0]["timestamp"] += "Z"
    base["events"][0]["id"] = "e1"
    assert check_manifest(base) == []

    def codes(change) -> list[str]:
        m = json.loads(json.dumps(base))
        change(m)
        return [f.code for f in check_manifest(m)]

    assert codes(lambda m: m["participants"].append(dict(m["participants"][0]))) == ["ManifestDuplicateParticipantId"]
    assert codes(lambda m: m["events"].append(dict(m["events"][0]))) == ["ManifestDuplicateEventId"]
    assert codes(lambda m: m["events"][0].update(parent="nowhere")) == ["ManifestInvalidParent"]
    assert codes(lambda m: m["events"][0].update(parent="e1")) == ["ManifestInvalidParent"]  # itself
    assert codes(lambda m: m["events"][0].update(conversation="9")) == ["ManifestInvalidEventConversation"]
    assert codes(lambda m: m["conversations"][0].update(custodian="7")) == ["ManifestInvalidCustodian"]
    assert codes(lambda m: m["events"][0].update(reactions=[{"value": "+1", "participants": ["x"]}])) == [
        "ManifestInvalidParticipantReference"]
    assert codes(lambda m: m.update(version="9.9.9")) == ["ManifestSchemaViolation"]
    assert codes(lambda m: m["events"][0].update(timestamp="yesterday")) == ["ManifestSchemaViolation"]


def test_validate_rsmf_command_exit_codes(tmp_path):
    ok = _cli(None, "validate-rsmf", "--no-format-check", str(SAMPLES / "valid/rsmf/v2_derived_sample3_fixed.rsmf"))
    assert ok.returncode == 0 and "Passed" in ok.stdout, ok.stderr
    warn = _cli(None, "validate-rsmf", "--no-format-check",
                str(SAMPLES / "warnings/zip/v1_official_sample2_avatar_missing_from_zip.zip"))
    assert warn.returncode == 0 and "PassedWithWarnings" in warn.stdout and "AV1" in warn.stdout
    bad = _cli(None, "validate-rsmf", "--no-format-check", "--json",
               str(SAMPLES / "invalid/rsmf/v2_official_sample3_extra_eml_attachment.rsmf"))
    assert bad.returncode == 1 and json.loads(bad.stdout)["result"] == "Failed"
    (tmp_path / "junk.rsmf").write_bytes(b"\x00\x01\x02 not an rsmf")
    for bad in ('{"version": []}', "[" * 100_000 + "]" * 100_000, '{"version": {}}'):
        (tmp_path / "m.json").write_text(bad)
        got = _cli(None, "validate-rsmf", str(tmp_path / "m.json"))
        assert got.returncode == 1 and "Failed" in got.stdout and "Traceback" not in got.stderr, got.stderr[-500:]
    for target in (tmp_path / "nope.rsmf", tmp_path, tmp_path / "junk.rsmf", Path("/dev/zero")):
        gone = _cli(None, "validate-rsmf", str(target))
        assert gone.returncode == 2 and "Traceback" not in gone.stderr and str(target) in gone.stderr


# ---- our export ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(ingested, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("rsmf-source") / "home"
    shutil.copytree(ingested, home)
    return home


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rsmf") / "out"
    done = _cli(source, "export", "--format", "rsmf", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def _open(path: Path) -> tuple[email.message.EmailMessage, zipfile.ZipFile, dict]:
    msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    z = zipfile.ZipFile(io.BytesIO(list(msg.iter_parts())[1].get_payload(decode=True)))
    return msg, z, json.loads(z.read("rsmf_manifest.json"))


def test_our_own_export_manifest_is_told_apart(exported):
    got = _cli(None, "validate-rsmf", str(exported / "manifest.json"))
    assert got.returncode == 2 and "wxarchive's own export manifest" in got.stderr, got.stdout + got.stderr


def test_every_file_passes_the_validator_with_format_checking(exported):
    files = sorted((exported / "rsmf").glob("*.rsmf"))
    assert len(files) > 10
    for f in files:
        v = validate_file(f)
        assert v.result == "Passed", (f.name, [x.line() for x in v.findings[:5]])
        assert v.layers == ["eml", "zip", "manifest"]


def test_every_message_is_in_exactly_one_file_and_counts_reconcile(exported, source):
    with Archive.open(source, readonly=True) as ar:
        total = count(ar.catalog.engine, Query())
        with ar.catalog.engine.connect() as c:
            rows = {r[0]: r[1] for r in c.exec_driver_sql("SELECT msgid, recalls FROM messages")}
    seen: list[str] = []
    for f in (exported / "rsmf").glob("*.rsmf"):
        _, _, m = _open(f)
        for e in m["events"]:
            seen.append(e["id"])
            recall = {c["name"]: c["value"] for c in e["custom"]}.get("recall_msgid")
            if recall:
                seen.append(recall)  # a recall folded into its original
    assert sorted(seen) == sorted(rows) and len(seen) == total
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["counts"]["messages"] == manifest["counts"]["search_count"] == total
    assert manifest["counts"]["reconciled"] is True and manifest["signature"]
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert set(listed) == {p.relative_to(exported).as_posix() for p in (exported / "rsmf").glob("*.rsmf")}
    for path, sha in listed.items():
        assert hashlib.sha256((exported / path).read_bytes()).hexdigest() == sha


def test_recalls_quotes_attachments_and_headers(exported, source):
    recalled = deleted_kept = parents = 0
    with Archive.open(source, readonly=True) as ar:
        blobs = ar.blobs
        for f in (exported / "rsmf").glob("*.rsmf"):
            msg, z, m = _open(f)
            ids = {e["id"] for e in m["events"]}
            for e in m["events"]:
                custom = {c["name"]: c["value"] for c in e["custom"]}
                if e.get("deleted"):
                    recalled += 1
                    deleted_kept += bool(e["body"]) or custom["kind"] != "text"
                    assert custom["recall_msgid"] and custom["recalled_at"]
                if "parent" in e:
                    parents += 1
                    assert e["parent"] in ids
                for a in e.get("attachments", []):
                    sha = a["id"].split("_", 1)[0]
                    data = z.read(a["id"])
                    assert hashlib.sha256(data).hexdigest().startswith(sha) and len(data) == a["size"]
                    assert blobs.get(hashlib.sha256(data).hexdigest()) == data
            assert msg["X-RSMF-Version"] == "2.0.0" and int(msg["X-RSMF-EventCount"]) == len(m["events"])
            assert str(msg["From"]).count("@") == 1
            body = list(msg.iter_parts())[0].get_content()
            for e in m["events"]:
                assert e["body"] in body  # the searchable text carries every message
    assert recalled > 0 and deleted_kept == recalled and parents > 0


def test_conversations_are_split_into_linked_slices(source, tmp_path, monkeypatch):
    monkeypatch.setattr(rsmf_mod, "MAX_EVENTS", 7)
    with Archive.open(source, readonly=True) as ar:
        res = rsmf_mod.export_rsmf(ar, Query(), tmp_path / "out", query_text={})
    assert res.files > res.conversations
    by_collection: dict[str, list[int]] = {}
    for f in (tmp_path / "out" / "rsmf").glob("*.rsmf"):
        v = validate_file(f)
        assert v.result == "Passed", [x.line() for x in v.findings[:3]]
        _, _, m = _open(f)
        assert len(m["events"]) <= 7
        by_collection.setdefault(m["eventcollectionid"], []).append(len(m["events"]))
    assert len(by_collection) == res.conversations and any(len(v) > 1 for v in by_collection.values())


def _rewrite(src: Path, dest: Path, *, manifest=None, drop: str | None = None, add: str | None = None,
             header: tuple[str, str] | None = None) -> Path:
    """A copy of an exported .rsmf with its manifest, zip or headers altered."""
    msg, z, m = _open(src)
    if manifest:
        manifest(m)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("rsmf_manifest.json", json.dumps(m))
        for n in z.namelist():
            if n not in ("rsmf_manifest.json", drop):
                out.writestr(n, z.read(n))
        if add:
            out.writestr(add, b"extra")
    parts = list(msg.iter_parts())
    parts[1].set_content(buf.getvalue(), maintype="application", subtype="octet-stream", filename="rsmf.zip")
    if header:
        del msg[header[0]]
        msg[header[0]] = header[1]
    dest.write_bytes(msg.as_bytes(policy=policy.SMTP))
    return dest


def test_alterations_of_an_export_are_reported(exported, tmp_path):
    src = next(f for f in sorted((exported / "rsmf").glob("*.rsmf")) if _open(f)[1].namelist()[1:])
    member = _open(src)[1].namelist()[1]
    cases = {
        "AttachmentNotInZip": dict(drop=member),
        "UnreferencedFile": dict(add="stray.bin"),
        "RsmfHeaderMismatch": dict(header=("X-RSMF-EventCount", "99999")),
        "ManifestDuplicateEventId": dict(manifest=lambda m: m["events"].append(dict(m["events"][0]))),
        "ManifestInvalidParent": dict(manifest=lambda m: m["events"][0].update(parent="no-such-event")),
        "ManifestUndefinedProperty": dict(manifest=lambda m: m["events"][0].update(attachment="x")),
    }
    assert validate_file(_rewrite(src, tmp_path / "same.rsmf")).result == "Passed"  # the harness alters nothing
    for code, change in cases.items():
        v = validate_file(_rewrite(src, tmp_path / f"{code}.rsmf", **change))
        assert code in [f.code for f in v.findings], (code, [f.line() for f in v.findings])
        assert v.result != "Passed"
