"""A sweep killed with SIGKILL at random points and restarted gives the same file."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import neuralcollapse_jax as nc


CONFIG = """
name: resume
data: {generator: block_orthogonal, points_per_class: 4, block_dim: 4}
model: {width: 6, init: lecun}
flow: {t1: 30.0, rtol: 1.0e-6, atol_per_scale: 1.0e-6, num_saves: 8}
grid:
  scale: {geomspace: [1.0e-4, 1.0e-2, 5]}
  seed: [0, 1, 2]
record: [min_margin, separated]
execution: {chunk_size: 1, workers: 1}
"""


def _command(config, output, *extra):
    return [
        sys.executable,
        "-m",
        "neuralcollapse_jax",
        "sweep",
        str(config),
        "-o",
        str(output),
        "--no-progress",
        *extra,
    ]


def _env(tmp_path):
    env = dict(os.environ)
    # Restarts reuse the compiled program, so that kills land while runs are solved.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def _parts(output):
    d = output.with_name(output.name + ".parts")
    return sorted(d.glob("part-*.npz")) if d.exists() else []


def _kill_when(proc, output, target_parts, extra_delay):
    """SIGKILL `proc` once `target_parts` chunk files exist, `extra_delay` s later
    (or at `extra_delay` when `target_parts` is 0); True if it was killed mid-sweep."""
    start = time.monotonic()
    while proc.poll() is None:
        if len(_parts(output)) >= target_parts and (
            target_parts > 0 or time.monotonic() - start >= extra_delay
        ):
            if target_parts > 0:
                time.sleep(extra_delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_identical_output(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG)
    env = _env(tmp_path)
    reference = tmp_path / "reference.nc"
    subprocess.run(_command(config, reference), env=env, check=True, timeout=900)
    ref = nc.load_sweep(reference)
    num_runs = ref["status"].size
    assert num_runs == 15

    output = tmp_path / "resumed.nc"
    rng = random.Random(20261126)
    kills = []
    # An early kill (start-up, compilation), then kills after a random number of
    # saved chunks with a random extra delay (possibly in the middle of a write).
    plan = [(0, rng.uniform(0.5, 3.0))] + [
        (rng.randint(1, num_runs - 1), rng.uniform(0.0, 0.05)) for _ in range(3)
    ]
    for target, delay in sorted(plan):
        if len(_parts(output)) >= num_runs:
            break
        proc = subprocess.Popen(
            _command(config, output, "--keep-parts"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if _kill_when(
            proc, output, max(target, len(_parts(output)) + 1) if target else 0, delay
        ):
            kills.append(len(_parts(output)))
        assert not output.exists() or len(_parts(output)) == num_runs
    assert kills and any(0 < k < num_runs for k in kills), kills

    saved = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _parts(output)}
    subprocess.run(
        _command(config, output, "--keep-parts"), env=env, check=True, timeout=900
    )
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _parts(output)}
    for name, stamp in saved.items():  # nothing that was saved was computed again
        assert after[name] == stamp
    assert len(after) == num_runs
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers

    res = nc.load_sweep(output)
    assert set(res.data_vars) == set(ref.data_vars)
    for name in list(ref.data_vars) + list(ref.coords):
        assert res[name].dims == ref[name].dims
        np.testing.assert_array_equal(res[name].values, ref[name].values, err_msg=name)
    assert res.attrs["config_hash"] == ref.attrs["config_hash"]
    assert np.all(res["status"].values == 0)


@pytest.mark.slow
def test_killed_during_assembly_is_finished_by_a_restart(tmp_path):
    """All chunks saved but no result file (killed while assembling): a restart only
    assembles."""
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG.replace("seed: [0, 1, 2]", "seed: [0]"))
    env = _env(tmp_path)
    output = tmp_path / "out.nc"
    subprocess.run(
        _command(config, output, "--keep-parts"), env=env, check=True, timeout=900
    )
    ref = nc.load_sweep(output)
    output.unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in _parts(output)}
    subprocess.run(
        _command(config, output, "--keep-parts"), env=env, check=True, timeout=900
    )
    assert {p.name: p.stat().st_mtime_ns for p in _parts(output)} == stamps
    res = nc.load_sweep(output)
    for name in ref.data_vars:
        np.testing.assert_array_equal(res[name].values, ref[name].values)


def test_files_get_the_usual_permissions(tmp_path):
    """The result, the chunk files and the manifest are created as `open` creates
    files: mode 0666 less the umask (0644 under the common umask 022)."""
    config = tmp_path / "sweep.yaml"
    config.write_text(CONFIG.replace("seed: [0, 1, 2]", "seed: [0]").replace("5]", "2]"))
    output = tmp_path / "out.nc"
    previous = os.umask(0o022)
    try:
        nc.sweep(config, output, keep_parts=True, progress=False)
    finally:
        os.umask(previous)
    parts = output.with_name(output.name + ".parts")
    files = [output, parts / "manifest.json", *_parts(output)]
    assert len(files) == 4
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o644, f
