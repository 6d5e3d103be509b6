"""The README quickstart's curl calls, sent to a real `mfql-serve` on the embedded models, answer
as the README shows: the same action, Q-value, model, version, K and action horizon."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import httpx
import pytest

from server.settings import EMBEDDED_REPOSITORY
from tests.clients.live_server import running_server

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
# A curl block followed by the JSON block it answers with.
CALL = re.compile(r"```bash\n(curl [^`]*?)```\n```json\n(.*?)```", flags=re.DOTALL)


def quickstart_calls() -> list[tuple[str, dict, dict]]:
    calls = []
    for command, answer in CALL.findall(QUICKSTART):
        command = command.replace("\\\n", " ")
        path = re.search(r"localhost:8000(/\S+)", command).group(1)
        body = re.search(r"-d '(.*?)'", command, flags=re.DOTALL).group(1)
        calls.append((path, json.loads(body), json.loads(answer)))
    return calls


CALLS = quickstart_calls()


def test_the_quickstart_calls_each_embedded_model():
    embedded = sorted(path.parent.parent.name for path in EMBEDDED_REPOSITORY.glob("*/*/metadata.json"))
    assert sorted(answer["model"] for _, _, answer in CALLS) == embedded


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    repository = tmp_path_factory.mktemp("quickstart") / "repository"  # the server's log goes beside it
    shutil.copytree(EMBEDDED_REPOSITORY, repository)
    with running_server(repository) as url:
        yield url


@pytest.mark.parametrize(("path", "body", "shown"), CALLS, ids=[answer["model"] for _, _, answer in CALLS])
def test_a_quickstart_call_answers_as_the_readme_shows(server_url, path, body, shown):
    response = httpx.post(server_url + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    for key in ("model", "version", "seed", "num_candidates", "action_horizon"):
        assert answer[key] == shown[key], key
    assert answer["action"] == pytest.approx(shown["action"], abs=1e-5)
    assert answer["q_value"] == pytest.approx(shown["q_value"], rel=1e-5)
    assert set(answer["timing_ms"]) == set(shown["timing_ms"])
