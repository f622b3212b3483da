"""The command line: thin typer commands, each calling one library function.

User mistakes (wrong key, wrong path, wrong format) end in one line ``error: ...`` and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from wxarchive import config as cfg

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Compliance archive for WeCom and WeChat.")
simulate_app = typer.Typer(no_args_is_help=True, help="Simulated WeCom tenants and WeChat devices for demos and tests.")
ingest_app = typer.Typer(no_args_is_help=True, help="Capture messages into the archive.")
app.add_typer(simulate_app, name="simulate")
app.add_typer(ingest_app, name="ingest")
keys_app = typer.Typer(no_args_is_help=True, help="The archive's master key and signing key.")
app.add_typer(keys_app, name="keys")
hold_app = typer.Typer(no_args_is_help=True, help="Legal holds: records they match are never purged.")
app.add_typer(hold_app, name="hold")
directory_app = typer.Typer(no_args_is_help=True, help="Who the archive's ids are: names, mobiles, e-mails, with history.")
app.add_typer(directory_app, name="directory")

out = Console(soft_wrap=True)  # long lines stay whole: they are read by people and by grep
err = Console(stderr=True, soft_wrap=True)


class State:
    home: Path = Path(cfg.DEFAULT_HOME)


state = State()


@app.callback()
def _main(
    home: Optional[Path] = typer.Option(
        None, "--home", envvar="WXARCHIVE_HOME", help="Archive directory (default: ./wxarchive-data in the current folder)."
    ),
) -> None:
    state.home = cfg.resolve_home(home)


def _setup_logging(home: Path) -> None:
    """Operational log under <home>/logs: counts, codes and ids only (never text or secrets)."""
    root = logging.getLogger("wxarchive")
    if root.handlers:
        return
    root.setLevel(logging.INFO)
    try:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(home / "logs" / "wxarchive.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        root.addHandler(fh)
    except OSError:
        pass
    sh = logging.StreamHandler(sys.stderr)
    sh.setLevel(logging.WARNING)
    sh.setFormatter(logging.Formatter("warning: %(message)s"))
    root.addHandler(sh)


def _user_errors() -> tuple[type[BaseException], ...]:
    from wxarchive.archive.archive import ArchiveError
    from wxarchive.archive.blobs import BlobError
    from wxarchive.archive.catalog.sqlite import CatalogError
    from wxarchive.archive.journal import JournalError
    from wxarchive.archive.keys import KeyError_
    from wxarchive.capture.wecom.decrypt import KeyLoadError
    from wxarchive.capture.wecom.sdk import SdkError, SdkLoadError
    from wxarchive.ingest import CaptureError
    from wxarchive.search.query import QueryError
    from wxarchive.archive.audit import AuditError
    from wxarchive.archive.retention import RetentionError
    from wxarchive.capture.jsonl import ImportError_
    from wxarchive.capture.wechat.policy import PolicyError
    from wxarchive.capture.wechat.sqlcipher import WeChatDbError
    from wxarchive.ingest_wechat import PolicyCannotApply

    return (ImportError_, PolicyError, WeChatDbError, PolicyCannotApply, cfg.ConfigError, ArchiveError, AuditError, RetentionError, CatalogError, BlobError, JournalError, KeyError_, KeyLoadError, SdkError,
            SdkLoadError, CaptureError, QueryError)


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0, 9), *range(11, 32), *range(127, 160)]}
_CONTROL.update({c: f"\\u{c:04x}" for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]})  # bidi overrides


def safe(text: str) -> str:
    """Text from messages, names or the environment, made inert for a terminal (no escape
    sequences); newlines are kept."""
    return text.translate(_CONTROL) if isinstance(text, str) else text


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(safe(message))}", markup=True, highlight=False, soft_wrap=True,
              emoji=False)
    _json_error(message, code)
    raise typer.Exit(code)


def _json_error(message: str, code: int) -> None:
    """Under ``--json``, a script reads stdout: a usage or configuration error (exit 2) is also
    one JSON object there (the commands' own exit-1 answers are JSON already)."""
    if code == 2 and "--json" in sys.argv[1:]:
        print(json.dumps({"ok": False, "error": message, "exit": code}, ensure_ascii=False), flush=True)


def _open_archive(create: bool = False, readonly: bool = False, rebuilding: bool = False):
    """The archive and its settings: readers pass ``readonly`` (no lock, no writes); reindex
    ``rebuilding`` (the catalog is dropped: it is not caught up, nor held against the journal)."""
    from wxarchive.archive.archive import Archive

    settings = cfg.load_settings(state.home) if state.home.exists() else cfg.Settings()
    enc = settings.archive.get("catalog_encryption", "none")
    if enc not in ("none", "sqlcipher"):
        fail(f"{settings.path}: [archive] catalog_encryption must be \"none\" or \"sqlcipher\", not {enc!r}")
    if enc == "sqlcipher" and (state.home / "catalog.db").exists() and not (state.home / "keys" / "catalog.key").exists():
        fail(f"{settings.path}: catalog_encryption = \"sqlcipher\", but this archive's catalog is plain SQLite "
             "(the setting applies when an archive is created; encrypting an existing catalog is not supported yet)")
    new = create and not (state.home / "archive.json").exists()
    archive = Archive.open(state.home, create=create, master_key_file=settings.archive.get("master_key_file"),
                           readonly=readonly, encrypt_catalog=enc == "sqlcipher", rebuilding=rebuilding)
    if new:
        from wxarchive.archive.keys import master_key_path

        where = master_key_path(archive.archive_id, settings.archive.get("master_key_file"))
        err.print(f"created archive {archive.archive_id} at {state.home}; its master key is "
                  + (f"{where}: back it up apart from the archive (without it nothing can be read)" if where
                     else "the one WXARCHIVE_MASTER_KEY holds"), highlight=False, markup=False, soft_wrap=True)
    if not readonly and not rebuilding:  # a writer first brings the catalog up to the journal (after a crash it may lag)
        from wxarchive.ingest import catch_up

        try:
            catch_up(archive)
        except BaseException:
            archive.close()
            raise
    return archive, settings


# ---- simulate ---------------------------------------------------------------------------


@simulate_app.command("wecom")
def simulate_wecom(
    directory: Path = typer.Argument(..., help="Where to write the tenant."),
    messages: int = typer.Option(20000, "--messages", "-n", min=1, help="How many chat records."),
    seed: int = typer.Option(7, "--seed", help="Same seed, same tenant."),
) -> None:
    """Write a simulated WeCom corp: directory, keys, encrypted records, media, answer key."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from wxarchive.simulate.tenant import generate_tenant

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("generating", total=messages)
        summary = generate_tenant(directory, messages=messages, seed=seed,
                                  progress=lambda n: bar.update(task, completed=n))
    out.print(f"simulated tenant written to {directory}")
    out.print(summary if isinstance(summary, str) else getattr(summary, "__dict__", summary), highlight=False)


@simulate_app.command("wechat")
def simulate_wechat(
    directory: Path = typer.Argument(..., help="Where to write the device copy."),
    fmt: str = typer.Option("v4", "--format", help="android | win3 | v4"),
    messages: int = typer.Option(0, "--messages", "-n", min=0, help="Extra everyday messages beyond the fixed scenario."),
    extra: int = typer.Option(0, "--extra", min=0, help="Newer messages on top (a later copy of the same device)."),
    seed: int = typer.Option(7, "--seed", help="Same seed, same databases."),
) -> None:
    """Write a simulated managed device: encrypted WeChat databases, key, policy and answer key."""
    from wxarchive.simulate.wechat import generate_device

    if fmt not in ("android", "win3", "v4"):
        fail(f"--format {fmt!r}: expected android, win3 or v4")
    answer = generate_device(directory, fmt, messages=messages, extra=extra, seed=seed)
    out.print(f"simulated {fmt} device written to {directory}: {answer['total']} messages "
              f"({answer['work']} work, {answer['personal']} personal); key in {directory / 'key.txt'}"
              + (f", image key in {directory / 'image_key.txt'}" if answer.get("image_key") else "")
              + f", policy in {directory / 'policy.toml'}; give ingest the account folder {answer['device']}",
              highlight=False)


@simulate_app.command("serve")
def simulate_serve(
    directory: Path = typer.Argument(..., help="A tenant written by 'simulate wecom'."),
    port: int = typer.Option(0, "--port", help="Proxy port on 127.0.0.1 (0 = any free port)."),
    faults: str = typer.Option("", "--faults", help="Fault plan, see 'wxarchive.simulate.server'."),
    proxy_auth_file: Optional[Path] = typer.Option(None, "--proxy-auth-file", help="Require user:pass from this file."),
) -> None:
    """Serve the tenant over the real wire protocol behind a local TLS CONNECT proxy."""
    from wxarchive.simulate.server import parse_fault_spec, serve_forever

    if not (directory / "tenant.json").exists():
        fail(f"{directory}: not a simulated tenant (no tenant.json)")
    auth = cfg.read_secret_file(proxy_auth_file, "--proxy-auth-file") if proxy_auth_file else None
    serve_forever(directory, port=port, faults=parse_fault_spec(faults) if faults else None, proxy_auth=auth)


# ---- ingest -----------------------------------------------------------------------------


def _private_keys(specs: list[str], settings: cfg.Settings) -> dict[int, bytes]:
    paths: dict[int, str] = {}
    for ver, p in (settings.wecom.get("private_keys") or {}).items():
        paths[int(ver)] = str(p)
    for spec in specs:
        ver, sep, path = spec.partition("=")
        if not sep or not ver.strip().isdigit():
            fail(f"--private-key {spec!r}: expected VERSION=PEM_FILE, e.g. 1=/etc/wxarchive/v1.pem")
        paths[int(ver)] = path
    if not paths:
        fail("no private key given: pass --private-key VERSION=PEM_FILE (once per publickey_ver)")
    keys = {}
    for ver, p in paths.items():
        try:
            keys[ver] = Path(p).expanduser().read_bytes()
        except OSError as e:
            fail(f"private key for version {ver}: cannot read {p} ({e.strerror or e.__class__.__name__})")
    from wxarchive.capture.wecom.decrypt import KeyLoadError, KeyRing

    for ver, pem in keys.items():  # fail now, naming the file, rather than in a worker
        try:
            KeyRing.from_pems({ver: pem})
        except KeyLoadError as e:
            fail(f"{paths[ver]}: {e}")
    return keys


@ingest_app.command("wecom")
def ingest_wecom(
    corp_id: Optional[str] = typer.Option(None, "--corp-id", help="The corp id (ww…)."),
    secret_file: Optional[Path] = typer.Option(None, "--secret-file", help="File holding the archive secret (or env WXARCHIVE_WECOM_SECRET)."),
    private_key: list[str] = typer.Option([], "--private-key", help="VERSION=PEM_FILE, repeatable (PKCS#1 or PKCS#8)."),
    proxy: Optional[str] = typer.Option(None, "--proxy", help="Proxy URL for the SDK, e.g. http://10.0.0.1:3128."),
    proxy_auth: Optional[str] = typer.Option(None, "--proxy-auth", help="user:pass for the proxy (or env WXARCHIVE_WECOM_PROXY_AUTH)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, max=1000, help="Records per GetChatData call (1-1000)."),
    timeout: Optional[int] = typer.Option(None, "--timeout", min=1, help="Seconds per HTTP call of the SDK."),
    follow: bool = typer.Option(False, "--follow", help="Keep polling for new records."),
    max_records: Optional[int] = typer.Option(None, "--max-records", min=1, help="Stop after this many records."),
    replay: Optional[Path] = typer.Option(None, "--replay", help="Archive raw chatdata items from a JSON-lines file instead of pulling."),
    sdk_lib: Optional[Path] = typer.Option(None, "--sdk-lib", help="Your own copy of libWeWorkFinanceSdk_C.so."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decrypt processes [default: CPU count]."),
    poll_interval: float = typer.Option(15.0, "--poll-interval", min=0.1, help="Seconds between polls with --follow."),
    no_media: bool = typer.Option(False, "--no-media", help="Leave media pending (fetched by a later run)."),
    retries: int = typer.Option(6, "--retries", min=1, max=50, help="Attempts per SDK call on transient errors (10001-10003)."),
) -> None:
    """Pull WeCom conversation archives through the official SDK into the archive."""
    from wxarchive.ingest import WeComOptions

    settings = cfg.load_settings(state.home) if state.home.exists() else cfg.Settings()
    w = settings.wecom
    corp = corp_id or w.get("corp_id")
    if not corp:
        fail("no corp id: pass --corp-id or set [wecom] corp_id in config.toml")
    secret = os.environ.get("WXARCHIVE_WECOM_SECRET", "")
    if secret_file or w.get("secret_file"):
        secret = cfg.read_secret_file(secret_file or w["secret_file"], "archive secret")
    if not secret and not replay:
        fail("no archive secret: pass --secret-file FILE or set WXARCHIVE_WECOM_SECRET")
    auth = proxy_auth or os.environ.get("WXARCHIVE_WECOM_PROXY_AUTH", "")
    if not auth and w.get("proxy_auth_file"):
        auth = cfg.read_secret_file(w["proxy_auth_file"], "proxy credentials")
    if replay is not None and not replay.is_file():
        fail(f"--replay {replay}: no such file")
    keys = _private_keys(private_key, settings)
    lib = str(sdk_lib) if sdk_lib else w.get("sdk_lib")
    if lib and not Path(lib).is_file():
        fail(f"--sdk-lib {lib}: no such file")
    opts = WeComOptions(
        corp_id=corp, secret=secret, private_keys=keys, proxy=proxy or w.get("proxy", ""), proxy_auth=auth,
        limit=limit or int(w.get("limit", 1000)), timeout=timeout or int(w.get("timeout", 10)),
        max_records=max_records, follow=follow, poll_interval=poll_interval, sdk_lib=lib,
        workers=workers or w.get("workers"), fetch_media=not no_media, max_retries=retries,
    )
    archive, settings = _open_archive(create=True)
    _setup_logging(state.home)
    result = _run_capture(archive, opts, replay)
    archive.close()
    c = result.counts
    out.print(
        f"run {result.run_id} {result.status}: pulled {c['pulled']}, archived {c['archived']}, "
        f"duplicates {c['duplicates']}, quarantined {c['quarantined']}"
        + (f", recovered {c['recovered']}" if c["recovered"] else "")
        + f"; media {dict(result.media) or 'none'}; cursor {result.cursor}",
        highlight=False,
    )
    if result.status not in ("ok", "stopped"):
        fail(result.error or result.status, 1)


@ingest_app.command("wechat")
def ingest_wechat_cmd(
    path: Path = typer.Argument(..., help="The device copy: EnMicroMsg.db or its folder (android), the Msg folder "
                                          "or its account folder (win3), db_storage or its account folder (v4)."),
    fmt: str = typer.Option(..., "--format", help="android | win3 | v4"),
    key: Optional[str] = typer.Option(None, "--key", help="Key as hex (visible to other users of this machine: "
                                                          "prefer --key-file or env WXARCHIVE_WECHAT_KEY)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="File holding the key as hex."),
    imei: Optional[str] = typer.Option(None, "--imei", help="Android: the device IMEI (1234567890ABCDEF is tried too)."),
    uin: Optional[str] = typer.Option(None, "--uin", help="Android: the account uin (may be negative)."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="TOML policy: which chats are work."),
    account: Optional[str] = typer.Option(None, "--account", help="The device owner's wxid, when the folder does not tell."),
    image_key_file: Optional[Path] = typer.Option(None, "--image-key-file", help="v4: file holding the account's image "
                                                  "key (V2 .dat images; or env WXARCHIVE_WECHAT_IMAGE_KEY)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every conversation, its size and what the policy "
                                                          "would do; archive nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: one JSON object per conversation."),
) -> None:
    """Archive the work chats of a WeChat account from its (encrypted) databases."""
    from wxarchive.capture.wechat import open_reader, parse_image_key, parse_key
    from wxarchive.capture.wechat.policy import load as load_policy
    from wxarchive.ingest_wechat import ingest_wechat, plan

    if fmt not in ("android", "win3", "v4"):
        fail(f"--format {fmt!r}: expected android, win3 or v4")
    if policy_file is None and not dry_run:
        fail("no --policy: nothing is captured without one (run with --dry-run to list the conversations, "
             "then write a policy; see docs/wechat.md)")
    if as_json and not dry_run:
        fail("--json goes with --dry-run (the run itself reports with 'wxarchive status --json')")
    policy = load_policy(policy_file) if policy_file else None
    given = [x for x in (key, key_file) if x]
    if len(given) > 1:
        fail("give the key once: --key or --key-file")
    if key:
        text, what = key, "--key"
    elif key_file:
        text, what = cfg.read_secret_file(key_file, "--key-file"), f"--key-file {key_file}"
    elif fmt == "android" and uin:  # an explicit --uin wins over a key left in the environment
        text, what = None, ""
    else:
        text, what = os.environ.get("WXARCHIVE_WECHAT_KEY"), "WXARCHIVE_WECHAT_KEY"
    material = parse_key(fmt, text, what) if text else None
    image_key = None
    if image_key_file:
        image_key = parse_image_key(cfg.read_secret_file(image_key_file, "--image-key-file"),
                                    f"--image-key-file {image_key_file}")
    elif os.environ.get("WXARCHIVE_WECHAT_IMAGE_KEY"):
        image_key = parse_image_key(os.environ["WXARCHIVE_WECHAT_IMAGE_KEY"], "WXARCHIVE_WECHAT_IMAGE_KEY")
    reader = open_reader(fmt, path, key=material, imei=imei, uin=uin, account=account, image_key=image_key)
    from wxarchive.ingest_wechat import policy_warnings

    def warn(text: str) -> None:
        err.print(f"[yellow]warning:[/] {escape_markup(safe(text))}", highlight=False, soft_wrap=True)

    with reader:
        if dry_run:
            plans, contacts, _ = plan(reader, policy)
            for w in policy_warnings(reader, policy, contacts):
                warn(w)
            if as_json:
                for p in plans:
                    print(json.dumps({"conversation": p.talker, "name": p.name, "kind": p.kind, "messages": p.messages,
                                      "work": p.decision.work, "reason": p.decision.reason}, ensure_ascii=False))
                return
            t = Table("conversation", "name", "kind", "messages", "policy", "why", title=f"{reader.path} ({fmt}, account "
                      f"{safe(reader.owner)})")
            for p in plans:
                t.add_row(safe(p.talker), safe(p.name or ""), p.kind, str(p.messages),
                          "work" if p.decision.work else "personal", p.decision.reason)
            out.print(t)
            work = sum(p.messages for p in plans if p.decision.work)
            total = sum(p.messages for p in plans)
            out.print(f"{len(plans)} conversations, {total} messages: {work} would be captured, {total - work} "
                      f"excluded as personal (dry run: nothing archived)", highlight=False)
            return
        archive, _ = _open_archive(create=True)
        _setup_logging(state.home)
        try:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                          transient=True) as bar:
                task = bar.add_task("reading", total=None)

                def progress(event: str, info: dict) -> None:
                    if event == "warning":
                        bar.console.print(f"[yellow]warning:[/] {escape_markup(safe(info['text']))}",
                                          highlight=False, soft_wrap=True)
                        return
                    bar.update(task, description=f"read {info['pulled']}  archived {info['archived']}  "
                                                 f"dup {info['duplicates']}  quarantined {info['quarantined']}")

                import signal

                stop = {"asked": False}

                def ask_stop(signum, frame):
                    stop["asked"] = True
                    bar.console.print("stopping after the current chunk (every row read so far stays archived)")

                old = {sig: signal.signal(sig, ask_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    result = ingest_wechat(archive, reader, policy, progress, should_stop=lambda: stop["asked"])
                finally:
                    for sig, handler in old.items():
                        signal.signal(sig, handler)
        finally:
            archive.close()
    c = result.counts
    out.print(f"run {result.run_id} {result.status}: {result.work_conversations} work conversations read, "
              f"{c['pulled']} messages, archived {c['archived']}, duplicates {c['duplicates']}, quarantined "
              f"{c['quarantined']}; {result.personal_conversations} personal conversations with {c['excluded']} "
              f"messages excluded; media: " + (", ".join(f"{n} {state}" for state, n in sorted(result.media.items()))
                                               or "none")
              + (f"; {result.media_found_later} media of earlier messages found in this copy"
                 if result.media_found_later else ""), highlight=False)
    if result.need_image_key:
        err.print(f"[yellow]warning:[/] {result.need_image_key} image(s) are 4.x V2 .dat files, archived as found "
                  "(not viewable): give the account's image key with --image-key-file or WXARCHIVE_WECHAT_IMAGE_KEY "
                  "and run again to archive them unwrapped", highlight=False, soft_wrap=True)
    if result.status == "stopped":
        raise typer.Exit(130)
    if result.status != "ok":
        fail(result.error or result.status, 1)


def _run_capture(archive, opts, replay):
    import signal

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from wxarchive.ingest import WeComCapture

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task("connecting", total=None)
        media = {"n": 0}

        def progress(event: str, info: dict) -> None:
            if event == "batch":
                bar.update(task, description=(
                    f"pulled {info['pulled'] if 'cursor' not in info else ''}".strip()
                    and f"archived {info['archived']}  dup {info['duplicates']}  quarantined "
                    f"{info['quarantined']}  cursor {info.get('cursor', '-')}"))
            elif event == "media":
                media["n"] += 1
                bar.update(task, description=f"media fetched {media['n']}")
            elif event == "retry":
                bar.console.print(f"retrying {info['what']} ({info['error']})", highlight=False)
            elif event == "lag":
                bar.console.print(f"[yellow]capture lags {info['hours']:.0f} h behind; WeCom keeps records only about 3 days[/]")
            elif event == "idle":
                bar.update(task, description=f"up to date at seq {info['cursor']}; polling")

        cap = WeComCapture(archive, opts, progress, replay=replay)

        def stop(signum, frame):
            if signum == signal.SIGINT and not cap.stop_requested:  # a second Ctrl-C interrupts at once
                signal.signal(signal.SIGINT, old[signal.SIGINT])
                bar.console.print("stopping after the current batch (Ctrl-C again to interrupt now; "
                                  "nothing durable is lost either way)", highlight=False)
            cap.stop_requested = True

        old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return cap.run()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


# ---- reading ----------------------------------------------------------------------------


@app.command("status")
def status_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Cursor, counts by kind, quarantine, media states and reconciliation."""
    from wxarchive.archive.status import status

    archive, settings = _open_archive(readonly=True)
    try:
        st = status(archive.catalog.engine, settings.timezone)
        archive.access_log().record("status", results=st["messages"])
    finally:
        archive.close()
    if as_json:
        print(json.dumps(st, ensure_ascii=False, indent=2))
        return
    _print_status(st)


def _print_status(st: dict) -> None:
    for c in st["cursors"]:
        if c["source"].startswith("wechat:"):
            n = len(json.loads(c["cursor"] or "{}"))
            out.print(f"source {c['source']}: cursor at the last local id of {n} chat tables (updated "
                      f"{c['updated_at']})", highlight=False)
        else:
            out.print(f"source {c['source']}: cursor seq {c['cursor']} (updated {c['updated_at']})", highlight=False)
    for w in st.get("wechat", []):
        ok = "[green]reconciled[/]" if w["reconciled"] else "[red]NOT reconciled[/]"
        out.print(f"  {w['format']} copy read {w['read_at']}: {w['total']} messages = {w['captured']} in "
                  f"{w['work_conversations']} work conversations + {w['excluded']} excluded in "
                  f"{w['personal_conversations']} personal; archived for this account {w['archived']}  {ok}",
                  highlight=False)
        for text in w.get("warnings", []):
            out.print(f"    [yellow]warning:[/] {escape_markup(safe(text))}", highlight=False, soft_wrap=True)
    out.print(f"messages {st['messages']}, conversations {st['conversations']}, participants {st['participants']}")
    t = Table("kind", "messages", title="messages by kind")
    for k, n in st["messages_by_kind"].items():
        t.add_row(k, str(n))
    out.print(t)
    out.print("media: " + (", ".join(f"{n} {state}" for state, n in sorted(st["media"].items())) or "none"),
              highlight=False)
    q = st["quarantined"]
    out.print(f"quarantined: {len(q)}")
    for item in q[:50]:
        out.print(f"  {item['key']} (seq {item['cursor']}): {item['reason']}", highlight=False)
    r = st["reconciliation"]
    ok = "[green]reconciled[/]" if r["reconciled"] and r["catalog_matches_records"] else "[red]NOT reconciled[/]"
    out.print(
        f"reconciliation: pulled {r['pulled']} + recovered {r['recovered']} = archived {r['archived']} + "
        f"duplicates {r['duplicates']} + quarantined {r['quarantined']}  {ok}; pending {r['pending_records']}"
    )


def _query(text, sender, kind, conversation, since, until, has_attachment, tz, limit=None, **more):
    from wxarchive.search.query import Query, parse_when

    lo = parse_when(since, tz) if since else None
    hi = parse_when(until, tz, end=True) if until else None
    if lo is not None and hi is not None and lo >= hi:  # read as "none were sent" otherwise
        fail(f"--since {since} is not before --until {until}: no time is in that range")
    return Query(
        text=text or None, sender=sender, kind=kind, conversation=conversation, since=lo, until=hi,
        has_attachment=has_attachment, limit=limit, **more,
    )


def _size(value: str | None, flag: str) -> int | None:
    """'15000', '15k', '2.5MB' → bytes."""
    if value is None:
        return None
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*", value.lower())
    if not m:
        fail(f"{flag} {value!r}: give a size in bytes, or with k/M/G (e.g. 15k, 2.5MB)")
    n = int(float(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)])
    if n >= 2**63:
        fail(f"{flag} {value!r}: too large")
    return n


