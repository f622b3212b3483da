"""The real CLI on generated WeChat devices: simulate, dry run, ingest, re-ingest, status,
search; bad keys, paths, policies and formats as one clear line with no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import assert_clean_error, run


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    d = tmp_path_factory.mktemp("wechat-cli") / "device"
    p = run("simulate", "wechat", str(d), "--format", "v4", "--messages", "40")
    assert p.returncode == 0, p.stderr
    return d, json.loads((d / "answer.json").read_text())


def _ingest(home: Path, d: Path, a: dict, *extra: str, env: dict | None = None):
    return run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", str(d / "key.txt"), *extra,
               home=home, env=env)


def test_dry_run_lists_every_conversation_and_archives_nothing(dev, tmp_path):
    d, a = dev
    home = tmp_path / "home"
    p = _ingest(home, d, a, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "wxid_friend01" in p.stdout and "personal" in p.stdout and "no policy" in p.stdout
    assert f"{a['total']} messages: 0 would be captured" in p.stdout
    p = _ingest(home, d, a, "--dry-run", "--policy", str(d / "policy.toml"))
    assert p.returncode == 0, p.stderr
    assert f"{a['work']} would be captured, {a['personal']} excluded" in p.stdout
    p = _ingest(home, d, a, "--dry-run", "--json", "--policy", str(d / "policy.toml"))
    assert "work_labels has no effect on v4 databases" in p.stderr  # said, not silently ignored
    rows = {r["conversation"]: r for r in map(json.loads, p.stdout.splitlines())}
    assert rows["20000001@chatroom"]["reason"] == "work_groups" and rows["20000001@chatroom"]["work"]
    assert rows["wxid_client02"]["reason"] == "customer list (mobile)"
    assert rows["wxid_friend01"] == {"conversation": "wxid_friend01", "name": "Mom 妈妈", "kind": "direct",
                                     "messages": rows["wxid_friend01"]["messages"], "work": False,
                                     "reason": "not in the policy"}
    assert sum(r["messages"] for r in rows.values()) == a["total"]
    assert not home.exists()


def test_ingest_then_again_then_status_and_search(dev, tmp_path):
    d, a = dev
    home = tmp_path / "home"
    p = _ingest(home, d, a, "--policy", str(d / "policy.toml"))
    assert p.returncode == 0, p.stderr
    assert f"archived {a['work']}," in p.stdout and f"{a['personal']} messages excluded" in p.stdout
    p = _ingest(home, d, a, "--policy", str(d / "policy.toml"))
    assert p.returncode == 0 and "archived 0," in p.stdout, p.stdout
    st = run("status", "--json", home=home)
    data = json.loads(st.stdout)
    assert data["messages"] == a["work"]
    census = data["wechat"][0]
    assert census["captured"] + census["excluded"] == census["total"] == a["total"]
    assert census["archived"] == census["captured"]
    s = run("search", "报价单", "--json", home=home)
    hits = [json.loads(line) for line in s.stdout.splitlines() if line.strip()]
    assert hits and all(h["source"] == f"wechat:{a['owner']}" for h in hits)
    log = (home / "logs" / "wxarchive.log").read_text()
    assert a["key"] not in log + p.stdout + p.stderr and "报价" not in log
    v = run("verify", home=home)
    assert v.returncode == 0, v.stdout + v.stderr


def test_wrong_key_is_one_line_and_archives_nothing(dev, tmp_path):
    d, a = dev
    bad = tmp_path / "bad.key"
    bad.write_text("22" * 32)
    home = tmp_path / "home"
    p = run("ingest", "wechat", a["device"], "--format", "v4", "--key-file", str(bad), "--policy",
            str(d / "policy.toml"), home=home)
    assert_clean_error(p, "key does not open")
    assert "message_0.db" in p.stderr and "22" * 32 not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (home / "journal").exists()


@pytest.mark.parametrize("args, needle", [
    (["--format", "v3"], "--format 'v3'"),
    (["--format", "v4"], "no --policy"),
    (["--format", "win3", "--policy", "POLICY"], "not a WeChat 3.x Msg folder"),
    (["--format", "android", "--policy", "POLICY"], "needs --key"),
    (["--format", "v4", "--key", "abcd", "--policy", "POLICY"], "64 hex characters"),
    (["--format", "v4", "--policy", "/nonexistent/p.toml"], "no such policy file"),
])
def test_usage_errors(dev, tmp_path, args, needle):
    d, a = dev
    args = [str(d / "policy.toml") if x == "POLICY" else x for x in args]
    key = [] if any(x == "--key" for x in args) or "android" in args else ["--key-file", str(d / "key.txt")]
    p = run("ingest", "wechat", a["device"], *args, *key, home=tmp_path / "home")
    assert_clean_error(p, needle)
    assert needle in p.stderr, p.stderr


def test_bad_policy_names_file_and_setting(dev, tmp_path):
    d, a = dev
    pol = tmp_path / "p.toml"
    pol.write_text('work_contact = ["wxid_x"]\n')
    p = _ingest(tmp_path / "home", d, a, "--policy", str(pol))
    assert_clean_error(p)
    assert str(pol) in p.stderr and "'work_contact'" in p.stderr
    pol.write_text('work_groups = ["not-a-group"]\n')
    p = _ingest(tmp_path / "home", d, a, "--policy", str(pol))
    assert_clean_error(p)
    assert "not a group id" in p.stderr
    pol.write_text('customer_list = "missing.csv"\n')
    p = _ingest(tmp_path / "home", d, a, "--policy", str(pol))
    assert_clean_error(p)
    assert "missing.csv: customer list not found" in p.stderr


def test_missing_path(tmp_path):
    p = run("ingest", "wechat", str(tmp_path / "nope"), "--format", "v4", "--key", "11" * 32, "--policy",
            str(tmp_path / "p.toml"), home=tmp_path / "home")
    assert_clean_error(p)


def test_readme_wechat_commands_run_as_written(tmp_path):
    """The README's WeChat block, run line by line (its /tmp/device in a temporary folder)."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## WeChat from managed devices\s+```sh\n(.*?)```", text, re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", x) for x in block.replace("\\\n", " ").splitlines() if x.strip()]
    assert lines[0] == "export WXARCHIVE_HOME=/tmp/wechat-archive"  # its own archive, said in the block
    lines = lines[1:]
    assert len(lines) == 3 and all(x.startswith("wxarchive ") for x in lines)
    env = {"WXARCHIVE_HOME": str(tmp_path / "home")}
    outs = []
    for line in lines:
        args = shlex.split(line.replace("/tmp/device", str(tmp_path / "device")))[1:]
        p = run(*args, env=env)
        assert p.returncode == 0, (line, p.stderr)
        outs.append(p.stdout)
    a = json.loads((tmp_path / "device" / "answer.json").read_text())
    assert f"{a['total']} messages: {a['work']} would be captured" in outs[1]  # what the policy would do
    assert f"archived {a['work']}," in outs[2]
    # three images (one a thumbnail only, one a V2 .dat opened with the image key), the video, the file,
    # the voice and its WAV present; the image never downloaded on the PC, the sticker and the forwarded
    # record's file missing: the same counts as status gives
    assert "media: 3 missing, 7 present" in outs[2], outs[2]
    st = run("status", env=env)
    assert "3 missing, 7 present" in st.stdout, st.stdout


