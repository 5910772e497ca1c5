"""Settings from the environment (pure: a dict stands in for os.environ)."""

from __future__ import annotations

import pytest

from callstream.shared.errors import ConfigError
from callstream.shared.settings import DEFAULT_REDIS_URL, Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == DEFAULT_REDIS_URL
    assert settings.keys.calls == "cs:calls"
    assert not settings.auth.enabled


def test_environment_overrides_defaults() -> None:
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "CS_PREFIX": "x",
            "CS_FLUSH_INTERVAL_MS": "0.5",
            "CS_IN_STREAM_MAXLEN": "10",
            "CS_LOG_LEVEL": "debug",
            "CS_MAX_BACKLOG_BYTES": "1000",
            "CS_WORKER_MAX_ATTEMPTS": "2",
        }
    )
    assert settings.redis_url == "redis://r:1/2"
    assert settings.keys.call_in("c") == "x:call:c:in"
    assert settings.flush_interval_ms == 0.5
    assert settings.in_stream_maxlen == 10
    assert settings.log_level == "DEBUG"
    assert settings.max_backlog_bytes == 1000
    assert settings.worker_max_attempts == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CS_IN_STREAM_MAXLEN": "many"}, "CS_IN_STREAM_MAXLEN must be an integer, got 'many'"),
        ({"CS_CALL_TTL_S": "-5"}, "CS_CALL_TTL_S must be positive, got -5"),
        ({"CS_AUTH_JWKS_FILE": "/k.json"}, "needs CS_AUTH_ISSUER and CS_AUTH_AUDIENCE"),
        ({"CS_AUTH_JWKS_FILE": "/k", "CS_AUTH_JWKS_URL": "http://k"}, "not both"),
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_auth_is_enabled_by_a_key_source() -> None:
    settings = Settings.from_env(
        {"CS_AUTH_JWKS_FILE": "/k.json", "CS_AUTH_ISSUER": "iss", "CS_AUTH_AUDIENCE": "aud"}
    )
    assert settings.auth.enabled
    assert settings.auth.issuer == "iss"