# Filters shared by search and export (one definition: the same words mean the same filter)
F_SENDER = typer.Option(None, "--sender", help="Sender: id or display name.")
F_PARTICIPANT = typer.Option(None, "--participant", help="Sender or recipient: id or display name.")
F_DEPARTMENT = typer.Option(None, "--department", help="The sender's department (at any time in the directory).")
F_KIND = typer.Option(None, "--type", help="Message kind (text, image, file, ...) or WeCom msgtype.")
F_CONVERSATION = typer.Option(None, "--conversation", help="Conversation id or group name.")
F_SINCE = typer.Option(None, "--since", help="From this date/time (inclusive; zone-less = the configured zone).")
F_UNTIL = typer.Option(None, "--until", help="Up to this date (inclusive) or time (exclusive).")
F_EXTERNAL = typer.Option(None, "--external/--internal", help="Only chats with an external contact / only internal.")
F_HAS_ATTACHMENT = typer.Option(False, "--has-attachment", help="Only messages with media or files.")
F_ATT_NAME = typer.Option(None, "--attachment-name", help="A file name containing this (case-insensitive).")
F_EXT = typer.Option(None, "--ext", help="Attachments with this extension (pdf, .xlsx, ...).")
F_MIN_SIZE = typer.Option(None, "--min-size", help="An attachment of at least this size (15k, 2MB).")
F_MAX_SIZE = typer.Option(None, "--max-size", help="An attachment of at most this size.")
F_RECALLED = typer.Option(None, "--recalled/--not-recalled", help="Only recalled originals / only never recalled.")
F_SOURCE = typer.Option(None, "--source", help="Only this source (e.g. wecom:ww...).")
F_CONSENT = typer.Option(None, "--consent", help="Chats whose external party's archiving consent is agree, disagree "
                                                 "or default (from 'directory sync').")
