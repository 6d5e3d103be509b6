"""What the server imports: never torch (unless --backend torchscript), never training or exporters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import numpy_helper

from exporters.bundle import write_checksums
from server.served_model import load_model_version
from server.settings import ServerSettings
from tests.clients.tiny_bundle import policy_graph
from tests.server.bundles import write_test_bundle

ROOT = Path(__file__).resolve().parents[2]


def imported_top_level_modules(code: str) -> set[str]:
    program = f"import sys\n{code}\nprint(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(eval(result.stdout))  # a printed list of module names


def test_importing_and_building_the_app_loads_no_torch_training_or_exporters(bundle_dir):
    code = (
        "import server.app, server.cli\n"
        "from server.settings import ServerSettings\n"
        f"server.app.create_app(ServerSettings(model_repository={str(bundle_dir.parent.parent)!r}))"
    )
    assert imported_top_level_modules(code) & {"torch", "training", "exporters"} == set()


def test_server_imports_without_httpx_or_websockets_as_in_a_serve_only_install():
    imported = imported_top_level_modules(
        "sys.modules['httpx'] = None  # what a missing package looks like\n"
        "sys.modules['websockets'] = None\n"
        "import server.app"
    )
    assert "clients" in imported  # the shared codec loaded with httpx and websockets blocked


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_backend_runs_a_bundles_policy_ts(tmp_path):
    torch = pytest.importorskip("torch")
    bundle = tmp_path / "repository" / "cube" / "1"
    write_test_bundle(bundle)
    (initializer,) = [t for t in policy_graph(28, 5).graph.initializer if t.name == "W"]
    weights = torch.from_numpy(numpy_helper.to_array(initializer).copy())

    class TinyPolicy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weights", weights)

        def forward(self, observation, noise):
            candidates = torch.clamp(torch.tanh(observation @ self.weights)[:, None] + 0.1 * noise, -1.0, 1.0)
            scores = -(candidates * candidates).sum(-1)
            best = scores.argmax(1)
            rows = torch.arange(best.shape[0])
            return candidates[rows, best], scores[rows, best], candidates

    torch.jit.script(TinyPolicy()).save(str(bundle / "policy.ts"))
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata["files"]["torchscript"] = "policy.ts"
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    write_checksums(bundle)
    settings = ServerSettings(model_repository=bundle.parent.parent, backend="torchscript", max_batch_size=4)
    model = load_model_version("cube", 1, bundle, settings)
    model.batcher.close()
    assert model.runtime.provider == "torchscript-cpu" and model.selftest.startswith("self-test passed")
