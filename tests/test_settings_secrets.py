"""The development-secret helper: generated once into var/, taken from the environment when set."""

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import settings as project_settings


@pytest.fixture
def var_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(project_settings, "VAR_DIR", tmp_path / "var")
    monkeypatch.delenv("CUSTODY_TEST_SECRET", raising=False)
    return tmp_path / "var"


def test_generates_once_and_persists(var_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project_settings, "DEBUG", True)
    values = iter(["first", "second"])

    first = project_settings.secret_from_env_or_var(
        "CUSTODY_TEST_SECRET", "test_secret", lambda: next(values)
    )
    again = project_settings.secret_from_env_or_var(
        "CUSTODY_TEST_SECRET", "test_secret", lambda: next(values)
    )

    assert first == again == "first"
    assert (var_dir / "test_secret").read_text() == "first\n"
    assert sorted(p.name for p in var_dir.iterdir()) == ["test_secret"]  # no temporary files left


def test_environment_wins_over_var_file(var_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project_settings, "DEBUG", True)
    monkeypatch.setenv("CUSTODY_TEST_SECRET", "from-env")

    value = project_settings.secret_from_env_or_var("CUSTODY_TEST_SECRET", "test_secret", lambda: "generated")

    assert value == "from-env"
    assert not var_dir.exists()


def test_production_refuses_to_generate(var_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(project_settings, "DEBUG", False)

    with pytest.raises(ImproperlyConfigured, match="CUSTODY_TEST_SECRET must be set"):
        project_settings.secret_from_env_or_var("CUSTODY_TEST_SECRET", "test_secret", lambda: "generated")
    assert not var_dir.exists()