F_FOLD = typer.Option(False, "--fold", help="Ignore case, width (Ｆｕｌｌ=Full) and Traditional/Simplified (開=开).")
F_LITERAL = typer.Option(False, "--literal", help="The text is one substring, AND/OR/NOT/quotes included.")


def _warn_unknown_names(engine, q) -> None:
    from wxarchive.search.query import unknown_names

    for w in unknown_names(engine, q):
        err.print(f"[yellow]warning:[/] {escape_markup(safe(w))}; nothing can match it", highlight=False,
                  soft_wrap=True, emoji=False)


def _filters(text, sender, participant, department, kind, conversation, since, until, external, has_attachment,
             attachment_name, ext, min_size, max_size, recalled, source, fold, literal, tz, limit=None, offset=0,
             consent=None):
    """The Query and the words of the request (for the access log and manifests)."""
    given = {"TEXT/--text": text, "--sender": sender, "--participant": participant, "--department": department,
             "--type": kind, "--conversation": conversation, "--since": since, "--until": until,
             "--attachment-name": attachment_name, "--ext": ext, "--min-size": min_size, "--max-size": max_size,
             "--source": source, "--consent": consent}
    for flag, value in given.items():
        if value is None:
            continue
        if not value.strip() and not (literal and flag == "TEXT/--text" and value):
            fail(f"{flag} is empty: leave it out to not filter on it")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            fail(f"{flag}: not valid UTF-8 (check the terminal's encoding)")
    if ext is not None:
        ext = ext.strip()
    q = _query(text, sender, kind, conversation, since, until, has_attachment, tz, limit, participant=participant,
               department=department, external=external, attachment_name=attachment_name, attachment_ext=ext,
               min_size=_size(min_size, "--min-size"), max_size=_size(max_size, "--max-size"),
               recalled=recalled, source=source, fold=fold, literal=literal, offset=offset, consent=consent)
    words = {"text": text, "sender": sender, "participant": participant, "department": department, "type": kind,
             "conversation": conversation,
             "since": since, "until": until, "external": external, "has_attachment": has_attachment or None,
             "attachment_name": attachment_name, "ext": ext, "min_size": min_size, "max_size": max_size,
             "recalled": recalled, "source": source, "fold": fold or None, "literal": literal or None,
             "consent": consent}
    return q, {k: v for k, v in words.items() if v is not None}


