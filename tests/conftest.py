"""Shared fixtures: every test gets its own master key outside the archive home."""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture(autouse=True)
def _master_key(tmp_path_factory, monkeypatch):
    keydir = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(keydir))
    monkeypatch.delenv("WXARCHIVE_MASTER_KEY", raising=False)
    monkeypatch.delenv("WXARCHIVE_MASTER_KEY_FILE", raising=False)
    monkeypatch.delenv("WXARCHIVE_HOME", raising=False)
    monkeypatch.delenv("WXARCHIVE_WECOM_SECRET", raising=False)
    yield


@pytest.fixture
def master():
    from wxarchive.archive.keys import LocalMasterKey

    return LocalMasterKey(secrets.token_bytes(32), "test")
