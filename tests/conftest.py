"""Shared fixtures.

The whole session gets one private config directory (so archives' master keys are
created outside every archive home and never in the developer's own ~/.config), a
simulated tenant, and one archive ingested from it through the official SDK, which
read-only tests share.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

TENANT_MESSAGES = 400
TENANT_SEED = 11


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    saved = dict(os.environ)
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    for var in ("WXARCHIVE_MASTER_KEY", "WXARCHIVE_MASTER_KEY_FILE", "WXARCHIVE_HOME",
                "WXARCHIVE_WECOM_SECRET", "WXARCHIVE_TZ", "https_proxy", "HTTPS_PROXY"):
        os.environ.pop(var, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def master():
    from wxarchive.archive.keys import LocalMasterKey

    return LocalMasterKey(secrets.token_bytes(32), "test")


@pytest.fixture(scope="session")
def tenant(tmp_path_factory) -> Path:
    from wxarchive.simulate.tenant import generate_tenant

    d = tmp_path_factory.mktemp("tenant")
    generate_tenant(d, messages=TENANT_MESSAGES, seed=TENANT_SEED)
    return d


def tenant_options(tenant: Path, proxy: str, **kw):
    from wxarchive.ingest import WeComOptions

    info = json.loads((tenant / "tenant.json").read_text())
    keys = {int(p.stem.split("_v")[1]): p.read_bytes() for p in (tenant / "keys").glob("private_v*.pem")}
    base = dict(corp_id=info["corp_id"], secret=(tenant / "secret").read_text().strip(), private_keys=keys,
                proxy=proxy, limit=100, workers=2, retry_base=0.05)
    base.update(kw)
    return WeComOptions(**base)


@pytest.fixture(scope="session")
def ingested(tenant, tmp_path_factory) -> Path:
    """An archive home holding the session tenant, ingested once (treat as read-only)."""
    from wxarchive.archive.archive import Archive
    from wxarchive.ingest import WeComCapture
    from wxarchive.simulate.server import serve

    home = tmp_path_factory.mktemp("ingested") / "home"
    with serve(tenant) as sim, Archive.open(home, create=True) as ar:
        result = WeComCapture(ar, tenant_options(tenant, sim.proxy_url)).run()
    assert result.status == "ok", result.error
    return home


def answer_messages(tenant: Path) -> list[dict]:
    return [json.loads(line) for line in (tenant / "answer" / "messages.jsonl").read_text().splitlines() if line]


def answer_media(tenant: Path) -> list[dict]:
    return [json.loads(line) for line in (tenant / "answer" / "media.jsonl").read_text().splitlines() if line]


def copy_archive(src: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of an archive home at ``dest / "home"`` with its own copy of the master key file
    at ``dest / "master.key"`` (copies of a home share one default key path: a test that
    rotates or destroys keys must point WXARCHIVE_MASTER_KEY_FILE at its own)."""
    import shutil

    home = dest / "home"
    shutil.copytree(src, home)
    archive_id = json.loads((home / "archive.json").read_text())["archive_id"]
    key = dest / "master.key"
    shutil.copy(Path(os.environ["XDG_CONFIG_HOME"]) / "wxarchive" / "keys" / f"{archive_id}.key", key)
    key.chmod(0o600)
    return home, key


@pytest.fixture(scope="session")
def segmented(tenant, tmp_path_factory) -> Path:
    """The session tenant ingested with small journal segments (96 KiB: several of them), for
    tests of what works per segment (tamper, purge, crash). Treat as read-only: copy it."""
    from wxarchive.archive import journal as jmod
    from wxarchive.archive.archive import Archive
    from wxarchive.ingest import WeComCapture
    from wxarchive.simulate.server import serve

    home = tmp_path_factory.mktemp("segmented") / "home"
    saved = jmod.SEGMENT_BYTES
    jmod.SEGMENT_BYTES = 96 * 1024
    try:
        with serve(tenant) as sim, Archive.open(home, create=True) as ar:
            result = WeComCapture(ar, tenant_options(tenant, sim.proxy_url)).run()
        assert result.status == "ok", result.error
    finally:
        jmod.SEGMENT_BYTES = saved
    return home