def test_sender_found_by_every_name_an_officer_may_type(dev, tmp_path):
    """A WeChat contact is found by their remark, its plain part, their nickname, each script of a
    bilingual name, their WeChat ID, and a mobile written in their remark (any formatting)."""
    d, a = dev
    home = tmp_path / "home"
    assert _ingest(home, d, a, "--policy", str(d / "policy.toml")).returncode == 0

    def count(sender: str) -> int:
        p = run("search", "--sender", sender, "--count", home=home)
        assert p.returncode == 0, p.stderr
        return int(p.stdout.split()[0])

    want = {who: sum(1 for e in a["messages"] if e["sender"] == who)
            for who in ("wxid_client01", "wxid_client02", "wxid_colleague01", "wxid_client03")}
    assert all(want.values())
    for who, names in {"wxid_client01": ["张三 (ACME)", "张三", "Zhang San", "zhang san"],
                       "wxid_client02": ["王芳 138-1234-5678", "王芳", "Wang Fang", "13812345678", "+86 138 1234 5678"],
                       "wxid_colleague01": ["Liu Yang 刘洋", "刘洋", "Liu Yang"],
                       "wxid_client03": ["Chen Jie", "chenjie_hk"]}.items():
        assert count(who) == want[who]
        for n in names:
            assert count(n) == want[who], (who, n)
    assert count("张") == 0 and count("ACME") == 0  # names match whole, never a part of one
