"""Settings: the environment wins, the repository's .env fills in, prod refuses dummies."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from analysis_server.config import HOME_DIR, Settings

REPO = Path(__file__).resolve().parents[2]


def test_settings_when_loaded_then_dotenv_is_the_repository_root_one() -> None:
    assert HOME_DIR == REPO
    assert Settings.model_config.get("env_file") == REPO / ".env"


def test_settings_when_env_var_set_then_it_wins_over_dotenv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://s3.example:1234")
    monkeypatch.setenv("ANALYSIS_MIN_SECONDS", "2.5")

    settings = Settings()

    assert settings.s3_endpoint_url == "http://s3.example:1234"
    assert settings.analysis_min_seconds == 2.5


def test_settings_when_defaults_then_limits_are_200_mb_and_10_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ANALYSIS_MAX_BYTES", "ANALYSIS_MAX_DURATION_SECONDS", "ANALYSIS_MIN_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANALYSIS_SHARED_SECRET", "s3cret")

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.analysis_max_bytes == 200 * 1024 * 1024
    assert settings.analysis_max_duration_seconds == 600
    assert settings.analysis_min_seconds == 0


def test_settings_when_prod_with_shipped_dummy_keys_then_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-dummy-key")

    with pytest.raises(ValidationError, match="aws_access_key_id"):
        Settings()


def test_settings_when_negative_min_seconds_then_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYSIS_MIN_SECONDS", "-1")

    with pytest.raises(ValidationError):
        Settings()


def test_settings_when_no_shared_secret_then_refused_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails closed: a server without a secret would answer anyone who can reach it.
    monkeypatch.delenv("ANALYSIS_SHARED_SECRET", raising=False)

    with pytest.raises(ValidationError, match="analysis_shared_secret"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_settings_when_prod_with_the_dotenv_shared_secret_then_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "prod")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREAL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "real")

    with pytest.raises(ValidationError, match="analysis_shared_secret"):
        Settings()  # .env's local-only secret


def test_settings_when_defaults_then_decodes_bounded_to_2_channels_48_khz_1_gb(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANALYSIS_SHARED_SECRET", "s3cret")

    limits = Settings(_env_file=None).decode_limits()  # type: ignore[call-arg]

    assert (limits.max_channels, limits.max_sample_rate) == (2, 48000)
    assert limits.tool.address_space_bytes == 1024 * 1024 * 1024
    assert limits.max_seconds == 600
