"""Bundle verification: a bundle serves only when checksums, metadata and its self-test all pass."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from exporters.bundle import write_checksums
from exporters.parity import load_parity_cases, save_parity_cases
from server.bundle_loader import read_bundle, run_selftest
from server.errors import BundleError
from server.runner import OnnxRunner
from server.served_model import load_model_version, warmup_shapes
from server.settings import EMBEDDED_REPOSITORY, ServerSettings
from tests.clients.tiny_bundle import policy_graph
from tests.server.bundles import rewrite_metadata


def settings_for(bundle_dir) -> ServerSettings:
    return ServerSettings(model_repository=bundle_dir.parent.parent, max_batch_size=8)


def test_valid_bundle_loads_passes_its_selftest_and_describes_itself(bundle_dir):
    model = load_model_version("cube", 1, bundle_dir, settings_for(bundle_dir))
    try:
        description = model.describe()
    finally:
        model.batcher.close()
    assert model.selftest.startswith("self-test passed (K = 1, 8")
    assert description["provider"] == "CPUExecutionProvider"
    assert (description["obs_dim"], description["action_dim"], description["max_num_candidates"]) == (
        28,
        5,
        8,
    )
    assert len(description["bundle_sha256"]) == 64


def test_altered_file_fails_the_checksum(bundle_dir):
    with (bundle_dir / "policy.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"policy.onnx: SHA-256 [0-9a-f]{64}, SHA256SUMS says"):
        read_bundle(bundle_dir)


def test_missing_listed_file_is_refused(bundle_dir):
    (bundle_dir / "selftest.npz").unlink()
    with pytest.raises(BundleError, match="selftest.npz is listed in SHA256SUMS but missing"):
        read_bundle(bundle_dir)


def test_unlisted_file_is_refused(bundle_dir):
    (bundle_dir / "extra.onnx").write_bytes(b"not listed")
    with pytest.raises(BundleError, match="files not listed in SHA256SUMS: extra.onnx"):
        read_bundle(bundle_dir)


def test_missing_checksums_file_is_refused(bundle_dir):
    (bundle_dir / "SHA256SUMS").unlink()
    with pytest.raises(BundleError, match="missing SHA256SUMS"):
        read_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"obs_dim": None}, "obs_dim: Field required"),
        ({"format_version": 2}, "format_version is 2, this server reads 1"),
        ({"action_low": [-1.0]}, "action bounds need action_dim=5 values, got 1"),
        ({"default_num_candidates": 9}, r"default_num_candidates=9 is not in \[1, max_num_candidates=8\]"),
        ({"name": "bad name!"}, "name: String should match pattern"),
        ({"files": {"onnx": "other.onnx"}}, "metadata names 'other.onnx', which SHA256SUMS does not list"),
    ],
)
def test_bad_metadata_is_refused_with_the_reason(bundle_dir, changes, message):
    rewrite_metadata(bundle_dir, **changes)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_dir)


def test_metadata_that_is_not_json_is_refused(bundle_dir):
    (bundle_dir / "metadata.json").write_text("{not json")
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="metadata.json: not valid JSON"):
        read_bundle(bundle_dir)


def test_selftest_mismatch_is_refused_naming_the_output(bundle_dir):
    cases = load_parity_cases(bundle_dir / "selftest.npz")
    cases[0].reference["q_value"][:] += 0.5  # the recorded outputs no longer match the graph
    save_parity_cases(bundle_dir / "selftest.npz", cases)
    write_checksums(bundle_dir)
    bundle = read_bundle(bundle_dir)  # files and metadata are fine; only running it can tell
    runner = OnnxRunner(bundle.file("onnx"), settings_for(bundle_dir), 28, 5)
    with pytest.raises(BundleError, match=r"self-test failed: K=1: q_value: max \|diff\| 0.5"):
        run_selftest(bundle, runner)
    with pytest.raises(BundleError, match="self-test failed"):
        load_model_version("cube", 1, bundle_dir, settings_for(bundle_dir))


def test_selftest_accepts_another_candidate_on_a_near_tie(bundle_dir):
    bundle = read_bundle(bundle_dir)
    runner = OnnxRunner(bundle.file("onnx"), settings_for(bundle_dir), 28, 5)
    case = bundle.selftest[-1]  # K = 8
    got = runner(case.observation, case.noise)
    # the exporting model scored another candidate equal to the best one and chose it
    case.reference.update({name: value.copy() for name, value in got.items()})
    other = int(not np.array_equal(got["candidates"][0, 0], got["action"][0]))
    case.reference["action"][0] = got["candidates"][0, 1 - other]
    assert run_selftest(bundle, runner).startswith("self-test passed")
    case.reference["q_value"][0] += 1.0  # not a tie any more
    with pytest.raises(BundleError, match=r"action: rows \[0\] chose another candidate"):
        run_selftest(bundle, runner)


def test_unreadable_selftest_file_is_refused(bundle_dir):
    (bundle_dir / "selftest.npz").write_bytes(b"garbage")
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="not a readable self-test file"):
        read_bundle(bundle_dir)


def test_graph_with_the_wrong_signature_is_refused(bundle_dir):
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    rewrite_metadata(bundle_dir, obs_dim=27, inputs=[dict(metadata["inputs"][0], shape=["B", 27]),
                                                     metadata["inputs"][1]])  # fmt: skip
    with pytest.raises(
        BundleError, match=r"the graph takes observation \[..., 28\].*metadata says obs_dim=27"
    ):
        load_model_version("cube", 1, bundle_dir, settings_for(bundle_dir))


def test_warmup_covers_every_batch_bucket_and_k():
    shapes = warmup_shapes(max_batch_size=20, default_k=4, max_k=8)
    assert sorted({b for b, _ in shapes}) == [1, 2, 4, 8, 16, 20]
    assert sorted({k for _, k in shapes}) == [1, 4, 8]
    assert len(shapes) == 18 and np.all([b <= 20 for b, _ in shapes])


def test_chunked_bundle_loads_passes_its_selftest_and_describes_its_horizon(chunked_repository):
    bundle_dir = chunked_repository / "chunks" / "1"
    model = load_model_version("chunks", 1, bundle_dir, settings_for(bundle_dir))
    try:
        description = model.describe()
    finally:
        model.batcher.close()
    assert model.selftest.startswith("self-test passed (K = 1, 8")
    assert [case.noise.shape[1:] for case in model.bundle.selftest] == [(1, 5, 5), (8, 5, 5)]
    assert (description["action_dim"], description["action_horizon"]) == (5, 5)
    assert description["control_period_s"] == 0.05 and model.chunk_shape == (5, 5)


def test_bundle_without_action_horizon_loads_as_one_action_per_observation(bundle_dir):
    assert "action_horizon" not in json.loads((bundle_dir / "metadata.json").read_text())
    metadata = read_bundle(bundle_dir).metadata
    assert (metadata.action_horizon, metadata.control_period_s, metadata.chunk_shape) == (1, None, (5,))
    embedded = read_bundle(EMBEDDED_REPOSITORY / "cube-single" / "1").metadata
    assert (embedded.action_horizon, embedded.chunk_shape) == (1, (5,))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"action_horizon": 3}, r"tensor shapes .* disagree with action_dim=5, action_horizon=3: expected \[3, 5\]"),
        ({"action_horizon": 0}, "action_horizon: Input should be greater than or equal to 1"),
        ({"control_period_s": -1}, "control_period_s: Input should be greater than 0"),
    ],
)  # fmt: skip
def test_a_horizon_the_tensor_shapes_do_not_carry_is_refused(bundle_dir, changes, message):
    rewrite_metadata(bundle_dir, **changes)
    with pytest.raises(BundleError, match=message):
        read_bundle(bundle_dir)


def test_chunked_metadata_over_a_one_action_graph_is_refused_by_the_graph_check(chunked_repository, tmp_path):
    bundle_dir = shutil.copytree(chunked_repository / "chunks" / "1", tmp_path / "chunks" / "1")
    onnx.save(policy_graph(28, 5), bundle_dir / "policy.onnx")  # the graph of an H = 1 policy
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match=r"noise \[B, K, 5\], metadata says .*action_horizon=5"):
        load_model_version("chunks", 1, bundle_dir, settings_for(bundle_dir))
