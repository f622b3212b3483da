"""Settings: the archive's ``config.toml`` plus the environment; where secrets come from.

Secrets (the WeCom archive secret, proxy credentials, key material) are only ever read
from files or environment variables, never from the config file itself nor from code:
a config file is something people paste into tickets.

``<home>/config.toml`` (every key optional)::

    [archive]
    timezone = "Asia/Shanghai"          # how times are shown; stored times are UTC
    master_key_file = "/etc/wxarchive/master.key"
    catalog_encryption = "none"         # or "sqlcipher" (chosen when the archive is created)
    retention_years = 7                 # how long records are kept from capture (purge)
    retention_by_source = { "wecom:ww0123456789abcdef" = 10 }

    [wecom]
    corp_id = "ww0123456789abcdef"
    secret_file = "/etc/wxarchive/wecom.secret"   # or env WXARCHIVE_WECOM_SECRET
    private_keys = { 1 = "/etc/wxarchive/v1.pem", 2 = "/etc/wxarchive/v2.pem" }
    proxy = "http://10.0.0.1:3128"
    proxy_auth_file = "/etc/wxarchive/proxy.auth"  # "user:pass"; or env WXARCHIVE_WECOM_PROXY_AUTH
    limit = 1000                         # records per GetChatData call (1..1000)
    timeout = 10                         # seconds per HTTP call
    sdk_lib = "/opt/wecom/libWeWorkFinanceSdk_C.so"  # the customer's own copy of the SDK
    workers = 2                          # decrypt processes (default: CPU count)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOME = "./wxarchive-data"
FORBIDDEN_INLINE = {"secret", "proxy_auth", "password", "private_key", "master_key"}


class ConfigError(Exception):
    """A user mistake in settings; the message names the file and the key."""


def resolve_home(home: str | os.PathLike | None) -> Path:
    return Path(home or os.environ.get("WXARCHIVE_HOME") or DEFAULT_HOME).expanduser()


@dataclass
class Settings:
    path: Path | None = None
    archive: dict[str, Any] = field(default_factory=dict)
    wecom: dict[str, Any] = field(default_factory=dict)

    @property
    def timezone(self) -> str:
        tz = os.environ.get("WXARCHIVE_TZ") or self.archive.get("timezone") or "Asia/Shanghai"
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(str(tz))
        except (ZoneInfoNotFoundError, ValueError):
            where = "WXARCHIVE_TZ" if os.environ.get("WXARCHIVE_TZ") else f"{self.path}: [archive] timezone"
            raise ConfigError(f"{where}: unknown time zone {tz!r} (use an IANA name such as Asia/Shanghai)") from None
        return str(tz)


def load_settings(home: Path) -> Settings:
    path = home / "config.toml"
    if not path.exists():
        return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    for section in ("archive", "wecom"):
        sec = data.get(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in sec.items():
            if (key.endswith("_file") or key in ("corp_id", "proxy", "sdk_lib", "timezone")) and not isinstance(value, str):
                raise ConfigError(f"{path}: [{section}] {key} must be a string, not {type(value).__name__}")
        bad = FORBIDDEN_INLINE & set(sec)
        if bad:
            raise ConfigError(
                f"{path}: [{section}] {sorted(bad)[0]} must not be written in the config file; "
                "give a *_file path or an environment variable instead"
            )
    return Settings(path, data.get("archive", {}), data.get("wecom", {}))


SECRET_FILE_MAX = 64 * 1024  # keys, secrets and passwords are small; more is the wrong file


def read_secret_file(path: str | os.PathLike, what: str) -> str:
    p = Path(path).expanduser()
    try:
        if p.exists() and not p.is_file():  # a FIFO with no writer would block for ever; a folder is a mistake
            raise ConfigError(f"{what}: {p} is not a regular file")
        with open(p, "rb") as f:
            raw = f.read(SECRET_FILE_MAX + 1)
        if len(raw) > SECRET_FILE_MAX:
            raise ConfigError(f"{what}: file {p} is larger than {SECRET_FILE_MAX // 1024} KiB: not a secret file")
        value = raw.decode("utf-8").lstrip("\ufeff").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what}: file {p} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: cannot read {p} ({e.__class__.__name__})") from None
    if not value:
        raise ConfigError(f"{what}: file {p} is empty")
    return value