@app.command("search")
def search_cmd(
    text: Optional[str] = typer.Argument(None, help="Text to find: words typed together are one substring; "
                                                    "AND, OR, NOT, (...) and \"quotes\" combine them."),
    sender: Optional[str] = F_SENDER,
    participant: Optional[str] = F_PARTICIPANT,
    department: Optional[str] = F_DEPARTMENT,
    kind: Optional[str] = F_KIND,
    conversation: Optional[str] = F_CONVERSATION,
    since: Optional[str] = F_SINCE,
    until: Optional[str] = F_UNTIL,
    external: Optional[bool] = F_EXTERNAL,
    has_attachment: bool = F_HAS_ATTACHMENT,
    attachment_name: Optional[str] = F_ATT_NAME,
    ext: Optional[str] = F_EXT,
    min_size: Optional[str] = F_MIN_SIZE,
    max_size: Optional[str] = F_MAX_SIZE,
    recalled: Optional[bool] = F_RECALLED,
    source: Optional[str] = F_SOURCE,
    consent: Optional[str] = F_CONSENT,
    fold: bool = F_FOLD,
    literal: bool = F_LITERAL,
    limit: Optional[int] = typer.Option(None, "--limit", min=1, max=10**9, help="At most this many results (a page)."),
    offset: int = typer.Option(0, "--offset", min=0, max=10**12, help="Skip this many results first (the next page)."),
    around: Optional[str] = typer.Option(None, "--around", help="Show this message (msgid) in its conversation, "
                                                                "with --context messages before and after."),
    context: int = typer.Option(5, "--context", min=0, max=500, help="Messages each side for --around."),
    count_only: bool = typer.Option(False, "--count", help="Print only the number of matches."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Find messages: substring text search that never misses, plus filters."""
    from wxarchive.search.query import around as around_fn, count, highlights, search

    archive, settings = _open_archive(readonly=True)
    tz = settings.timezone
    try:
        if around is not None:
            given = [n for n, v in (("TEXT", text), ("--sender", sender), ("--participant", participant),
                                    ("--type", kind), ("--conversation", conversation), ("--since", since),
                                    ("--until", until), ("--count", count_only or None)) if v]
            if given:
                fail(f"--around shows one message in its conversation: it takes no {', '.join(given)}")
            rows = around_fn(archive.catalog.engine, around, context, tz, source)
            archive.access_log().record("search", query={"around": around, "context": context}, results=len(rows))
            for r in rows:
                if as_json:
                    print(json.dumps({**r, "hit": r["msgid"] == around}, ensure_ascii=False))
                else:
                    _print_message(r, mark=r["msgid"] == around)
            return
        q, words = _filters(text, sender, participant, department, kind, conversation, since, until, external, has_attachment,
                            attachment_name, ext, min_size, max_size, recalled, source, fold, literal, tz, limit,
                            offset, consent)
        if kind:
            from wxarchive.search.query import check_kind

            check_kind(archive.catalog.engine, kind)
        _warn_unknown_names(archive.catalog.engine, q)
        # the read is recorded before anything is shown; if it cannot be, nothing is shown
        if count_only or limit is None:
            found, page = count(archive.catalog.engine, q), None
        else:  # a page: counted beside reading it
            from wxarchive.search.query import count_and_page

            found, page = count_and_page(archive.catalog.engine, q, tz)
        shown = max(0, min(found - offset, limit) if limit else found - offset)
        extra = {"limit": limit, "offset": offset or None, "count_only": count_only or None}
        archive.access_log().record("search", query={**words, **{k: v for k, v in extra.items() if v is not None}},
                                    results=shown)
        if count_only:
            print(json.dumps({"count": found}) if as_json else found)
            return
        from wxarchive.export.conversations import Directory

        names = Directory(archive.catalog.engine)
        n = 0
        for r in page if page is not None else search(archive.catalog.engine, q, tz):
            n += 1
            spans = highlights(q, r["text"])
            r["sender_name"] = names.person(r["source"], r["sender"], r["sent_at_ms"]).display if r["sender"] else None
            if as_json:
                print(json.dumps({**r, "highlights": spans}, ensure_ascii=False))
            else:
                _print_message(r, spans)
    finally:
        archive.close()
    if not as_json:
        if n == 0 and offset and found:
            err.print(f"no message at --offset {offset}: there are {found}")
        else:
            err.print(f"{offset + 1}–{offset + n} of {found} message(s)" if (offset or n < found) else f"{n} message(s)")
        if n and offset + n < found:
            err.print(f"next page: --offset {offset + n}" + (f" --limit {limit}" if limit else ""))


def _print_message(r: dict, spans: list[tuple[int, int]] = (), mark: bool = False, names=None) -> None:
    """One message for a person: time, conversation, who (name, as the directory had it then, and
    id), kind, text with the hits highlighted, attachments."""
    from rich.text import Text

    atts = "".join(
        f"\n    [{a['kind']}] {a['file_name'] or ''} {a['size'] if a['size'] is not None else '?'} B {a['state']}"
        + (f": {a['reason']}" if a["reason"] else "")
        for a in r["attachments"]
    )
    recalled = " (recalled)" if r["recalled_by"] else ""
    who = r["sender"] or "-"
    name = r.get("sender_name")
    if name is None and names is not None and r["sender"]:
        name = names.person(r["source"], r["sender"], r.get("sent_at_ms")).display
    if name and name != r["sender"]:
        who = f"{name} ({r['sender']})"
    head = f"{'>> ' if mark else ''}{r['sent_at'] or 'time unknown'}  {r['conversation']}  {who}  " \
           f"[{r['kind']}]{recalled}  {r['msgid']}\n    "
    body = Text(safe(head), style="bold" if mark else "")
    shown = r["text"][:500]

    def piece(t: str) -> str:
        return safe(t).replace("\n", "\n    ")  # continuation lines indented like the first

    pos = 0
    for a, b in spans:
        if a >= len(shown):
            break
        body.append(piece(shown[pos:a]))
        body.append(piece(shown[a:min(b, len(shown))]), style="reverse")
        pos = min(b, len(shown))
    body.append(piece(shown[pos:] + ("…" if len(r["text"]) > 500 else "")) + safe(atts))
    out.print(body, highlight=False)


@app.command("show")
def show_cmd(conversation: str = typer.Argument(..., help="Conversation id (roomid, or 'a|b' for 1:1) or group name.")) -> None:
    """Print a conversation's transcript in time order."""
    from sqlalchemy import select

    from wxarchive.archive.catalog import schema as sc
    from wxarchive.export.conversations import Directory
    from wxarchive.search.query import Query, search

    if not conversation.strip():
        fail("give a conversation id or group name (see 'wxarchive conversations')")

    archive, settings = _open_archive(readonly=True)
    try:
        cv = sc.conversations
        with archive.catalog.engine.connect() as c:
            named = c.execute(select(cv.c.id).where(cv.c.title == conversation, cv.c.id != conversation)).all()
        if len(named) > 1:
            fail(f"{len(named)} conversations are named {conversation!r}: give one of their ids "
                 f"({', '.join(r[0] for r in named)})")
        rows = list(search(archive.catalog.engine, Query(conversation=conversation), settings.timezone))
        directory = Directory(archive.catalog.engine)
        archive.access_log().record("show", query={"conversation": conversation}, results=len(rows))
    finally:
        archive.close()
    if not rows:
        fail(f"no conversation {conversation!r} in the archive (see 'wxarchive conversations')")
    for r in rows:
        _print_message(r, names=directory)


# ---- directory ----------------------------------------------------------------------------


def _single_source(archive, source: str | None) -> str:
    from sqlalchemy import select

    from wxarchive.archive.catalog import schema as s

    if source:
        return source
    with archive.catalog.engine.connect() as c:
        found = sorted({r[0] for r in c.execute(select(s.participants.c.source).distinct())})
    if len(found) != 1:
        fail("give --source (the archive holds " + (", ".join(found) if found else "no source yet") + ")")
    return found[0]


@directory_app.command("sync")
def directory_sync(
    corp_id: Optional[str] = typer.Option(None, "--corp-id", help="The corp id (ww…) [default: config]."),
    secret_file: Optional[Path] = typer.Option(None, "--secret-file", help="Secret of an app with directory and "
                                                                           "customer-contact access (or env "
                                                                           "WXARCHIVE_WECOM_DIRECTORY_SECRET)."),
    proxy: Optional[str] = typer.Option(None, "--proxy", help="Proxy URL, e.g. http://10.0.0.1:3128."),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="Also trust this certificate (PEM)."),
) -> None:
    """Ask the WeCom APIs who every participant and group is (each answer journaled first)."""
    from wxarchive.capture.wecom.directory import DirectoryError, DirectoryOptions
    from wxarchive.ingest import sync_directory

    settings = cfg.load_settings(state.home) if state.home.exists() else cfg.Settings()
    w = settings.wecom
    corp = corp_id or w.get("corp_id")
    if not corp:
        fail("no corp id: pass --corp-id or set [wecom] corp_id in config.toml")
    secret = os.environ.get("WXARCHIVE_WECOM_DIRECTORY_SECRET", "")
    sf = secret_file or w.get("directory_secret_file")
    if sf:
        secret = cfg.read_secret_file(sf, "directory secret")
    if not secret:
        fail("no directory secret: pass --secret-file FILE or set WXARCHIVE_WECOM_DIRECTORY_SECRET")
    ca = None
    if ca_file is not None:
        try:
            ca = ca_file.read_bytes()
        except OSError as e:
            fail(f"--ca-file {ca_file}: cannot read ({e.strerror or e.__class__.__name__})")
    opts = DirectoryOptions(corp_id=corp, secret=secret, proxy=proxy or w.get("proxy", ""), ca_pem=ca)
    archive, _ = _open_archive()
    _setup_logging(state.home)
    try:
        res = sync_directory(archive, opts, f"wecom:{corp}")
        archive.access_log().record("directory.sync", query={"corp_id": corp}, results=res.answered)
    except DirectoryError as e:
        fail(str(e), 1)
    finally:
        archive.close()
    out.print(f"directory: {res.answered} of {res.asked} answers journaled ({res.not_found} not found)"
              + (f"; {len(res.errors)} failed: {res.errors[0]}" if res.errors else ""), highlight=False)
    if res.errors:
        raise typer.Exit(1)


@directory_app.command("import")
def directory_import(
    file: Path = typer.Argument(..., help="CSV from HR: id,name,mobile,email,department,organisation,position,"
                                          "kind,valid_from,valid_to (a header row; only id is required)."),
    source: Optional[str] = typer.Option(None, "--source", help="The source the ids belong to (e.g. wecom:ww…)."),
) -> None:
    """Import what the APIs do not give (mobile, e-mail, past names) from an HR export."""
    from wxarchive.capture.hr import HrImportError
    from wxarchive.ingest import import_hr

    try:
        data = file.read_bytes()
    except OSError as e:
        fail(f"{file}: cannot read ({e.strerror or e.__class__.__name__})")
    archive, settings = _open_archive()
    try:
        rows = import_hr(archive, data, _single_source(archive, source), file.name, settings.timezone)
        archive.access_log().record("directory.import", query={"file": str(file)}, results=rows.rows)
    except HrImportError as e:
        fail(str(e))
    finally:
        archive.close()
    for p in rows.problems[:20]:
        err.print(safe(f"{file}: {p} (row left out)"), highlight=False, markup=False)
    out.print(f"imported {rows.rows} row(s) for {len(rows.people)} person(s) from {file}"
              + (f"; {len(rows.problems)} row(s) left out" if rows.problems else ""), highlight=False)
    if rows.problems:
        raise typer.Exit(1)


@directory_app.command("list")
def directory_list(
    history: bool = typer.Option(False, "--history", help="Every stretch of time, not only what is current."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Everyone the archive knows: id, kind, name, mobile, e-mail, department, since when."""
    from sqlalchemy import select

    from wxarchive.archive.catalog import schema as s
    from wxarchive.model import iso_time

    archive, settings = _open_archive(readonly=True)
    try:
        h = s.people
        with archive.catalog.engine.connect() as c:
            q = select(h).order_by(h.c.source, h.c.person, h.c.origin, h.c.valid_from)
            if not history:
                q = q.where(h.c.valid_to.is_(None))
            rows = c.execute(q).mappings().all()
            known = {(r.source, r.id) for r in c.execute(select(s.participants.c.source, s.participants.c.id))}
        archive.access_log().record("directory", query={"history": history or None} if history else {},
                                    results=len(rows))
    finally:
        archive.close()
    for r in rows:
        d = {k: r[k] for k in ("source", "person", "origin", "kind", "name", "alias", "mobile", "email", "department",
                               "organisation", "position")}
        d["valid_from"], d["valid_to"] = iso_time(r["valid_from"], settings.timezone), iso_time(r["valid_to"],
                                                                                             settings.timezone)
        if as_json:
            print(json.dumps(d, ensure_ascii=False))
        else:
            span = f"{d['valid_from'] or '…'} – {d['valid_to'] or 'now'}"
            out.print(safe(f"{d['person']}  {d['name'] or '-'}  [{d['kind'] or '?'}, {d['origin']}]  "
                           f"{d['mobile'] or ''} {d['email'] or ''} {d['department'] or ''}  {span}"),
                      highlight=False, markup=False)
    if not as_json:
        err.print(f"{len(rows)} directory row(s); {len(known)} participant(s) in the archive")


@app.command("conversations")
def conversations_cmd(as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """Every conversation: id, name, kind, messages, first and last message time."""
    from sqlalchemy import select

    from wxarchive.archive.catalog import schema as s
    from wxarchive.model import iso_time

    archive, settings = _open_archive(readonly=True)
    try:
        from wxarchive.export.conversations import Directory

        cv = s.conversations
        with archive.catalog.engine.connect() as c:
            rows = c.execute(select(cv).order_by(cv.c.last_at.desc())).mappings().all()
        names = Directory(archive.catalog.engine)
        archive.access_log().record("conversations", results=len(rows))
    finally:
        archive.close()
    for r in rows:
        title = names.title(names.conversation(r["source"], r["id"], r["kind"])) if r["kind"] != "group" else r["title"]
        d = {"source": r["source"], "id": r["id"], "kind": r["kind"], "title": title,
             "messages": r["message_count"], "first": iso_time(r["first_at"], settings.timezone),
             "last": iso_time(r["last_at"], settings.timezone)}
        if as_json:
            print(json.dumps(d, ensure_ascii=False))
        else:
            out.print(safe(f"{d['id']}  {d['title'] or '(no name)'}  [{d['kind']}]  {d['messages']} message(s)  "
                           f"{d['first'] or '?'} – {d['last'] or '?'}"), highlight=False, markup=False)
    if not as_json:
        err.print(f"{len(rows)} conversation(s); 'wxarchive show ID' prints one")


@app.command("reindex")
def reindex_cmd() -> None:
    """Drop the catalog and rebuild it from the journal."""
    from wxarchive.ingest import reindex

    archive, _ = _open_archive(rebuilding=True)
    _setup_logging(state.home)
    try:
        n = reindex(archive)
        archive.record_admin_event("admin.reindex", {"entries": n})  # who rebuilt the catalog, when
    finally:
        archive.close()
    out.print(f"catalog rebuilt from {n} journal entries")


@app.command("verify")
def verify_cmd(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report."),
    against: Optional[Path] = typer.Option(None, "--against-checkpoint", help="An exported checkpoint (an auditor's copy) the archive must still extend."),
    no_blobs: bool = typer.Option(False, "--no-blobs", help="Skip re-reading media blobs."),
    no_catalog: bool = typer.Option(False, "--no-catalog", help="Skip checking the catalog against the journal."),
    deep: bool = typer.Option(False, "--deep", help="Also rebuild the catalog from the journal in a scratch file and "
                              "compare every row and both full-text indexes with it (minutes per million messages)."),
) -> None:
    """Re-read everything and check hashes, chain, signatures, blobs and catalog.

    Exit 0 intact, 1 tampered or damaged (the first problem named with its entry and
    offset), 2 could not run.
    """
    if deep and no_catalog:
        fail("--deep compares the catalog: it cannot go with --no-catalog")
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from wxarchive.archive.verify import CannotVerify, identify, verify_archive

    settings = cfg.load_settings(state.home) if state.home.exists() else cfg.Settings()
    try:
        archive_id, master = identify(state.home, settings.archive.get("master_key_file"))
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("verifying", total=None)
            report = verify_archive(state.home, master, archive_id, against=against, blobs=not no_blobs,
                                    catalog=not no_catalog,
                                    progress=lambda stage, n: bar.update(task, description=f"{stage} {n}"))
            if deep and report.ok:  # a journal that does not verify cannot vouch for a rebuild
                from wxarchive.deep_verify import DeepCheckError, deep_check

                try:
                    deep_check(state.home, master, report,
                               progress=lambda stage, n: bar.update(task, description=f"deep: {stage} {n}"))
                except DeepCheckError as e:
                    raise CannotVerify(str(e)) from None
            elif deep:
                report.notes.append("--deep skipped: fix the problems above first (the rebuild reads the journal)")
    except CannotVerify as e:
        fail(str(e), 2)
    from wxarchive.archive.audit import AccessLog, AuditError

    try:  # verify shows no content; a damaged access log must not hide its own report
        AccessLog(state.home, master, archive_id).record(
            "verify", query={**({"against_checkpoint": str(against)} if against else {}), **({"deep": True} if deep else {})},
            results=len(report.problems) + report.more_problems)
    except AuditError as e:
        err.print(f"[yellow]warning:[/] {e}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        out.print(f"journal: {report.entries} entries in {report.segments} segment{'' if report.segments == 1 else 's'}, head {report.head_serial} "
                  f"({report.head_hash[:16]}…); checkpoints {report.checkpoints}; blobs {report.blobs}; "
                  f"catalog messages checked {report.catalog_messages}"
                  + (f"; catalog compared with one rebuilt from the journal up to entry {report.deep_checked}"
                     if report.deep_checked is not None else ""), highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        if report.ok:
            out.print("[green]intact[/]" + (f": extends {against}" if against else ""))
        else:
            for p in report.problems:
                out.print(p.line(), highlight=False, markup=False, soft_wrap=True)
            if report.more_problems:
                out.print(f"... and {report.more_problems} more problem(s)")
            err.print(f"[bold red]NOT intact:[/] {len(report.problems) + report.more_problems} problem(s); "
                      f"first: {report.problems[0].line()}", highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


ADMIN_ACTIONS = {"admin.checkpoint", "admin.config.change", "admin.hold.create", "admin.hold.release", "admin.import",
                 "admin.journal.repair", "admin.keys.rotate", "admin.purge", "admin.reindex"}


@app.command("audit")
def audit_cmd(
    since: Optional[str] = typer.Option(None, "--since", help="From this date/time (inclusive)."),
    until: Optional[str] = typer.Option(None, "--until", help="Up to this date (inclusive) or time (exclusive)."),
    user: Optional[str] = typer.Option(None, "--user", help="Only this account (or on-behalf-of user)."),
    action: Optional[str] = typer.Option(None, "--action", help="Only this action: search, show, export, journal, status, verify, audit, directory, conversations, "
                                       "directory.sync, directory.import, hold.list, purge.plan, an admin.* action, or a "
                                       "prefix with * (admin.* for them all)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List the access audit log: who searched, viewed or exported what, and when."""
    from wxarchive.model import iso_time
    from wxarchive.search.query import parse_when

    actions = {"search", "show", "export", "status", "verify", "audit", "hold.list", "purge.plan", "directory",
               "directory.sync", "directory.import", "conversations", "journal", *ADMIN_ACTIONS}
    prefix = action[:-1] if action and action.endswith("*") else None  # admin.*, admin.hold.*
    if action and action not in actions and not (prefix and any(a.startswith(prefix) for a in actions)):
        fail(f"--action {action!r}: use one of {', '.join(sorted(actions))}, or a prefix with * (admin.* for every "
             "administrative action)")
    archive, settings = _open_archive(readonly=True)
    tz = settings.timezone
    try:
        log = archive.access_log()
        lo = parse_when(since, tz) if since else None
        hi = parse_when(until, tz, end=True) if until else None
        events = [ev for ev in log.events(since=lo, until=hi, who=user, action=None if prefix else action)
                  if prefix is None or ev.action.startswith(prefix)]
        log.record("audit", query={k: v for k, v in {"since": since, "until": until, "user": user,
                                                       "action": action}.items() if v},
                   results=len(events))
    finally:
        archive.close()
    for ev in events:
        d = ev.to_dict()
        d["at"] = iso_time(ev.at, tz)
        if as_json:
            print(json.dumps(d, ensure_ascii=False))
            continue
        who = ev.who + (f" for {ev.on_behalf_of}" if ev.on_behalf_of else "")
        q = " ".join(f"{k}={v!r}" for k, v in ev.query.items())
        files = f", {len(ev.files)} file(s)" if ev.files else ""
        out.print(safe(f"{d['at']}  #{ev.serial}  {who}  {ev.action}  {q}  -> "
                       f"{ev.results if ev.results is not None else '-'}{files}"),
                  highlight=False, markup=False, soft_wrap=True)
    if not as_json:
        err.print(f"{len(events)} event(s)")


@keys_app.command("rotate")
def keys_rotate_cmd() -> None:
    """Re-wrap every data key under a new master key (content is not re-encrypted).

    Resumable: after an interruption, run it again. The old key file is replaced by the new
    one at the end; back the new one up.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    archive, settings = _open_archive()
    _setup_logging(state.home)
    try:
        with Progress("re-wrapping keys", BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("rotate", total=None)
            result = archive.rotate_master_key(settings.archive.get("master_key_file"),
                                               lambda done, total: bar.update(task, completed=done, total=total))
    finally:
        archive.close()
    out.print(f"master key rotated: {result.old_key_id} -> {result.new_key_id} ({result.counts['rewrapped']} keys "
              f"re-wrapped, {result.counts['already']} already done); new key in {result.key_file}: back it up",
              highlight=False, soft_wrap=True)
    if result.retired_key_file:
        out.print(f"the old key is kept as {result.retired_key_file}: backups taken before now need it; destroy it "
                  "once they are re-taken", highlight=False, soft_wrap=True)


@keys_app.command("public")
def keys_public_cmd() -> None:
    """Print the archive's Ed25519 public key (PEM), for auditors who check checkpoints."""
    if not (state.home / "archive.json").exists():
        fail(f"no archive at {state.home} (pass --home or set WXARCHIVE_HOME)")
    path = state.home / "keys" / "signing.pub"
    if not path.exists():
        fail(f"{path}: no signing key yet (it is made by the first ingest)")
    from wxarchive.archive.checkpoints import CheckpointError, load_public_pem

    try:
        text = path.read_text(encoding="ascii")
        load_public_pem(text, str(path))
    except (OSError, UnicodeDecodeError, CheckpointError):
        fail(f"{path}: not the archive's public key (unreadable or altered); run 'wxarchive verify'", 1)
    print(text, end="")
    from wxarchive.archive.checkpoints import fingerprint

    err.print(f"fingerprint (SHA-256 of the raw key): {fingerprint(load_public_pem(text, str(path)))}", highlight=False)


# ---- retention --------------------------------------------------------------------------


@hold_app.command("create")
def hold_create_cmd(
    name: str = typer.Argument(..., help="A unique name, e.g. a matter number."),
    reason: str = typer.Option(..., "--reason", help="Why (matter, regulator request, ...)."),
    sender: Optional[str] = typer.Option(None, "--sender", help="Only messages from this person (id, name, "
                                                                "past name, e-mail or mobile, as in search)."),
    participant: Optional[str] = typer.Option(None, "--participant", help="Only messages this person sent or "
                                                                          "received (a custodian's hold)."),
    conversation: Optional[str] = typer.Option(None, "--conversation", help="Only this conversation (id or group name)."),
    since: Optional[str] = typer.Option(None, "--since", help="Only messages sent from this date/time."),
    until: Optional[str] = typer.Option(None, "--until", help="Only messages sent up to this date (inclusive)."),
    text: Optional[str] = typer.Option(None, "--text", help="Only messages containing this text."),
) -> None:
    """Place a legal hold (no filter: the whole archive)."""
    from wxarchive.archive.retention import count_held
    from wxarchive.search.query import Query, parse_when, unknown_names

    if not name.strip() or not reason.strip():
        fail("a hold needs a name and a reason (both non-empty)")
    for flag, value in (("--text", text), ("--sender", sender), ("--participant", participant),
                        ("--conversation", conversation)):
        if value is not None and not value.strip():
            fail(f"{flag} '': give what the held messages have, or leave the option out")

    archive, settings = _open_archive()
    try:
        tz = settings.timezone
        unknown = unknown_names(archive.catalog.engine, Query(sender=sender, participant=participant))
        if unknown:  # a typo here would hold nothing while it looks in force
            fail(f"{unknown[0]}: a hold on it would hold nothing (check the spelling, or 'wxarchive directory')")
        filters = {"sender": sender, "participant": participant, "conversation": conversation, "text": text,
                   "since": parse_when(since, tz) if since else None,
                   "until": parse_when(until, tz, end=True) if until else None}
        filters = {k: v for k, v in filters.items() if v is not None}
        if "since" in filters and "until" in filters and filters["since"] >= filters["until"]:
            fail(f"--since {since} is not before --until {until}: such a hold would hold nothing")
        con = archive.catalog.engine.raw_connection()
        try:
            if con.execute("SELECT 1 FROM holds WHERE name = ?", (name,)).fetchone():
                fail(f"a hold named {name!r} exists already (names stay unique, released ones too)")
            n = count_held(con, filters)
        finally:
            con.close()
        serial = archive.record_admin_event("admin.hold.create", {"name": name, "reason": reason, "filters": filters,
                                                                   "matching_now": n})
    finally:
        archive.close()
    out.print(f"hold {name!r} placed (journal entry {serial}): {n} message(s) match now; "
              "records captured later that match are held too", highlight=False)
    if n == 0:
        err.print("warning: no archived message matches this hold yet", highlight=False)


@hold_app.command("list")
def hold_list_cmd(as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """Holds, active and released, with how many messages each holds now."""
    from wxarchive.archive.retention import count_held
    from wxarchive.model import iso_time

    archive, settings = _open_archive(readonly=True)
    try:
        con = archive.catalog.engine.raw_connection()
        try:
            rows = []
            for name, reason, filters, by, at, rby, rat, rreason in con.execute(
                    "SELECT name, reason, filters, created_by, created_at, released_by, released_at, release_reason "
                    "FROM holds ORDER BY created_at"):
                f = json.loads(filters)
                rows.append({"name": name, "reason": reason, "filters": f, "created_by": by,
                             "created_at": iso_time(at, settings.timezone), "released_by": rby,
                             "released_at": iso_time(rat, settings.timezone), "release_reason": rreason,
                             "active": rat is None, "matching": count_held(con, f)})
        finally:
            con.close()
        archive.access_log().record("hold.list", results=len(rows))
    finally:
        archive.close()
    for r in rows:
        if as_json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            state = "active" if r["active"] else f"released {r['released_at']} by {r['released_by']}"
            # times in the configured zone, not epoch ms (until is stored exclusive: "before")
            words = {"since": "from", "until": "before"}
            shown = ", ".join(f"{words[k]} {iso_time(v, settings.timezone)}" if k in words else f"{k} {v!r}"
                              for k, v in r["filters"].items())
            out.print(f"{r['name']}  {state}  {r['matching']} message(s)  filters {shown or 'none (everything)'}"
                      f"  placed {r['created_at']} by {r['created_by']}: {r['reason']}", highlight=False, markup=False)
    if not as_json:
        err.print(f"{len(rows)} hold(s)")


@hold_app.command("release")
def hold_release_cmd(
    name: str = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why the hold ends."),
) -> None:
    """Release a legal hold (its records become subject to retention again)."""
    if not reason.strip():
        fail("--reason: say why the hold ends")
    archive, _ = _open_archive()
    try:
        con = archive.catalog.engine.raw_connection()
        try:
            row = con.execute("SELECT released_at FROM holds WHERE name = ?", (name,)).fetchone()
        finally:
            con.close()
        if row is None:
            fail(f"no hold named {name!r} (see 'wxarchive hold list')")
        if row[0] is not None:
            fail(f"hold {name!r} was released already")
        serial = archive.record_admin_event("admin.hold.release", {"name": name, "reason": reason})
    finally:
        archive.close()
    out.print(f"hold {name!r} released (journal entry {serial})", highlight=False)


@app.command("purge")
def purge_cmd(
    execute: bool = typer.Option(False, "--execute", help="Really purge (default: a dry run that changes nothing)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable plan and result."),
) -> None:
    """Purge records past retention and not under a legal hold, by destroying their keys.

    Without --execute, only shows what would be purged. With it, held records are copied
    forward first, a signed tombstone is journaled, then the data keys are destroyed.
    """
    from wxarchive.archive.retention import RetentionError, RetentionPolicy, execute_purge, plan_purge
    from wxarchive.ingest import apply

    archive, settings = _open_archive(readonly=not execute)
    try:
        try:
            policy = RetentionPolicy.from_settings(settings.archive)
        except RetentionError as e:
            fail(f"{settings.path or 'config.toml'}: {str(e).strip()}")
        plan = plan_purge(archive, policy)
        result = None
        if execute:
            _setup_logging(state.home)
            result = execute_purge(archive, plan, apply)
        else:
            archive.access_log().record("purge.plan", results=sum(s.records for s in plan.eligible))
    finally:
        archive.close()
    if as_json:
        d = plan.to_dict()
        if result is not None:
            d["result"] = result.__dict__
        print(json.dumps(d, ensure_ascii=False, indent=2))
        return
    for sp in plan.segments:
        mark = "PURGE" if sp.eligible else "keep "
        held = f", {len(sp.held)} held" if sp.held else ""
        out.print(f"{mark} {sp.segment}: entries {sp.first_serial}-{sp.last_serial}, {sp.records} record(s){held}; "
                  f"{sp.why}", highlight=False)
    d = plan.to_dict()
    if result is None:
        out.print(f"dry run: {d['records_to_purge']} record(s) in {d['eligible_segments']} segment(s) would be purged, "
                  f"{d['records_held']} kept under legal hold; nothing changed (add --execute)", highlight=False)
    else:
        out.print(f"purged {result.records_purged} record(s) in {len(result.segments)} segment(s), "
                  f"{result.records_retained} kept under legal hold, {result.blobs_deleted} blob(s) deleted; "
                  f"tombstones at journal entries {result.tombstones or '-'}", highlight=False)


@app.command("checkpoint")
def checkpoint_cmd(
    out_file: Optional[Path] = typer.Option(None, "--out", help="Also write a copy, with the public key, for an auditor."),
) -> None:
    """Sign the journal's head now (Ed25519) and optionally export the checkpoint."""
    if out_file is not None and (not out_file.parent.is_dir() or out_file.is_dir()):
        fail(f"--out {out_file}: {'is a directory' if out_file.is_dir() else 'its folder does not exist'}")
    if out_file is not None and out_file.exists():  # it may be the copy an auditor holds
        fail(f"--out {out_file}: already exists (an earlier checkpoint copy?); name a new file")
    archive, _ = _open_archive()
    try:
        cp = archive.checkpoint(force=True)
        if cp is not None:
            archive.record_admin_event("admin.checkpoint", {"serial": cp.serial, "head_hash": cp.head_hash,
                                                             "exported_to": str(out_file) if out_file else None})
    finally:
        archive.close()
    if cp is None:
        fail("the journal is empty: nothing to sign yet", 1)
    out.print(f"checkpoint: entry {cp.serial}, hash {cp.head_hash}, key {cp.key_fingerprint[:16]}…", highlight=False)
    if out_file is not None:
        from dataclasses import replace

        from wxarchive.archive.checkpoints import public_pem

        try:
            out_file.write_text(replace(cp, public_key=public_pem(archive.signer.public)).to_json(with_public_key=True))
        except OSError as e:
            fail(f"--out {out_file}: cannot write ({e.strerror or e.__class__.__name__})")
        out.print(f"exported to {out_file}: later, 'wxarchive verify --against-checkpoint {out_file}'",
                  highlight=False)


EXPORT_FORMATS = {
    "jsonl": "the lossless export of record (re-importable with 'wxarchive import')",
    "rsmf": "Relativity Short Message Format 2.0: one .rsmf per conversation (split at 10,000 events / 190 MB)",
    "eml": "RFC 5322 e-mails for enterprise archives, one per conversation-day (--per message: one per message)",
    "html": "self-contained HTML transcripts, one per conversation, media beside them",
    "csv": "messages.csv for spreadsheets (UTF-8 with BOM, formulas neutralised)",
}


@app.command("export")
def export_cmd(
    fmt: str = typer.Option(..., "--format", help="; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items())),
    out_dir: Path = typer.Option(..., "--out", help="A new or empty folder."),
    text: Optional[str] = typer.Option(None, "--text", help="Only messages with this text (as 'search' reads it)."),
    sender: Optional[str] = F_SENDER,
    participant: Optional[str] = F_PARTICIPANT,
    department: Optional[str] = F_DEPARTMENT,
    kind: Optional[str] = F_KIND,
    conversation: Optional[str] = F_CONVERSATION,
    since: Optional[str] = F_SINCE,
    until: Optional[str] = F_UNTIL,
    external: Optional[bool] = F_EXTERNAL,
    has_attachment: bool = F_HAS_ATTACHMENT,
    attachment_name: Optional[str] = F_ATT_NAME,
    ext: Optional[str] = F_EXT,
    min_size: Optional[str] = F_MIN_SIZE,
    max_size: Optional[str] = F_MAX_SIZE,
    recalled: Optional[bool] = F_RECALLED,
    source: Optional[str] = F_SOURCE,
    consent: Optional[str] = F_CONSENT,
    fold: bool = F_FOLD,
    literal: bool = F_LITERAL,
    per: str = typer.Option("day", "--per", help="eml only: one e-mail per conversation-'day' or per 'message'."),
) -> None:
    """Export a selection, with a signed hash manifest (manifest.json) for chain of custody."""
    if fmt not in EXPORT_FORMATS:
        fail(f"--format {fmt!r}: use one of {', '.join(EXPORT_FORMATS)}")
    if per not in ("day", "message"):
        fail(f"--per {per!r}: use 'day' or 'message'")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    from wxarchive.archive.audit import AuditError
    from wxarchive.export.manifest import ExportError

    archive, settings = _open_archive(readonly=True)
    tz = settings.timezone
    try:
        if kind:
            from wxarchive.search.query import check_kind

            check_kind(archive.catalog.engine, kind)
        q, query = _filters(text, sender, participant, department, kind, conversation, since, until, external, has_attachment,
                            attachment_name, ext, min_size, max_size, recalled, source, fold, literal, tz,
                            consent=consent)
        from wxarchive.search.query import count

        _warn_unknown_names(archive.catalog.engine, q)
        count(archive.catalog.engine, q)  # a query that cannot run fails here, before any folder is made
        archive.access_log().check()  # and an export that could not be recorded, before any file is written
        from wxarchive.deep_verify import check_selection

        _, altered = check_selection(archive, q)  # and one of rows that are not what the journal says
        if altered:
            fail(f"nothing exported: {'these' if len(altered) > 1 else 'this'} selected message(s) differ from the "
                 f"journal (the catalog was altered or is damaged): {'; '.join(altered)}"
                 f"{' …' if len(altered) >= 5 else ''}. Run 'wxarchive verify --deep' to see every difference, "
                 "then 'wxarchive reindex' to rebuild the catalog from the journal")
        existed = out_dir.exists()
        with Progress(f"exporting {fmt}", BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("export", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            try:
                if fmt == "jsonl":
                    from wxarchive.export.jsonl import export_jsonl

                    res = export_jsonl(archive, q, out_dir, query_text=query, tz=tz, progress=progress)
                    summary = (f"{res.messages} message(s) ({res.records} record(s), {res.entries} journal entries, "
                               f"{res.media} media file(s), {res.audit_events} audit event(s))")
                    messages, files = res.messages, res.files
                elif fmt == "rsmf":
                    from wxarchive.export.rsmf import export_rsmf

                    r = export_rsmf(archive, q, out_dir, query_text=query, tz=tz, progress=progress)
                    summary = (f"{r.messages} message(s) of {r.conversations} conversation(s) in {r.files} .rsmf "
                               f"file(s), {r.attachments} attachment file(s)"
                               + (f", {r.attachments_not_stored} attachment(s) listed but not stored"
                                  if r.attachments_not_stored else ""))
                    messages, files = r.messages, r.file_list
                elif fmt == "eml":
                    from wxarchive.export.eml import export_eml

                    r = export_eml(archive, q, out_dir, query_text=query, tz=tz, per=per, progress=progress)
                    summary = f"{r.messages} message(s) in {r.emls} .eml file(s), {r.attachments} attachment(s)"
                    messages, files = r.messages, r.file_list
                elif fmt == "html":
                    from wxarchive.export.html import export_html

                    r = export_html(archive, q, out_dir, query_text=query, tz=tz, progress=progress)
                    summary = f"{r.messages} message(s) of {r.conversations} conversation(s), {r.media} media file(s)"
                    messages, files = r.messages, r.file_list
                else:
                    from wxarchive.export.csv import export_csv

                    r = export_csv(archive, q, out_dir, query_text=query, tz=tz, progress=progress)
                    summary = f"{r.messages} message(s) as messages.csv"
                    messages, files = r.messages, r.file_list
            except ExportError as e:
                fail(str(e))
            except OSError as e:
                fail(f"--out {out_dir}: cannot write {e.filename or ''} ({e.strerror or e.__class__.__name__})")
        try:
            archive.access_log().record("export", query={**query, "format": fmt, "out": str(out_dir)},
                                        results=messages, files=files)
        except AuditError:
            _remove_export(out_dir, existed)  # fail closed: no unrecorded copy of the messages is left
            raise
    finally:
        archive.close()
    out.print(f"exported {summary} to {out_dir}; see manifest.json", highlight=False)


def _remove_export(out_dir: Path, existed: bool) -> None:
    """Delete what an export wrote (it writes only into a new or empty folder)."""
    import shutil

    if not existed:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for p in out_dir.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


@app.command("journal")
def journal_cmd(
    smtp: str = typer.Option(..., "--smtp", help="The journaling server, HOST:PORT."),
    to: list[str] = typer.Option(..., "--to", help="The journaling address (repeat for several)."),
    sender: str = typer.Option("wxarchive@localhost", "--from", help="Envelope sender."),
    no_tls: bool = typer.Option(False, "--no-tls", help="Send without STARTTLS (only to a relay on this host)."),
    ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="Also trust this CA certificate (PEM)."),
    user: Optional[str] = typer.Option(None, "--user", help="SMTP AUTH user (password: --password-file or "
                                                            "WXARCHIVE_SMTP_PASSWORD)."),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="File holding the SMTP password."),
    per: str = typer.Option("day", "--per", help="One e-mail per conversation-'day' or per 'message'."),
    conversation: Optional[str] = typer.Option(None, "--conversation", help="Only this conversation."),
    since: Optional[str] = typer.Option(None, "--since", help="Only messages from this date/time."),
    attempts: int = typer.Option(8, "--attempts", min=1, help="Tries per e-mail before giving up."),
) -> None:
    """Deliver archived messages as EML to an enterprise archive over SMTP, each exactly once
    (a ledger per target; re-runs send only what is new)."""
    import os

    from wxarchive.export.journaling import JournalingError, SmtpTarget, journal_smtp

    import re

    host, _, port = smtp.rpartition(":")
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        fail(f"--smtp {smtp!r}: give HOST:PORT, e.g. feeds.example.com:25")
    if per not in ("day", "message"):
        fail(f"--per {per!r}: use 'day' or 'message'")
    for flag, addrs in (("--to", to), ("--from", [sender])):
        for addr in addrs:
            # one bare addr-spec, as SMTP's RCPT TO / MAIL FROM take it (the library would send
            # whatever part of a malformed address it can parse, or fail only at the server)
            if not re.fullmatch(r"[^\s@<>()\[\],;:\\\"]+@[^\s@<>()\[\],;:\\\"]+", addr):
                fail(f"{flag} {addr!r}: not an e-mail address (give one bare address such as "
                     "journal@archive.example.com; repeat --to for several)")
    password = None
    if user:
        if password_file is not None:
            try:
                password = password_file.read_text().strip()
            except OSError as e:
                fail(f"--password-file {password_file}: cannot read ({e.strerror or e.__class__.__name__})")
        else:
            password = os.environ.get("WXARCHIVE_SMTP_PASSWORD")
        if not password:
            fail("--user given but no password: use --password-file or WXARCHIVE_SMTP_PASSWORD")
    if ca_file is not None and not ca_file.is_file():
        fail(f"--ca-file {ca_file}: no such file")
    target = SmtpTarget(host.strip("[]"), int(port), list(to), sender, tls=not no_tls,
                        ca_file=str(ca_file) if ca_file else None, user=user, password=password)
    archive, settings = _open_archive(readonly=True)
    tz = settings.timezone
    q = _query(None, None, None, conversation, since, None, False, tz)
    query = {k: v for k, v in {"conversation": conversation, "since": since}.items() if v is not None}
    try:
        from wxarchive.search.query import count

        # recorded before anything leaves the archive; if it cannot be, nothing is sent
        archive.access_log().record("journal", query={**query, "smtp": smtp, "to": list(to), "per": per},
                                    results=count(archive.catalog.engine, q))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress

        with Progress("journaling", BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("journal", total=None)
            try:
                res = journal_smtp(archive, q, target, tz=tz, per=per, attempts=attempts,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
            except JournalingError as e:
                fail(str(e), 1)
    finally:
        archive.close()
    out.print(f"delivered {res.delivered_messages} message(s) in {res.emls} e-mail(s) to {', '.join(to)} via {smtp}; "
              f"{res.already_delivered} already delivered before; {res.retries} retr{'y' if res.retries == 1 else 'ies'}",
              highlight=False)


@app.command("validate-rsmf")
def validate_rsmf_cmd(
    files: list[Path] = typer.Argument(..., help=".rsmf files, rsmf.zip files or rsmf_manifest.json files."),
    no_format_check: bool = typer.Option(False, "--no-format-check",
                                         help="Do not check formats (RFC 3339 times, e-mails), as Relativity does not."),
    as_json: bool = typer.Option(False, "--json", help="One JSON report per file."),
) -> None:
    """Check RSMF files as Relativity's validator does, plus the rules its schema leaves out.
    Exit 0: all Passed (or PassedWithWarnings); 1: a file Failed; 2: a file could not be read."""
    from wxarchive.export.rsmf_validate import CannotValidate, validate_file

    worst = 0
    for path in files:
        try:
            v = validate_file(path, format_check=not no_format_check)
        except CannotValidate as e:
            err.print(safe(f"error: {e}"), highlight=False, markup=False)
            worst = 2
            continue
        if as_json:
            print(json.dumps(v.to_dict(), ensure_ascii=False))
        else:
            out.print(safe(f"{path}: {v.result}"), highlight=False, markup=False)
            for f in v.findings:
                out.print(safe(f"  {f.line()}"), highlight=False, markup=False)
        if v.result == "Failed":
            worst = max(worst, 1)
    raise typer.Exit(worst)


@app.command("verify-export")
def verify_export_cmd(
    folder: Path = typer.Argument(..., help="A folder written by 'wxarchive export' (any format)."),
    expect_key: Optional[str] = typer.Option(None, "--expect-key", help="SHA-256 fingerprint of the exporting "
                                             "archive's public key, known out of band ('wxarchive keys public')."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result."),
) -> None:
    """Check an export as its recipient: the manifest's signature, and every file's SHA-256.

    Needs no archive. Exit 0 intact, 1 altered (or signed by another key than --expect-key),
    2 not an export.
    """
    from wxarchive.export.manifest import AlteredExport, ManifestError, check_export

    if not folder.is_dir():
        fail(f"{folder}: no such folder")
    try:
        m = check_export(folder, expect_key)
    except AlteredExport as e:
        if as_json:
            print(json.dumps({"ok": False, "problem": str(e)}, ensure_ascii=False))
        fail(str(e), 1)
    except ManifestError as e:
        fail(str(e))
    summary = {"ok": True, "format": m.get("format"), "archive_id": m.get("archive_id"),
               "signed_by": m.get("key_fingerprint"), "pinned": bool(expect_key), "exported_by": m.get("exported_by"),
               "on_behalf_of": m.get("on_behalf_of"), "exported_at": m.get("exported_at"), "query": m.get("query"),
               "counts": m.get("counts"), "files": len(m["files"])}
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    from wxarchive.model import iso_time

    at = m.get("exported_at")  # in the zone every command shows (WXARCHIVE_TZ, else Asia/Shanghai)
    when = iso_time(at, cfg.Settings().timezone) if isinstance(at, int) else "?"
    out.print(f"intact: {len(m['files'])} file(s) as listed, signed by key {str(m.get('key_fingerprint'))[:16]}… "
              f"({'the expected one' if expect_key else 'not pinned: pass --expect-key to check who signed'}); "
              f"{m.get('format')} export of archive {m.get('archive_id')} by {m.get('exported_by')} at {when}",
              highlight=False, markup=False, soft_wrap=True)


@app.command("import")
def import_cmd(
    folder: Path = typer.Argument(..., help="A folder written by 'export --format jsonl'."),
    expect_key: Optional[str] = typer.Option(None, "--expect-key", help="SHA-256 fingerprint of the exporting "
                                             "archive's public key, known out of band ('wxarchive keys public')."),
) -> None:
    """Re-import an export of record (into an empty archive, or one that lacks some of it).

    The manifest's signature and every file's SHA-256 are checked first; an altered export
    is refused (exit 1). Pass --expect-key to also pin who signed it.
    """
    from wxarchive.capture.jsonl import ImportError_, TamperedExport, open_export
    from wxarchive.ingest import import_export

    if not folder.is_dir():
        fail(f"{folder}: no such folder")

    def checked():  # the export is checked (again, inside the import) before any archive is made
        try:
            return open_export(folder, expect_key)
        except TamperedExport as e:
            fail(str(e), 1)
        except ImportError_ as e:
            fail(str(e))

    checked()
    archive, _ = _open_archive(create=True)
    _setup_logging(state.home)
    try:
        try:
            res = import_export(archive, folder, expect_fingerprint=expect_key)
        except TamperedExport as e:
            fail(str(e), 1)
        except ImportError_ as e:
            fail(str(e))
        archive.record_admin_event("admin.import", {
            "folder": str(folder.resolve()), "from_archive": res.archive_id, "signed_by": res.signed_by,
            "records": res.records, "messages": res.messages, "duplicates": res.duplicates,
            "state_entries": res.state, "problems": len(res.problems)})
    finally:
        archive.close()
    for p in res.problems[:20]:
        err.print(f"[yellow]warning:[/] {safe(p)}", highlight=False)
    out.print(f"export of archive {res.archive_id} signed by key {res.signed_by[:16]}… (verified)", highlight=False)
    out.print(f"imported {res.records} record(s): {res.messages} message(s), {res.quarantined} quarantined, "
              f"{res.duplicates} already present, {res.media} media file(s); directory, census and hold "
              f"entries: {res.state} new, {res.state_duplicates} already present"
              + (f"; {len(res.problems)} problem(s)" if res.problems else ""), highlight=False)
    if res.problems:
        raise typer.Exit(1)


@app.command("demo")
def demo_cmd(
    messages: int = typer.Option(20000, "--messages", "-n", min=50, help="Size of the simulated tenant."),
    tenant: Path = typer.Option(Path("demo-tenant"), "--tenant", help="Where to write the simulated tenant."),
    seed: int = typer.Option(7, "--seed"),
) -> None:
    """The whole job on a simulated tenant: simulate, serve, ingest via the SDK, status, search, check."""
    from wxarchive.demo import run_demo

    ok = run_demo(state.home, tenant, messages, seed, out, err, open_archive=lambda: _open_archive(create=True)[0])
    if not ok:
        raise typer.Exit(1)


def _click_exceptions():
    """The exceptions of the click that typer runs on (vendored by newer typer releases)."""
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions
    return exceptions


def _abort_exceptions(cx) -> tuple[type, ...]:
    """click's Abort, wherever this typer keeps it."""
    import typer.exceptions as tx

    return tuple({c for c in (getattr(cx, "Abort", None), getattr(tx, "Abort", None)) if isinstance(c, type)})


def main() -> None:
    import sqlite3

    from sqlalchemy.exc import DatabaseError

    db_errors = (DatabaseError, sqlite3.DatabaseError)
    try:
        errors = _user_errors()
    except ImportError as e:  # a broken install is reported, not hidden
        raise SystemExit(f"error: wxarchive is not installed completely ({e})")
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    for i, arg in enumerate(sys.argv[1:], 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the terminal's locale could not decode
            err.print(f"error: argument {i} is not valid UTF-8 (check the terminal's encoding)", highlight=False)
            sys.exit(2)
    cx = _click_exceptions()
    try:
        code = app(standalone_mode=False)  # usage errors come here, to be said in one line
        sys.exit(code if isinstance(code, int) else 0)
    except getattr(cx, "NoArgsIsHelpError", ()) as e:  # 'wxarchive hold': the help, as the group has it
        e.show()
        sys.exit(e.exit_code)
    except cx.ClickException as e:  # a misspelt option, a missing argument, a value of the wrong type
        where = getattr(getattr(e, "ctx", None), "command_path", None) or "wxarchive"
        msg = f"{e.format_message()} (see '{where} --help')"
        err.print(f"error: {safe(msg)}", highlight=False, markup=False, soft_wrap=True)
        _json_error(msg, 2)
        sys.exit(e.exit_code)
    except _abort_exceptions(cx):
        err.print("aborted")
        sys.exit(1)
    except db_errors as e:  # a catalog damaged under a command that trusted it
        msg = (f"the catalog cannot answer ({safe(str(getattr(e, 'orig', e)))}): run 'wxarchive verify "
               "--deep' to see what is wrong, and 'wxarchive reindex' to rebuild it from the journal")
        err.print(f"error: {msg}", highlight=False, markup=False, soft_wrap=True)
        _json_error(msg, 2)
        sys.exit(2)
    except (*errors, OSError) as e:  # OSError: a path the user gave that the system refuses (too long, a file for a folder…)
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(safe(str(e)))}", markup=True, highlight=False, soft_wrap=True,
                  emoji=False)
        _json_error(safe(str(e)), 2)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
