#!/usr/bin/env bash
# Every GPU check of the project in one run, on a machine with one accelerator (at most about 9
# minutes on one NVIDIA H200: the steps' time limits add up to 540 s).  From the repository root:
#
#     bash bench/device_check.sh [OUT]          # OUT: results folder, default bench/results/device
#
# It writes, under OUT:
#   device.json          the device, jax and the platform
#   tests.log            the tests that touch devices (multi-device measurement, the machine at
#                        AIQ's tape length, the asynchronous engine), run on the accelerator
#   measure.json         measurement throughput: Q(lambda) at 65,536 programs x 1000 steps, both
#                        engines, beside the plain-Python reference (bench/measure_q_lambda.py)
#   ppo_4096.json        PPO training throughput on CartPole at 4096 and 16384 environments x 128
#   ppo_16384.json       steps, PPO_UPDATES (default 20) updates, compile excluded: aligned-rl with
#                        alignment on and off, and the PureJaxRL-style PPO (bench/peers/purejaxrl_ppo.py,
#                        the project's own Python) at the same settings, in one invocation of
#                        bench/ppo_cartpole.py, so the rows compare them on the same device.  rejax
#                        and SB3 are left out: their virtual environments need a network the device
#                        machine may not have
#   aiq_table.tgz        the AIQ table (every baseline at every episode length, 4096 programs), as
#                        far as its time allows (the command resumes where it stopped)
#   device_check.json    every step's exit status and seconds, and the figures the README quotes
#
# Each step has its own time limit and a failing step does not stop the others.  The sizes can
# be made small to try the script on a CPU first:
#     MEASURE_ENVS=64 MEASURE_STEPS=50 PPO_ENVS="64 128" PPO_UPDATES=2 \
#       AIQ_ARGS="agents=[random,q_lambda] episode_lengths=[20,40] measure.num_envs=8" bash bench/device_check.sh /tmp/dc  Where the
# machine lacks gymnax (and six, which gymnax 1.0.1 needs but does not declare), put their
# wheels in .whl/ first: the script installs every wheel it finds there into /tmp/site.
set -u
OUT=${1:-bench/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STATUS="$OUT/steps.tsv"
: > "$STATUS"

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:.
fi
$PY -c "import aligned_rl" 2>/dev/null || $PY -m pip install -q --no-deps --no-index --no-build-isolation -e .

step() {  # step NAME SECONDS COMMAND...: run with a time limit, record exit status and seconds
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*"
  timeout "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STATUS"
}

step device 60 $PY -c "
import json, platform, jax
d = jax.devices()[0]
json.dump({'device': str(d), 'kind': d.device_kind, 'platform': d.platform, 'count': jax.device_count(),
           'jax': jax.__version__, 'python': platform.python_version(), 'host': platform.platform()},
          open('$OUT/device.json', 'w'), indent=2)
print(open('$OUT/device.json').read())"

step tests 90 bash -c "$PY -m pytest -q -p no:cacheprovider tests/test_measure_devices.py tests/test_measure_async.py \
  'tests/test_programs.py::test_machine_matches_the_reference_interpreter' 2>&1 | tee '$OUT/tests.log'; exit \${PIPESTATUS[0]}"

MEASURE_ENVS=${MEASURE_ENVS:-65536}
step measure 120 $PY -m bench.measure_q_lambda --envs "$MEASURE_ENVS" --steps "${MEASURE_STEPS:-1000}" \
  --reference-envs 32 --out "$OUT/measure.json"

# Three trainers per step (each a process of its own: start-up, compile, run); the results file is
# rewritten after every run, so a step stopped by its limit keeps the rows measured before.
for n in ${PPO_ENVS:-4096 16384}; do
  step "ppo_$n" 90 $PY -m bench.ppo_cartpole --skip rejax,sb3 --num-envs "$n" \
    --timesteps $((n * 128 * ${PPO_UPDATES:-20})) --out "$OUT/ppo_$n.json"
done

rm -rf /tmp/aiq_table
step aiq_table 90 $PY -m aligned_rl.cli aiq --config configs/aiq_table.yaml output=/tmp/aiq_table \
  measure.progress=false ${AIQ_ARGS:-}
tar -czf "$OUT/aiq_table.tgz" -C /tmp aiq_table 2>/dev/null

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {"steps": [dict(zip(("step", "exit_status", "seconds"), line.split("\t")))
                     for line in (out / "steps.tsv").read_text().splitlines()]}
for path in sorted(out.glob("*.json")):
    if path.name != "device_check.json":
        summary[path.stem] = json.loads(path.read_text())
(out / "device_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary["steps"], indent=1))
EOF
