"""Configuration: a wrong or missing setting is one clear line naming the setting."""

from __future__ import annotations

import pytest

from engine.crypto import generate_master_key
from engine.errors import ConfigError
from engine.settings import load_settings

BASE = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "SIR_MASTER_KEY": generate_master_key(),
}


def test_defaults():
    settings = load_settings(BASE)
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.webhook_allow_private is False
    assert settings.operator_tokens == ()
    assert settings.sqlalchemy_url.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"DATABASE_URL": None}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": None}, "REDIS_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"SIR_MASTER_KEY": None}, "SIR_MASTER_KEY"),
        ({"SIR_MASTER_KEY": "too-short"}, "SIR_MASTER_KEY"),
        ({"SIR_PORT": "http"}, "SIR_PORT"),
        ({"SIR_PORT": "70000"}, "SIR_PORT"),
        ({"SIR_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "SIR_WEBHOOK_ALLOW_PRIVATE"),
        ({"SIR_OPERATOR_TOKENS": "short"}, "SIR_OPERATOR_TOKENS"),
        ({"SIR_TRUSTED_PROXIES": "not-an-ip"}, "SIR_TRUSTED_PROXIES"),
    ],
)
def test_bad_setting_names_itself_in_one_line(change, named):
    env = {**BASE, **change}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert message.startswith(named)
    assert "\n" not in message


def test_commands_that_need_only_the_database():
    settings = load_settings(
        {"DATABASE_URL": BASE["DATABASE_URL"]}, need_redis=False, need_master_key=False
    )
    assert settings.redis_url == ""


def test_master_key_accepts_hex_and_base64():
    assert len(load_settings({**BASE, "SIR_MASTER_KEY": "ab" * 32}).master_key) == 32
    assert len(load_settings(BASE).master_key) == 32


def test_trusted_proxies_and_flags():
    settings = load_settings(
        {
            **BASE,
            "SIR_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "SIR_WEBHOOK_ALLOW_PRIVATE": "true",
            "SIR_OPERATOR_TOKENS": "a" * 20 + "," + "b" * 20,
        }
    )
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32"]
    assert settings.webhook_allow_private is True
    assert len(settings.operator_tokens) == 2
