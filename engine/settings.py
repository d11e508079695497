"""Configuration, read once from the environment.

A wrong or missing setting raises `ConfigError` with one line that names the setting; the CLI
prints that line and exits, so a misconfigured process never half-starts.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from engine.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    master_key: bytes
    operator_tokens: tuple[str, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    webhook_allow_private: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default_factory=tuple
    )
    log_level: str = "INFO"
    # Donations (engine.donations, engine.payment_providers): see the README's configuration.
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    provider_secrets: tuple[tuple[str, str], ...] = ()
    public_url: str = ""
    everyorg_webhook_token: str = ""

    @property
    def sqlalchemy_url(self) -> str:
        """The asyncpg dialect URL SQLAlchemy wants, from a plain postgresql:// URL."""
        return to_sqlalchemy_url(self.database_url)


def to_sqlalchemy_url(database_url: str) -> str:
    scheme, _, rest = database_url.partition("://")
    return f"postgresql+asyncpg://{rest}" if scheme in {"postgres", "postgresql"} else database_url


def parse_master_key(text: str, name: str = "SIR_MASTER_KEY") -> bytes:
    """The master key is 32 bytes, written as url-safe base64 (a Fernet key) or 64 hex."""
    text = text.strip()
    raw: bytes | None = None
    if len(text) == 64:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.urlsafe_b64decode(text.encode())
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(f"{name} must be 32 bytes as url-safe base64 or 64 hex characters")
    return raw


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _url(env: Mapping[str, str], name: str, schemes: set[str]) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is not set (expected a {'/'.join(sorted(schemes))} URL)")
    if urlsplit(value).scheme not in schemes:
        raise ConfigError(f"{name} must be a {'/'.join(sorted(schemes))}:// URL, got {value!r}")
    return value


def load_settings(
    env: Mapping[str, str] | None = None, *, need_redis: bool = True, need_master_key: bool = True
) -> Settings:
    """Build `Settings` from `env` (default: the process environment).

    Commands that never touch Redis or secrets (`migrate`, `ledger verify`) pass
    `need_redis=False` / `need_master_key=False`, so they run with only DATABASE_URL set.
    Raises ConfigError naming the first wrong or missing setting.
    """
    env = os.environ if env is None else env
    database_url = _url(env, "DATABASE_URL", {"postgresql", "postgres"})
    redis_url = ""
    if need_redis or env.get("REDIS_URL"):
        redis_url = _url(env, "REDIS_URL", {"redis", "rediss", "unix", "amqp"})
    master = env.get("SIR_MASTER_KEY", "").strip()
    if need_master_key and not master:
        raise ConfigError("SIR_MASTER_KEY is not set (32 bytes, url-safe base64)")
    master_key = parse_master_key(master) if master else b""
    tokens = tuple(t.strip() for t in env.get("SIR_OPERATOR_TOKENS", "").split(",") if t.strip())
    for token in tokens:
        if len(token) < 16:
            raise ConfigError("SIR_OPERATOR_TOKENS: every token must be at least 16 characters")
    port_text = env.get("SIR_PORT", str(DEFAULT_PORT)).strip()
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"SIR_PORT must be a port number 1-65535, got {port_text!r}")
    proxies = []
    for item in env.get("SIR_TRUSTED_PROXIES", "").split(","):
        if item.strip():
            try:
                proxies.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as exc:
                raise ConfigError(
                    f"SIR_TRUSTED_PROXIES: {item.strip()!r} is not an IP or CIDR"
                ) from exc
    level = env.get("SIR_LOG_LEVEL", "INFO").strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"SIR_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    donation_settings = _donation_settings(env)
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        master_key=master_key,
        operator_tokens=tokens,
        host=env.get("SIR_HOST", DEFAULT_HOST).strip() or DEFAULT_HOST,
        port=int(port_text),
        webhook_allow_private=_bool(env, "SIR_WEBHOOK_ALLOW_PRIVATE", False),
        trusted_proxies=tuple(proxies),
        log_level=level,
        **donation_settings,
    )


def _donation_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """SIR_STRIPE_*, SIR_PROVIDER_SECRETS, SIR_PUBLIC_URL, SIR_EVERYORG_WEBHOOK_TOKEN."""
    stripe_key = env.get("SIR_STRIPE_SECRET_KEY", "").strip()
    if stripe_key and not stripe_key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        raise ConfigError("SIR_STRIPE_SECRET_KEY must be a Stripe secret key (sk_test_/sk_live_)")
    webhook_secret = env.get("SIR_STRIPE_WEBHOOK_SECRET", "").strip()
    if stripe_key and not webhook_secret.startswith("whsec_"):
        raise ConfigError(
            "SIR_STRIPE_WEBHOOK_SECRET (whsec_...) is needed with SIR_STRIPE_SECRET_KEY"
        )
    secrets: list[tuple[str, str]] = []
    for item in env.get("SIR_PROVIDER_SECRETS", "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.strip().partition("=")
        if not sep or name.strip() not in {"every.org", "test"} or len(value.strip()) < 32:
            raise ConfigError(
                "SIR_PROVIDER_SECRETS: comma-separated every.org=SECRET / test=SECRET, "
                "each secret at least 32 characters"
            )
        secrets.append((name.strip(), value.strip()))
    public_url = env.get("SIR_PUBLIC_URL", "").strip().rstrip("/")
    if public_url and urlsplit(public_url).scheme not in {"http", "https"}:
        raise ConfigError(f"SIR_PUBLIC_URL must be an http(s):// URL, got {public_url!r}")
    api_base = env.get("SIR_STRIPE_API_BASE", "").strip().rstrip("/")
    if api_base and urlsplit(api_base).scheme not in {"http", "https"}:
        raise ConfigError(f"SIR_STRIPE_API_BASE must be an http(s):// URL, got {api_base!r}")
    return {
        "stripe_secret_key": stripe_key,
        "stripe_webhook_secret": webhook_secret,
        "stripe_api_base": api_base,
        "provider_secrets": tuple(secrets),
        "public_url": public_url,
        "everyorg_webhook_token": env.get("SIR_EVERYORG_WEBHOOK_TOKEN", "").strip(),
    }
