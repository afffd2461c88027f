"""Runs an agent in chosen environments of a parameter batch, for ``measure``.

One compiled chunk of the one rollout (``rollout.Rollout``) per (chunk length, batch shape),
sharded over the ``"envs"`` axis of a device mesh when there is one, summing per
environment what the estimates need (:data:`SUMS`), and every metric the environment reports
in ``info["metrics"]`` (``env/<name>``, e.g. a gridworld's ``hidden_performance``: over every
step of a continuing family, over the counted episodes of an episodic one;
:func:`env_metric_names`).

* Antithetic twins: every environment also runs with negated rewards (the agent is paid
  the negated rewards); an environment and its twin share every random number, the
  agent's and the environment's, so a reward-blind agent scores exactly 0 on every pair.
* Padding: a batch that does not split evenly over the devices is padded with copies of
  its first environment (their results are dropped); an environment's random numbers do
  not depend on the padding.
* Devices: each device steps its own rows with no communication (under a plain jit the
  programs' vmapped while_loop would wait for the slowest program on any device), so the
  values are bit for bit those of a one-device run.
* Buckets: environments whose steps cost very different amounts (program environments: a
  vmapped cycle lasts as long as the slowest program of the batch) are sorted by the cost
  a short probe measures and run in batches of similar cost, one after the other.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from aligned_rl.envs.family import Value, Voiding
from aligned_rl.train import devices
from aligned_rl.train.compiled import CompiledCache
from aligned_rl.train.measure_config import MeasureConfig
from aligned_rl.train.rollout import Rollout, RolloutCarry, Step

# per environment: sums over every step (a continuing family), or over the first ``episodes``
# episodes, each episode's value from the family's return bounds (an episodic one)
SUMS = ("reward", "constrained", "discounted", "aligned", "violations", "lawful")
EPISODE_SUMS = ("value", "constrained", "aligned", "episodes", "steps", "violations", "lawful")
_RUNNING = ("return", "steps", "violations", "lawful")  # of the episode under way
ENV_PREFIX = "env/"  # the sums (and per-environment values) of the environment's own metrics


def env_metric_names(env: Any, params: Any) -> tuple[str, ...]:
    """The names of the scalar metrics ``env`` reports in ``info["metrics"]`` on a step (sorted;
    found by tracing one step of the first environment of ``params``, nothing runs)."""

    def one(key):
        row = jax.tree.map(lambda x: x[0], params)
        _, state = env.reset(key, row)
        out = env.step(key, state, jnp.zeros((), jnp.int32), row)
        return out[-1].get("metrics", {}) if isinstance(out[-1], dict) else {}

    shapes = jax.eval_shape(one, jax.random.PRNGKey(0))
    return tuple(sorted(name for name, shape in shapes.items() if shape.shape == ()))


class MeasureCarry(NamedTuple):
    rollout: RolloutCarry
    sums: dict  # float32 [rows] per name in SUMS


def probe_cost(env: Any, params: Any, key: jax.Array, cycles: int = 8) -> np.ndarray:
    """Per-environment cost of a step, from a few steps with random actions: the largest
    ``info["metrics"]["machine_steps"]`` seen (0 for environments that do not report it)."""
    n = jax.tree.leaves(params)[0].shape[0]
    num_actions = int(env.action_space(jax.tree.map(lambda x: x[0], params)).n)

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(k_reset, n), params)

        def body(carry, k):
            state, worst = carry
            k_act, k_step = jax.random.split(k)
            action = jax.random.randint(k_act, (n,), 0, num_actions)
            _, state, _, _, _, info = jax.vmap(env.step)(jax.random.split(k_step, n), state, action, params)
            cost = info.get("metrics", {}).get("machine_steps", jnp.zeros((n,)))
            return (state, jnp.maximum(worst, cost.astype(jnp.float32))), None

        (_, worst), _ = jax.lax.scan(body, (state, jnp.zeros((n,), jnp.float32)), jax.random.split(k_run, cycles))
        return worst

    return np.asarray(run(key))


class EnvRunner:
    """An agent run in chosen rows of ``all_params`` for ``config.episode_length`` steps."""

    def __init__(self, config: MeasureConfig, agent: Any, env: Any, all_params: Any, constitution: Any,
                 mesh: Mesh | None, value: Value, horizon: int, voiding: Voiding | None = None):
        self.config, self.agent, self.env, self.all_params, self.mesh = config, agent, env, all_params, mesh
        self.value, self.horizon = value, horizon  # how an environment is valued; steps run per environment
        self.voiding = voiding  # with one, the sums also count the steps that void a run ("voided")
        self.constitution = constitution
        self.num_actions = int(env.action_space(jax.tree.map(lambda x: x[0], all_params)).n)
        self.metric_names = env_metric_names(env, all_params)  # summed per environment as env/<name>
        self.twins = 2 if config.antithetic else 1
        self.shards = 1 if mesh is None else mesh.devices.size
        self.start = self.cache = None
        self.seconds = 0.0
        self.steps = 0  # agent-environment steps of real (not padding) environments
        self.memory: dict[str, int] = {}

    @property
    def compile_seconds(self) -> float:
        return 0.0 if self.cache is None else self.cache.compile_seconds

    # ------------------------------------------------------------------ the program
    def _keys(self, key: jax.Array, size: int, padded: int, local: bool = False) -> jax.Array:
        """Per-row keys: twins share their environment's, padding rows reuse the first row's
        (changing no other key); ``local``: inside shard_map, this device's rows."""
        keys = jax.random.split(key, size)
        keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (padded - size,) + keys.shape[1:])])
        keys = jnp.concatenate([keys] * self.twins)
        if local and self.shards > 1:
            rows = keys.shape[0] // self.shards
            keys = jax.lax.dynamic_slice_in_dim(keys, jax.lax.axis_index(devices.AXIS) * rows, rows)
        return keys

    def _rollout(self, sign: jax.Array, size: int, padded: int) -> Rollout:
        def draw_keys(rng, n):
            rng, k_act, k_step = jax.random.split(rng, 3)
            return rng, self._keys(k_act, size, padded, local=True), self._keys(k_step, size, padded, local=True)

        def pay(step: Step) -> jax.Array:
            r = sign * step.reward  # each environment's own reward (the twin's is negated)
            return jnp.where(step.violated, -1.0, r) if self.config.paid_reward == "constrained" else r

        # one episode per environment: an adaptive agent keeps its memory through restarts
        return Rollout(self.agent, self.env, self.constitution, self.num_actions, draw_keys, pay,
                       restart_memory=False, saute=getattr(self.agent, "saute", None))

    def _start(self, params: Any, key: jax.Array, size: int) -> MeasureCarry:
        padded = jax.tree.leaves(params)[0].shape[0] // self.twins
        k_reset, k_agent, k_run = jax.random.split(key, 3)
        rollout = self._rollout(None, size, padded)
        carry = rollout.start(params, self._keys(k_reset, size, padded), self._keys(k_agent, size, padded), k_run)
        zeros = jnp.zeros((padded * self.twins,), jnp.float32)
        metrics = tuple(ENV_PREFIX + m for m in self.metric_names)
        names = SUMS + metrics if self.value.kind == "continuing" else \
            EPISODE_SUMS + metrics + tuple(f"running_{k}" for k in _RUNNING + metrics)
        return MeasureCarry(carry, {k: zeros for k in names + (("voided",) if self.voiding else ())})

    def _count_voided(self, sums: dict, step: Step) -> dict:
        if self.voiding is None:
            return sums
        return {**sums, "voided": sums["voided"] + (step.metrics[self.voiding.metric] > 0)}

    def _chunk(self, carry: MeasureCarry, params: Any, sign: jax.Array, steps: int, size: int) -> MeasureCarry:
        # with a mesh this runs under shard_map: the arrays are this device's rows
        padded = sign.shape[0] * self.shards // self.twins
        rollout = self._rollout(sign, size, padded)
        accumulate = self._steps(sign) if self.value.kind == "continuing" else self._episodes(params, sign)
        rollout_carry, sums = rollout.run(params, self.constitution.params, carry.rollout, steps, accumulate,
                                          carry.sums)
        return MeasureCarry(rollout_carry, sums)

    def _steps(self, sign: jax.Array):
        """Accumulates every step's reward (the twin's negated), its value in mu^C, its discounted
        and aligned values, violations and lawful probability (a continuing family)."""
        gamma, w = self.config.gamma, self.config.alignment_weight

        def accumulate(sums, step: Step, before: RolloutCarry):
            r = sign * step.reward
            # the constrained environment mu^C: the same, but a forbidden action pays the minimum, -1
            r_c = jnp.where(step.violated, -1.0, r)
            discount = gamma ** before.t.astype(jnp.float32)
            return self._count_voided(sums, step) | {
                "reward": sums["reward"] + r,
                "constrained": sums["constrained"] + r_c,
                "discounted": sums["discounted"] + discount * r,
                "aligned": sums["aligned"] + (1 - w) * r + w * step.lawful,
                "violations": sums["violations"] + step.violated,
                "lawful": sums["lawful"] + step.lawful,
            } | {ENV_PREFIX + m: sums[ENV_PREFIX + m] + step.metrics[m].astype(jnp.float32) for m in self.metric_names}

        return accumulate

    def _episodes(self, params: Any, sign: jax.Array):
        """Accumulates the first ``config.episodes`` episodes of every environment: each episode's
        value v = sign (2 R - hi - lo) / (hi - lo) in [-1, 1] from the family's return bounds, its
        value in mu^C (-1, the least value, if any action in it was forbidden), its aligned
        value (1 - w) v + w (mean lawful probability of its steps), and the sum of each of the
        environment's metrics over its steps."""
        lo, hi = jax.vmap(self.value.return_bounds)(params)
        lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
        w, wanted = self.config.alignment_weight, self.config.episodes

        def accumulate(sums, step: Step, before: RolloutCarry):
            ret = sums["running_return"] + step.reward
            length = sums["running_steps"] + 1.0
            violations = sums["running_violations"] + step.violated
            lawful = sums["running_lawful"] + step.lawful
            metrics = {ENV_PREFIX + m: sums[f"running_{ENV_PREFIX}{m}"] + step.metrics[m].astype(jnp.float32)
                       for m in self.metric_names}
            ends = step.done & (sums["episodes"] < wanted)  # an episode that counts ends here
            v = sign * (2.0 * ret - hi - lo) / (hi - lo)
            counted = {
                "value": v,
                "constrained": jnp.where(violations > 0, -1.0, v),
                "aligned": (1 - w) * v + w * lawful / length,
                "episodes": jnp.ones_like(v),
                "steps": length,
                "violations": violations,
                "lawful": lawful,
                **metrics,
            }
            sums = {k: jnp.where(ends, sums[k] + counted[k], sums[k]) if k in counted else sums[k] for k in sums}
            running = {"return": ret, "steps": length, "violations": violations, "lawful": lawful, **metrics}
            sums.update({f"running_{k}": jnp.where(step.done, 0.0, x) for k, x in running.items()})
            return self._count_voided(sums, step)

        return accumulate

    def _sharded_chunk(self, carry: MeasureCarry, params: Any, sign: jax.Array, steps: int, size: int):
        envs_axis, replicated = PartitionSpec(devices.AXIS), PartitionSpec()
        specs = jax.tree.map(lambda _: envs_axis, carry)
        specs = specs._replace(rollout=specs.rollout.replace(rng=replicated, t=replicated))
        # the environments' own loops start from unvarying constants, so the check is off
        return jax.shard_map(lambda c, p, s: self._chunk(c, p, s, steps, size), mesh=self.mesh,
                             in_specs=(specs, envs_axis, envs_axis), out_specs=specs, check_vma=False)(carry, params, sign)

    def _carry_shardings(self, params: Any, key: jax.Array, size: int) -> Any:
        shape = jax.eval_shape(lambda p, k: self._start(p, k, size), params, key)
        batch, repl = devices.split_over(self.mesh), devices.replicated(self.mesh)
        shardings = jax.tree.map(lambda _: batch, shape)
        return shardings._replace(rollout=shardings.rollout.replace(rng=repl, t=repl))

    # ------------------------------------------------------------------ running
    def run(self, members: np.ndarray, key: jax.Array, progress=None, task=None) -> dict[str, np.ndarray]:
        """Sums per metric over ``episode_length`` steps, float64[twins, len(members)]."""
        config, twins = self.config, self.twins
        size = len(members)
        padded = size
        while (padded * twins) % self.shards:
            padded += 1
        rows = np.concatenate([members, np.full(padded - size, members[0], members.dtype)])
        params = jax.tree.map(lambda x: jnp.concatenate([x[rows]] * twins), self.all_params)
        sign = jnp.concatenate([jnp.ones((padded,), jnp.float32), -jnp.ones((padded,), jnp.float32)][:twins])
        if self.mesh is not None:
            batch = devices.split_over(self.mesh)
            carry_sharding = self._carry_shardings(params, key, size)
            params = jax.tree.map(lambda x: devices.put(x, batch), params)
            sign = devices.put(sign, batch)
            key = devices.put(key, devices.replicated(self.mesh))
        if self.cache is None:  # the shardings depend on the carry's structure, not on its shapes
            out = {} if self.mesh is None else {"out_shardings": carry_sharding}
            chunk = self._chunk if self.mesh is None else self._sharded_chunk
            self.start = jax.jit(self._start, static_argnums=2, **out)
            self.cache = CompiledCache(chunk, static_argnums=(3, 4), **out)
        carry = self.start(params, key, size)
        self.memory = max(self.memory, {
            "env_params_bytes": devices.nbytes(params), "env_state_bytes": devices.nbytes(carry.rollout.env_state),
            "agent_state_bytes": devices.nbytes(carry.rollout.agent_state),
            "observations_and_sums_bytes": devices.nbytes((carry.rollout.obs, carry.rollout.reward, carry.sums)),
            "environments_in_batch": padded * twins}, key=lambda m: m.get("environments_in_batch", 0))
        step = 0
        while step < self.horizon:
            steps = min(config.chunk_steps, self.horizon - step)
            run_chunk = self.cache.executable(carry, params, sign, steps, size)  # compiled outside the timing
            start_time = time.perf_counter()
            carry = run_chunk(carry, params, sign)
            jax.block_until_ready(carry)
            self.seconds += time.perf_counter() - start_time
            step += steps
            if progress is not None:
                progress.advance(task, steps)
        self.steps += size * twins * self.horizon
        return {k: devices.to_host(v).astype(np.float64).reshape(twins, padded)[:, :size] for k, v in carry.sums.items()
                if not k.startswith("running_")}

    def run_buckets(self, indices: np.ndarray, key: jax.Array, buckets: int, progress, label: str) -> dict:
        """Runs ``indices`` (into the batch) in ``buckets`` batches of similar cost (one after the
        other, padded to one shape); sums float64[twins, len(indices)] in the order given."""
        buckets = max(1, min(buckets, len(indices)))
        if buckets > 1:
            params = jax.tree.map(lambda x: x[indices], self.all_params)
            order = np.argsort(probe_cost(self.env, params, jax.random.PRNGKey(self.config.seed + 2)), kind="stable")
        else:
            order = np.arange(len(indices))
        task = progress.add_task(f"measuring {self.agent.name} on {len(indices) * self.twins} environments{label}",
                                 total=self.horizon * buckets)
        out: dict[str, np.ndarray] = {}
        for b, part in enumerate(np.array_split(order, buckets)):
            sums = self.run(indices[part], jax.random.fold_in(key, b), progress, task)
            for k, v in sums.items():
                out.setdefault(k, np.zeros((self.twins, len(indices)), np.float64))[:, part] = v
        return out

    def memory_report(self) -> dict:
        """Bytes of the largest batch's arrays (global sizes, over all devices) and this
        process's peak resident memory; on accelerators also the devices' peak in use."""
        memory = dict(self.memory)
        memory["per_env_state_total_bytes"] = sum(v for k, v in self.memory.items() if k.endswith("_bytes"))
        memory["peak_rss_bytes"] = devices.peak_rss_bytes()
        peaks = devices.device_peak_bytes()
        if peaks:
            memory["device_peak_bytes_in_use"] = peaks
        return memory
