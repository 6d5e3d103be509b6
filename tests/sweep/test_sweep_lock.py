"""Two `mfql-sweep`s into one `--out`: the second is refused before Ray starts, naming the first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
from training.sweep.cli import main  # noqa: E402
from training.sweep.runner import OWNER_FILE, SweepBusy, rounds, sweep_lock  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time; from pathlib import Path; from training.sweep.runner import sweep_lock\n"
    "with sweep_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding `tmp_path/study/tune`, as a running sweep does."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "study" / "tune")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


def test_a_second_sweep_into_the_same_out_is_refused_before_ray_starts(holder, tmp_path):
    import ray

    out = tmp_path / "study"
    args = ["--dataset-dir", str(tmp_path), "--out", str(out), "--arms", "fql", "--steps", "10"]
    with pytest.raises(SystemExit, match="another mfql-sweep is training into") as refused:
        main(args)
    assert f"pid {holder.pid}" in str(refused.value) and "--resume" in str(refused.value)
    assert not ray.is_initialized() and rounds(out / "tune") == []
    assert (out / "tune" / OWNER_FILE).is_file()  # the holder's record is left alone


def test_the_lock_goes_with_a_killed_sweep_and_is_taken_again(holder, tmp_path):
    storage = tmp_path / "study" / "tune"
    with pytest.raises(SweepBusy), sweep_lock(storage):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with sweep_lock(storage):  # a killed sweep leaves its owner file; the lock itself is free
        assert f"pid {os.getpid()}" in (storage / OWNER_FILE).read_text()
    assert not (storage / OWNER_FILE).exists()
    with sweep_lock(storage):  # and again after a clean release
        pass
