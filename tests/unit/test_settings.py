from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.settings import SETTINGS, FailPolicy, LogFormat, LogLevel, Settings, parse_address


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings.defaults()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.redis_url is None
    assert settings.embedded_redis
    assert settings.hash_secret_file is None
    assert settings.fail_policy is FailPolicy.WARN
    assert settings.log_format is LogFormat.JSON
    assert settings.rules_dir == Path("rules")
    assert settings.data_dir == Path("var")
    assert settings.metrics_listen == "127.0.0.1:9464"
    assert settings.log_level is LogLevel.INFO
    assert settings.grace_seconds == 5.0


def test_every_setting_reads_its_variable() -> None:
    settings = Settings.from_env(
        {
            "RISKGATE_LISTEN": "[::1]:6000",
            "RISKGATE_REDIS_URL": "redis://10.0.0.5:6379/2",
            "RISKGATE_RULES_DIR": "/etc/riskgate/rules",
            "RISKGATE_DATA_DIR": "/var/lib/riskgate",
            "RISKGATE_METRICS_LISTEN": "off",
            "RISKGATE_LOG_LEVEL": "debug",
            "RISKGATE_LOG_FORMAT": "text",
            "RISKGATE_GRACE_SECONDS": "2.5",
            "RISKGATE_MAX_FUTURE_SKEW_SECONDS": "60",
            "RISKGATE_MAX_EVENT_AGE_SECONDS": "3600",
            "UNRELATED": "ignored",
        }
    )
    assert settings.listen == "[::1]:6000"
    assert not settings.embedded_redis and settings.redis_url == "redis://10.0.0.5:6379/2"
    assert settings.metrics_listen == ""
    assert settings.log_level is LogLevel.DEBUG
    assert settings.log_format is LogFormat.TEXT
    assert settings.grace_seconds == 2.5
    assert settings.max_event_age_seconds == 3600


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RISKGATE_LISTN": "x"}, "unknown setting RISKGATE_LISTN, did you mean RISKGATE_LISTEN?"),
        ({"RISKGATE_LISTEN": "50051"}, "RISKGATE_LISTEN='50051': expected host:port"),
        ({"RISKGATE_LISTEN": "127.0.0.1:70000"}, "port must be 1-65535"),
        ({"RISKGATE_REDIS_URL": "localhost:6379"}, "expected a redis://, rediss:// or unix:// URL"),
        ({"RISKGATE_GRACE_SECONDS": "-1"}, "RISKGATE_GRACE_SECONDS='-1': must be greater than 0"),
        ({"RISKGATE_GRACE_SECONDS": "soon"}, "expected a number"),
        ({"RISKGATE_LOG_LEVEL": "loud"}, "expected DEBUG, INFO, WARNING, ERROR or CRITICAL"),
        ({"RISKGATE_RULES_DIR": ""}, "RISKGATE_RULES_DIR: must not be empty"),
    ],
)
def test_bad_settings_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        Settings.from_env(env)


def test_ipv6_address_parses() -> None:
    assert parse_address("[::1]:50051", "X") == ("::1", 50051)


def test_every_setting_is_documented() -> None:
    assert all(doc.help and doc.env.startswith("RISKGATE_") for doc in SETTINGS.values())


def test_hash_secret_lives_with_embedded_data_by_default() -> None:
    assert Settings.from_env({"RISKGATE_DATA_DIR": "/d"}).hash_secret_path() == Path("/d/hash-secret")


def test_external_redis_needs_a_shared_hash_secret() -> None:
    settings = Settings.from_env({"RISKGATE_REDIS_URL": "redis://10.0.0.5:6379/0"})
    with pytest.raises(ConfigError, match="RISKGATE_HASH_SECRET_FILE is required with RISKGATE_REDIS_URL"):
        settings.hash_secret_path()
    shared = Settings.from_env({"RISKGATE_REDIS_URL": "redis://h:1/0", "RISKGATE_HASH_SECRET_FILE": "/run/s"})
    assert shared.hash_secret_path() == Path("/run/s")
