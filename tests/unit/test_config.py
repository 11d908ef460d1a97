"""Settings: a misspelled CRMBRIDGE_ name is an error with its file and line, never silently the default."""

from __future__ import annotations

from pathlib import Path

import pytest

from crmbridge.config import load_settings, unknown_settings
from crmbridge.errors import ConfigError


def test_unknown_names_in_env_file_and_environment_are_named_with_a_guess(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# CRMBRIDGE_COMMENTED=1\nCRMBRIDGE_CACHE_PATH=x.db\n\nexport CRMBRIDGE_INBOX_MAX_ATEMPTS=3\n"
                   "OTHER_TOOL=1\ncrmbridge_jobs_dir=jobs\nCRMBRIDGE_NOTHING_LIKE_IT=1\n", encoding="utf-8")
    found = unknown_settings(env, {"CRMBRIDGE_BITRIX24_APPLICATON_TOKEN": "x", "PATH": "/bin"})
    assert found == [
        f"{env}:4: CRMBRIDGE_INBOX_MAX_ATEMPTS is not a crmbridge setting — did you mean CRMBRIDGE_INBOX_MAX_ATTEMPTS?",
        f"{env}:7: CRMBRIDGE_NOTHING_LIKE_IT is not a crmbridge setting",
        "environment variable CRMBRIDGE_BITRIX24_APPLICATON_TOKEN is not a crmbridge setting — did you mean "
        "CRMBRIDGE_BITRIX24_APPLICATION_TOKEN?",
    ]
    assert unknown_settings(tmp_path / "missing.env", {}) == []


def test_load_settings_refuses_a_typo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CRMBRIDGE_READY_MAX_LAG_SECOND=30\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^\.env:1: CRMBRIDGE_READY_MAX_LAG_SECOND .* did you mean "
                                          r"CRMBRIDGE_READY_MAX_LAG_SECONDS\?"):
        load_settings()
    (tmp_path / ".env").write_text("CRMBRIDGE_READY_MAX_LAG_SECONDS=30\n", encoding="utf-8")
    assert load_settings().ready_max_lag_seconds == 30
