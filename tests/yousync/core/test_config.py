"""The API's and worker's settings: prod refuses the local dummies `.env` ships."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from yousync.core.config import Settings

PROD = {
    "ENVIRONMENT": "prod",
    "AWS_ACCESS_KEY_ID": "AKIAREAL",
    "AWS_SECRET_ACCESS_KEY": "real-secret",
    "FLOWER_BASIC_AUTH": "ops:real-password",
    "ANALYSIS_SHARED_SECRET": "a-real-shared-secret",
}


def prod(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> Settings:
    for name, value in {**PROD, **overrides}.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_settings_when_prod_with_real_values_then_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert prod(monkeypatch).analysis_shared_secret == "a-real-shared-secret"


@pytest.mark.parametrize("secret", ["", "local-only-analysis-secret"], ids=["empty", "dotenv"])
def test_settings_when_prod_without_a_real_analysis_secret_then_refused(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    with pytest.raises(ValidationError, match="analysis_shared_secret"):
        prod(monkeypatch, ANALYSIS_SHARED_SECRET=secret)


def test_settings_when_dev_then_dotenv_secret_and_the_analysis_servers_duration_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ANALYSIS_SHARED_SECRET", "MAX_AUDIO_DURATION_SECONDS", "ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.analysis_shared_secret == "local-only-analysis-secret"
    assert settings.max_audio_duration_seconds == 600
    assert settings.ffmpeg_max_memory_mb == 1024
