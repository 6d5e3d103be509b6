"""ServerSettings: defaults that work, MFQL_* environment variables, CLI flags over both, clear refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser, load_settings
from server.repository import RepositoryMissing, require_repository
from server.settings import EMBEDDED_REPOSITORY, ServerSettings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("MFQL_"):
            monkeypatch.delenv(key)


def test_defaults_serve_the_embedded_repository_on_localhost():
    settings = ServerSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.repository_path == EMBEDDED_REPOSITORY == ROOT / "server" / "default_model"
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.backend) == (256, 500, "onnx")
    assert settings.api_key_file is None and settings.provider_list is None


def test_every_option_reads_its_mfql_environment_variable(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    values = {
        "MFQL_HOST": "0.0.0.0",
        "MFQL_PORT": "9001",
        "MFQL_MODEL_REPOSITORY": str(tmp_path),
        "MFQL_API_KEY_FILE": str(keys),
        "MFQL_MAX_BATCH_SIZE": "64",
        "MFQL_MAX_QUEUE_DELAY_US": "250",
        "MFQL_MAX_QUEUE_SIZE": "100",
        "MFQL_INTRA_OP_THREADS": "2",
        "MFQL_PROVIDERS": "CPUExecutionProvider",
        "MFQL_BACKEND": "torchscript",
        "MFQL_LOG_LEVEL": "DEBUG",
        "MFQL_REPOSITORY_POLL_S": "0.5",
        "MFQL_DEFAULT_DEADLINE_MS": "20",
        "MFQL_ALLOW_SPINNING": "true",
        "MFQL_DEFAULT_MODEL": "cube",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = ServerSettings()
    assert (settings.host, settings.port, settings.model_repository) == ("0.0.0.0", 9001, tmp_path)
    assert (settings.max_batch_size, settings.max_queue_delay_s, settings.max_queue_size) == (
        64,
        0.00025,
        100,
    )
    assert settings.provider_list == ["CPUExecutionProvider"] and settings.backend == "torchscript"
    assert (settings.log_level, settings.repository_poll_s, settings.default_deadline_ms) == (
        "debug",
        0.5,
        20.0,
    )
    assert settings.allow_spinning is True and settings.default_model == "cube"


def test_cli_flags_override_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("MFQL_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("MFQL_PORT", "9001")
    settings = load_settings(
        ["--max-batch-size", "8", "--model-repository", str(tmp_path), "--allow-spinning"]
    )
    assert (settings.max_batch_size, settings.port, settings.allow_spinning) == (8, 9001, True)


def test_cli_has_a_flag_for_every_setting():
    flags = {a.dest for a in build_parser()._actions} - {"help"}
    assert flags == set(ServerSettings.model_fields)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-batch-size", "0"], "max_batch_size: Input should be greater than or equal to 1"),
        (["--port", "http"], "port: Input should be a valid integer"),
        (["--api-key-file", "/no/such/file"], "api_key_file /no/such/file does not exist"),
        (["--backend", "tensorflow"], "invalid choice: 'tensorflow'"),
    ],
)
def test_bad_values_exit_with_a_message_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        load_settings(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_value_is_refused(monkeypatch):
    monkeypatch.setenv("MFQL_MAX_QUEUE_DELAY_US", "-1")
    with pytest.raises(ValueError, match="max_queue_delay_us"):
        ServerSettings()


def test_missing_embedded_model_is_a_clear_startup_error(monkeypatch, tmp_path):
    monkeypatch.setattr("server.settings.EMBEDDED_REPOSITORY", tmp_path / "default_model")
    with pytest.raises(RepositoryMissing, match=r"embedded default model is missing: expected a bundle"):
        require_repository(ServerSettings())
    with pytest.raises(RepositoryMissing, match="is not a directory"):
        require_repository(ServerSettings(model_repository=tmp_path / "nowhere"))


def test_mfql_serve_exits_2_with_one_line_when_the_repository_is_missing(tmp_path):
    command = [sys.executable, "-m", "server.cli", "--model-repository", str(tmp_path / "nowhere")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert f"mfql-serve: model repository {tmp_path / 'nowhere'} is not a directory" in result.stderr
