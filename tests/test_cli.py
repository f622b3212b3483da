"""The real CLI on real files: ingest, status, search, show, config file, bad input, secrets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import answer_media, answer_messages
from wxarchive.simulate.server import serve


def run(*args: str, home: Path | None = None, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wxarchive.cli"]
    if home is not None:
        cmd += ["--home", str(home)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def ingest_args(tenant: Path, proxy: str) -> list[str]:
    info = json.loads((tenant / "tenant.json").read_text())
    args = ["ingest", "wecom", "--corp-id", info["corp_id"], "--secret-file", str(tenant / "secret"),
            "--proxy", proxy, "--limit", "200"]
    for p in sorted((tenant / "keys").glob("private_v*.pem")):
        args += ["--private-key", f"{p.stem.split('_v')[1]}={p}"]
    return args


def assert_clean_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert p.stderr.strip().startswith("error:"), p.stderr
    for n in needles:
        assert n in p.stderr, (n, p.stderr)


@pytest.fixture(scope="module")
def cli_home(tenant, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli") / "home"
    with serve(tenant) as sim:
        p = run(*ingest_args(tenant, sim.proxy_url), home=home)
    assert p.returncode == 0, p.stderr[-3000:]
    assert re.search(r"run \d+ ok: pulled 400, archived 396, duplicates 0, quarantined 4", p.stdout), p.stdout
    return home, p


def test_status_json_reconciles(cli_home, tenant):
    home, _ = cli_home
    p = run("status", "--json", home=home)
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    answer = answer_messages(tenant)
    assert st["messages"] == sum(a["expected"] == "archived" for a in answer)
    assert st["cursors"][0]["cursor"] == str(max(a["seq"] for a in answer))
    rec = st["reconciliation"]
    assert (rec["pulled"], rec["archived"], rec["duplicates"], rec["quarantined"]) == (400, 396, 0, 4)
    assert rec["reconciled"] and rec["catalog_matches_records"]
    assert st["media"] == {"present": sum(m["state"] == "present" for m in answer_media(tenant)),
                           "expired": sum(m["state"] == "expired" for m in answer_media(tenant))}
    assert len(st["quarantined"]) == 4 and all(q["reason"] for q in st["quarantined"])
    assert sum(st["messages_by_kind"].values()) == st["messages"]
    human = run("status", home=home)
    assert human.returncode == 0 and "reconciled" in human.stdout


def test_search_json_fields_and_offsets(cli_home, tenant):
    home, _ = cli_home
    p = run("search", "--json", "--has-attachment", home=home)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert rows
    for r in rows:
        for key in ("msgid", "conversation", "sender", "sent_at", "kind", "text", "attachments"):
            assert key in r
        assert r["sent_at"] is None or re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?\+08:00$", r["sent_at"])
        for a in r["attachments"]:
            assert {"file_name", "size", "sha256", "state"} <= set(a)
    media = {(m["msgid"], m["path"]): m for m in answer_media(tenant)}
    got = {(r["msgid"], a["path"]): a for r in rows for a in r["attachments"]}
    assert set(media) <= set(got)
    for k, m in media.items():
        assert got[k]["state"] == m["state"]
        if m["state"] == "present":
            assert (got[k]["sha256"], got[k]["size"]) == (m["sha256"], m["size"])
        else:
            assert got[k]["reason"]


def test_search_filters_and_time_zone(cli_home, tenant):
    home, _ = cli_home
    all_rows = [json.loads(x) for x in run("search", "--json", home=home).stdout.splitlines()]
    sender = next(r["sender"] for r in all_rows if r["kind"] == "text" and r["sender"])
    by_sender = [json.loads(x) for x in run("search", "--json", "--sender", sender, home=home).stdout.splitlines()]
    assert by_sender and {r["msgid"] for r in by_sender} == {r["msgid"] for r in all_rows if r["sender"] == sender}
    files = [json.loads(x) for x in run("search", "--json", "--type", "file", home=home).stdout.splitlines()]
    assert files and all(r["kind"] == "file" for r in files)
    assert len(files) == sum(r["kind"] == "file" for r in all_rows)
    count = run("search", "--count", "--since", "2024-03-10", "--until", "2024-03-10", home=home)
    want = sum(1 for r in all_rows if r["sent_at"] and r["sent_at"].startswith("2024-03-10"))
    assert int(count.stdout) == want
    ny = [json.loads(x) for x in run("search", "--json", home=home, env={"WXARCHIVE_TZ": "America/New_York"}).stdout.splitlines()]
    assert all(r["sent_at"] is None or r["sent_at"][-6:] in ("-05:00", "-04:00") for r in ny)


def test_show_prints_the_transcript_in_order(cli_home):
    home, _ = cli_home
    rows = [json.loads(x) for x in run("search", "--json", home=home).stdout.splitlines()]
    conv = max({r["conversation"] for r in rows}, key=lambda c: sum(r["conversation"] == c for r in rows))
    p = run("show", conv, home=home)
    assert p.returncode == 0, p.stderr
    stamps = re.findall(r"^(\d{4}-\d\d-\d\dT\S+)\s", p.stdout, re.M)
    assert len(stamps) == sum(r["conversation"] == conv for r in rows)
    assert stamps == sorted(stamps)
    missing = run("show", "no-such-conversation", home=home)
    assert missing.returncode == 2 and "no conversation" in missing.stderr


def test_logs_and_output_hold_no_secrets_or_text(cli_home, tenant):
    home, ingest = cli_home
    secret = (tenant / "secret").read_text().strip()
    sdkfileids = set(re.findall(r'"sdkfileid":\s*"([^"]+)"', (tenant / "answer" / "messages.jsonl").read_text()))
    texts = [a["plaintext"]["text"]["content"] for a in answer_messages(tenant)
             if a.get("plaintext") and a["plaintext"].get("msgtype") == "text" and len(a["plaintext"]["text"]["content"]) >= 12]
    assert sdkfileids and texts
    logs = "".join(p.read_text(errors="replace") for p in (home / "logs").rglob("*") if p.is_file())
    assert "quarantined" in logs  # the log is really written
    seen = logs + ingest.stdout + ingest.stderr
    assert secret not in seen
    assert not any(f in seen for f in sdkfileids)
    assert not any(t in seen for t in texts)
    keyfiles = list(Path(os.environ["XDG_CONFIG_HOME"]).rglob("*.key"))
    assert keyfiles and not any(k.read_text().strip() in seen for k in keyfiles)


def test_config_file_supplies_every_option(tenant, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    info = json.loads((tenant / "tenant.json").read_text())
    keys = ", ".join(f'{p.stem.split("_v")[1]} = "{p}"' for p in sorted((tenant / "keys").glob("private_v*.pem")))
    with serve(tenant) as sim:
        (home / "config.toml").write_text(
            f'[wecom]\ncorp_id = "{info["corp_id"]}"\nsecret_file = "{tenant / "secret"}"\n'
            f'private_keys = {{ {keys} }}\nproxy = "{sim.proxy_url}"\nlimit = 150\n'
        )
        p = run("ingest", "wecom", "--max-records", "150", home=home)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "pulled 150" in p.stdout
    (home / "config.toml").write_text('[wecom]\nsecret = "inline"\n')
    assert_clean_error(run("ingest", "wecom", home=home), "config.toml", "secret")


def test_bad_input_gives_one_clear_line(tenant, tmp_path):
    home = tmp_path / "home"
    good = ingest_args(tenant, "http://127.0.0.1:9")
    assert_clean_error(run("status", home=tmp_path / "nowhere"), "no archive")
    assert_clean_error(run("ingest", "wecom", "--corp-id", "ww1", "--secret-file", str(tmp_path / "none"),
                           "--private-key", "1=x.pem", home=home), "not found")
    assert_clean_error(run(*[a if not a.startswith("1=") else "1=/nonexistent.pem" for a in good], home=home),
                       "/nonexistent.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
    assert_clean_error(run(*[a if not a.startswith("1=") else f"1={garbage}" for a in good], home=home),
                       "garbage.pem")
    assert_clean_error(run(*[a if a != good[-1] else "v2" for a in good], home=home), "VERSION=PEM_FILE")
    assert_clean_error(run("search", "--since", "yesterday-ish", home=tmp_path / "nowhere"), "no archive")
    bad_replay = tmp_path / "items.jsonl"
    bad_replay.write_text('{"seq": 1}\nthis is not json\n')
    p = run(*good, "--replay", str(bad_replay), home=home)
    assert p.returncode in (1, 2) and "items.jsonl:2" in p.stderr and "Traceback" not in p.stderr


def test_wrong_secret_fails_cleanly_without_moving_the_cursor(tenant, tmp_path):
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not-the-secret\n")
    with serve(tenant) as sim:
        args = ingest_args(tenant, sim.proxy_url)
        args[args.index("--secret-file") + 1] = str(wrong)
        p = run(*args, "--retries", "2", home=tmp_path / "home")
    assert p.returncode == 1, p.stderr
    assert "10001" in p.stderr and "Traceback" not in p.stderr
    st = json.loads(run("status", "--json", home=tmp_path / "home").stdout)
    assert st["cursors"] == [] and st["messages"] == 0
    assert st["runs"][-1]["status"] == "failed"


def test_replay_of_saved_items_dedupes(cli_home, tenant, tmp_path):
    home, _ = cli_home
    info = json.loads((tenant / "tenant.json").read_text())
    args = ["ingest", "wecom", "--corp-id", info["corp_id"], "--replay", str(tenant / "chatdata.jsonl")]
    for p in sorted((tenant / "keys").glob("private_v*.pem")):
        args += ["--private-key", f"{p.stem.split('_v')[1]}={p}"]
    fresh = tmp_path / "fresh"
    p = run(*args, home=fresh)
    assert p.returncode == 0, p.stderr
    assert f"at {fresh}; its master key is " in p.stderr and "back it up apart from the archive" in p.stderr
    assert "pulled 400, archived 396, duplicates 0, quarantined 4" in p.stdout
    again = run(*args, home=fresh)
    assert "pulled 400, archived 0, duplicates 400, quarantined 0" in again.stdout
    st = json.loads(run("status", "--json", home=fresh).stdout)
    assert st["messages"] == 396 and st["cursors"] == []  # a replay never moves the live cursor
    assert st["media"] == {"pending": len(answer_media(tenant))}  # no secret: media wait for a live run


def test_follow_polls_and_stops_on_sigterm(tenant, tmp_path):
    home = tmp_path / "home"
    with serve(tenant) as sim:
        cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home),
               *ingest_args(tenant, sim.proxy_url), "--follow", "--poll-interval", "0.2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(1)
            if sim.stats.calls.get("chat", 0) >= 5:  # caught up and polling again
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped" in out
    assert "lags" in err  # the simulated records are from 2024: far behind WeCom's retention
    st = json.loads(run("status", "--json", home=home).stdout)
    assert st["messages"] == 396


def test_ctrl_c_stops_the_ingest_cleanly_and_a_second_run_finishes(tenant, tmp_path):
    """Ctrl-C at the terminal (SIGINT to the whole process group, SDK and decrypt workers
    included): the run ends after its batch, 'stopped', no traceback, the archive verifies;
    the next run archives the rest, nothing twice."""
    home = tmp_path / "home"
    with serve(tenant) as sim:
        cmd = [sys.executable, "-m", "wxarchive.cli", "--home", str(home),
               *ingest_args(tenant, sim.proxy_url), "--limit", "20", "--follow", "--poll-interval", "0.2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sim.stats.calls.get("chat", 0) < 3:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        assert "Traceback" not in err and "stopping after the current batch" in err
        assert "stopped" in out
        assert run("verify", home=home).returncode == 0
        again = run(*ingest_args(tenant, sim.proxy_url), home=home)
    assert again.returncode == 0, again.stderr[-2000:]
    st = json.loads(run("status", "--json", home=home).stdout)
    assert st["messages"] == 396
    assert run("verify", "--deep", home=home).returncode == 0


def test_a_name_nobody_has_is_said_not_silently_empty(cli_home):
    """A mistyped sender matches nothing: the officer is told, the search still runs (0)."""
    home, _ = cli_home
    p = run("search", "--sender", "nobody-by-this-name", "--count", home=home)
    assert p.returncode == 0 and p.stdout.strip() == "0"
    assert "warning: --sender 'nobody-by-this-name': no participant or directory entry" in p.stderr
    p = run("search", "--department", "No Such Dept", "--count", home=home)
    assert "warning: --department 'No Such Dept': no one in the directory was ever in it" in p.stderr
    known = json.loads(run("search", "--json", "--limit", "1", home=home).stdout.splitlines()[0])["sender"]
    p = run("search", "--sender", known, "--count", home=home)
    assert int(p.stdout) > 0 and "warning" not in p.stderr


def test_conversations_list_account_switches_apart_from_chats(cli_home, tenant):
    home, _ = cli_home
    switches = {p["user"] for p in (a["plaintext"] for a in answer_messages(tenant))
                if p and p.get("action") == "switch"}
    assert switches  # the simulated tenant has some
    p = run("conversations", "--json", home=home)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines()]
    system = [r for r in rows if r["kind"] == "system"]
    assert {r["id"] for r in system} == {f"switch:{u}" for u in switches}
    assert all(r["title"].startswith("account switches of ") for r in system)
    assert not [r for r in rows if r["id"].startswith("switch:") and r["kind"] != "system"]
    human = run("conversations", home=home)
    assert human.returncode == 0 and "[system]" in human.stdout


def test_json_commands_answer_a_usage_error_in_json_on_stdout(tmp_path):
    """A script that asked for --json reads stdout: exit 2 comes with one JSON object there too,
    and the one-line error stays on stderr for people."""
    missing = tmp_path / "no-archive"
    for args in (["status", "--json"], ["search", "x", "--since", "nodate", "--json"], ["audit", "--json"]):
        done = run(*args, home=missing)
        assert done.returncode == 2, (args, done.stderr)
        answer = json.loads(done.stdout)
        assert answer["ok"] is False and answer["exit"] == 2 and answer["error"]
        assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    plain = run("status", home=missing)
    assert plain.returncode == 2 and plain.stdout == ""


def test_usage_errors_are_one_line(tmp_path):
    """A misspelt option, a missing argument, a value of the wrong type: one line on stderr with
    where to look, exit 2 (and under --json a JSON object on stdout too)."""
    for args, said in ((["--bogus"], "No such option: --bogus (see '"),
                       (["search", "--limit", "x"], "Invalid value for '--limit'"),
                       (["hold", "create"], "Missing argument 'name'. (see '"),
                       (["verify", "--json", "--jsn"], "No such option: --jsn")):
        done = run(*args, home=tmp_path / "none")
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], done.stderr
    assert json.loads(run("verify", "--json", "--jsn", home=tmp_path / "none").stdout)["exit"] == 2
    assert run("--help").returncode == 0
