"""The clients package stays light: importing it (and its CLIs) pulls in no other mfql package."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("training", "exporters", "server", "torch", "onnxruntime", "gymnasium", "ogbench", "fastapi")


def test_importing_clients_and_its_clis_loads_no_heavy_or_sibling_package():
    code = (
        "import sys, clients, clients.rollout, clients.bench\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
