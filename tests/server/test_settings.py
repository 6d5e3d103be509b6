"""ServerSettings: defaults that work, MFQL_* environment variables, CLI flags over both, clear refusals."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
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
    assert (settings.max_batch_size, settings.max_queue_delay_us, settings.backend) == (256, 0, "onnx")
    assert settings.latency_target_ms is None and settings.default_deadline_ms is None
    assert settings.api_key_file is None and settings.provider_list is None


def environment_value(field, existing_file: Path) -> tuple[str, object]:
    """A valid value other than the default for a settings field: its MFQL_* text and the parsed value."""
    kind = field.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: the X
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is typing.Literal:
        choice = next(c for c in typing.get_args(kind) if c != field.default)
        return choice, choice
    if kind is bool:
        return str(not field.default).lower(), not field.default
    if kind is int:
        return str(field.default + 1), field.default + 1
    if kind is float:
        value = (field.default or 1.0) + 0.5
        return str(value), value
    if kind is Path:
        return str(existing_file), existing_file
    assert kind is str, f"no test value for a {field.annotation} setting"
    return "CPUExecutionProvider", "CPUExecutionProvider"


def test_every_option_reads_its_mfql_environment_variable(monkeypatch, tmp_path):
    existing_file = tmp_path / "keys"
    existing_file.write_text("k\n")
    expected = {}
    for name, field in ServerSettings.model_fields.items():
        text, value = environment_value(field, existing_file)
        assert value != field.default, name
        monkeypatch.setenv(f"MFQL_{name.upper()}", text)
        expected[name] = value
    settings = ServerSettings()
    assert {name: getattr(settings, name) for name in expected} == expected
    assert len(expected) == len(ServerSettings.model_fields) >= 22


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
