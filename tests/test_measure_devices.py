"""aligned-rl measure over several devices (a forced 4-device CPU in a subprocess) and over
two processes joined by jax.distributed: the values equal a one-device run's, bit for bit."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_DEVICES_SCRIPT = r"""
import json, sys, jax, numpy as np
import aligned_rl.envs as envs
import aligned_rl.train.devices as devices
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_config import load_measure_config
assert len(jax.devices()) == 4, jax.devices()
seen = []
host = devices.to_host
devices.to_host = lambda x: (seen.append(len(x.sharding.device_set)), host(x))[1]
common = ["agent=q_lambda", "episode_length=20", "chunk_steps=20", "progress=false", "constitution=no_low_symbols"]
from aligned_rl.envs.registry import ParamBatch
env, _ = envs.make("BF-programs")
programs = [",.#", "+,.#", ",-.#", ",>.<#", ",+.#", ",<.>#", ",>+.<#", "+,-.#", ",>-.<#", ",.+#", ",>.#", "-,.#"]
pool = ParamBatch(env.program_params(programs, stratum=[1, 1, 1, 1, 5, 5, 5, 7, 7, 7, 7, 7]),
                  jax.numpy.full((12,), 12.0), 0.1)  # hand-written, labelled strata: no sampler to compile
first5 = pool._replace(params=jax.tree.map(lambda x: x[:5], pool.params), bits=pool.bits[:5])
result = {}
for name, sampled, extra in (("simple", (env, first5), ["num_envs=5"]),
                             ("stratified", (env, pool), ["num_envs=8", "sampling=stratified"])):
    values = {}
    for count in (1, 4):
        seen.clear()
        measured = measure(load_measure_config(None, common + extra + [f"devices={count}"]), sampled=sampled)
        assert measured.report["devices"]["mesh"] == count
        assert set(seen) == {count}, seen  # the sums came back split over that many devices
        values[count] = (measured.per_env, measured.report["estimates"])
    (a, ea), (b, eb) = values[1], values[4]
    assert a.keys() == b.keys()
    result[name] = {"equal": all(np.array_equal(a[k], b[k]) for k in a) and ea == eb,
                    "rows": int(a["average_reward"].size)}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_measure_sharded_over_four_devices_equals_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _DEVICES_SCRIPT], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    # 5 environments + 5 antithetic twins = 10 rows: padded to 12 over 4 devices
    assert result["simple"] == {"equal": True, "rows": 10}
    assert result["stratified"] == {"equal": True, "rows": 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


_PROCESS_SCRIPT = r"""
import sys
from aligned_rl.train.devices import start_distributed
from aligned_rl.train.measure_config import load_measure_config
out, address, pid = sys.argv[1:4]
hosts = [f"coordinator_address={address}", "num_processes=2", f"process_id={pid}"] if address != "none" else []
# the lockstep engine on one process too (the one a mesh runs), which also records the environments' metrics
config = load_measure_config(None, ["agent=q_lambda", "num_envs=6", "episode_length=40", "chunk_steps=20",
                                    "progress=false", "engine=lockstep", *hosts])
# before anything touches a device (importing aligned_rl.envs or the measurement does)
start_distributed(config.coordinator_address, config.num_processes, config.process_id)
import jax
import jax.numpy as jnp
import aligned_rl.envs as envs
from aligned_rl.train.measure import measure
from aligned_rl.train.measure_report import write_measurement
from aligned_rl.envs.registry import ParamBatch
env, _ = envs.make("BF-programs")
programs = [",.#", "+,.#", ",-.#", ",>.<#", ",+.#", ",<.>#"]  # hand-written: no sampler to compile
batch = ParamBatch(env.program_params(programs, stratum=1), jnp.full((6,), 12.0), 0.0)
measured = measure(config, sampled=(env, batch))
if jax.process_index() == 0:
    write_measurement(measured, out)
"""


@pytest.mark.slow
def test_measure_over_two_processes_equals_one_process(tmp_path):
    """jax.distributed over 2 CPU processes on this machine (the recipe of docs/multi_host.md):
    the global mesh has one device per process, and the values equal a one-process run's."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_SCRIPT, str(tmp_path / "two"), address, str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    one = subprocess.run([sys.executable, "-c", _PROCESS_SCRIPT, str(tmp_path / "one"), "none", "0"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    import numpy as np

    two_report = json.loads((tmp_path / "two" / "report.json").read_text())
    one_report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert two_report["devices"]["processes"] == 2 and two_report["devices"]["mesh"] == 2
    assert one_report["devices"]["processes"] == 1 and one_report["devices"]["mesh"] == 1
    assert two_report["estimates"] == one_report["estimates"]
    a, b = np.load(tmp_path / "two" / "per_env.npz"), np.load(tmp_path / "one" / "per_env.npz")
    assert a.files == b.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
