"""The serving image without a Docker engine: its install steps in a fresh venv, then its CMD.

The test reads the build and serve stages out of the Dockerfile (COPY list, the pip
install line, ENV and CMD), replays them in a temporary directory and checks that the
installed server (not the source tree) becomes ready on the embedded default model and
answers an action, without torch in the environment.

One deliberate difference from the image: MFQL_PORT is 0 instead of 8000 (the kernel picks a
free port, read back from the server's log), so the test cannot collide with anything else
listening on this machine. Marked slow: the install needs the package index and minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stage(name: str) -> str:
    text = DOCKERFILE.read_text()
    match = re.search(rf"^FROM \S+ AS {re.escape(name)}\n(.*?)(?=^FROM |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no stage {name!r} in the Dockerfile"
    return match.group(1).replace("\\\n", " ")


def copied_sources(build: str) -> list[str]:
    sources = []
    for line in build.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += line.split()[1:-1]
    return sources


def pip_install_arguments(build: str) -> list[str]:
    match = re.search(r"/opt/mfql/bin/pip install (.+?)(?:&&|$)", build, re.MULTILINE)
    assert match, "the build stage has no '/opt/mfql/bin/pip install' step"
    return shlex.split(match.group(1))


def environment(serve: str) -> dict[str, str]:
    match = re.search(r"^ENV (.+)$", serve, re.MULTILINE)
    assert match, "the serve stage sets no ENV"
    return dict(pair.split("=", 1) for pair in shlex.split(match.group(1)))


def command(serve: str) -> list[str]:
    match = re.search(r"^CMD (\[.+\])$", serve, re.MULTILINE)
    assert match, "the serve stage has no exec-form CMD"
    return json.loads(match.group(1))


def bound_port(log: Path) -> int | None:
    found = re.search(r"Uvicorn running on http://[0-9.]+:(\d+)", log.read_text())
    return int(found[1]) if found else None


@pytest.mark.slow
def test_serve_stage_installs_in_a_fresh_venv_and_its_cmd_serves_the_default_model(tmp_path):
    build, serve = stage("build"), stage("serve")
    source = tmp_path / "src"
    source.mkdir()
    for item in copied_sources(build):
        origin = ROOT / item.rstrip("/")
        if origin.is_dir():
            shutil.copytree(origin, source / origin.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / origin.name)
    prefix = tmp_path / "opt" / "mfql"
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    install = subprocess.run(
        [str(prefix / "bin" / "pip"), "install", "-q", *pip_install_arguments(build)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    no_torch = subprocess.run([str(prefix / "bin" / "python"), "-c", "import torch"], capture_output=True)
    assert no_torch.returncode != 0, "the serving install pulled in torch"

    env = {key: value.replace("/opt/mfql", str(prefix)) for key, value in environment(serve).items()}
    env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])
    env["MFQL_PORT"] = "0"
    home = tmp_path / "home"  # a working directory without the sources: the install must stand alone
    home.mkdir()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(command(serve), env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        port, ready = None, False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            port = port or bound_port(tmp_path / "server.log")
            with contextlib.suppress(OSError):
                ready = port is not None and (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status
                    == 200
                )
            time.sleep(0.2)
        assert ready, (tmp_path / "server.log").read_text()[-3000:]
        base = f"http://127.0.0.1:{port}"
        metadata = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=5))
        model = metadata["models"][0]["name"]
        described = json.load(urllib.request.urlopen(f"{base}/v1/models/{model}", timeout=5))
        body = json.dumps({"observation": [0.0] * described["obs_dim"], "seed": 1}).encode()
        request = urllib.request.Request(
            f"{base}/v1/act", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        answer = json.load(urllib.request.urlopen(request, timeout=10))
        assert len(answer["action"]) == described["action_dim"]
        assert all(-1.0 <= value <= 1.0 for value in answer["action"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
