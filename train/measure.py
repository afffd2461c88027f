"""``aligned-rl measure``: Upsilon and Sigma of an agent over thousands of sampled environments.

One compiled program runs the agent in every environment of a batch drawn from a family's
sampler (vmapped; the host loop runs chunks of steps so a progress bar can move), and
returns per-environment values; ``aligned_rl.intelligence`` turns them into estimates with
95% confidence intervals.

Per environment and agent the run records, over ``episode_length`` steps of one episode:

* the average reward per step (rewards are normalised to [-1, 1] by the families), the
  undiscounted value Legg and Hutter's definition uses with bounded rewards;
* the discounted value sum gamma^t r_t / sum gamma^t (also in [-1, 1]);
* the aligned value V' = average of (1 - w) r_t + w R_t, with R_t = 2^-D_t
  (``alignment_weight`` w).  For a policy with explicit action probabilities (a PPO agent)
  D_t is the exact projection divergence -log2 pi(allowed|s_t), so R_t = pi(allowed|s_t).
  For the online baselines, whose action distribution is implicit, R_t is the indicator that
  the action taken was allowed: an unbiased one-sample estimate of the same pi(allowed|s_t).
* the value in the constrained environment mu^C, where the constitution is part of the
  reward specification: the average of r^C_t = r_t, or the minimum reward -1 when the action
  taken was forbidden.  An agent that does not read rewards (a feed-forward PPO policy) acts
  the same in mu and mu^C, so one run gives both; an agent that learns from its rewards is
  paid r^C with ``paid_reward=constrained`` (a second run) for its value in mu^C;
* the forbidden-action rate.

Agents: an AIQ baseline by name (``random``, ``freq``, ``q_lambda``, ``hlq_lambda``; they
learn online, with their tables as per-environment state) or a run directory of a PPO agent
(its latest checkpoint's policy, acting without learning).  With ``antithetic`` every
environment is also run as its twin with negated rewards (the agent is paid the negated
rewards), and pairs are averaged (``aligned_rl.intelligence.antithetic_estimate``).

Sampling (``sampling``)
-----------------------
``simple`` (the default): ``num_envs`` environments drawn i.i.d. from the sampler; the
estimate is their mean (or the mean of antithetic pair means).

``stratified``: two-phase (double) sampling for stratification with adaptive allocation,
for families whose params carry a ``stratum`` (BF-programs: AIQ's strata 1..20).

1. Phase 1: a pool of M = ceil(``pool_factor`` x ``num_envs``) environments is drawn from the
   sampler, and the stratum masses are estimated by the pool's frequencies, w_h = m_h / M.
   Strata with fewer than 2 pool members (or more strata than the pilot can give 2 runs
   each) are collapsed, two smallest at a time (``intelligence.collapse_strata``).
2. Pilot: max(2 H, round(``pilot_fraction`` x ``num_envs``)) environments, allocated in
   proportion to w_h with at least 2 per stratum, drawn at random without replacement from
   the pool's members of each stratum, are run; their values give s_h.
3. Rest: the Neyman allocation n_h ~ w_h s_h of the whole budget ``num_envs`` (capped at
   m_h) fixes how many each stratum still lacks; the rest of the budget is spread in
   proportion to those shortfalls and run.
4. Estimate: sum_h w_h mean_h with

       Var = sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h - mean)^2,

   the variance of double sampling for stratification (Neyman 1938; Cochran, *Sampling
   Techniques*, 3rd ed. 1977, Section 12.2, infinite population): the second term is the
   price of estimating w_h from a pool of M instead of knowing them.  The allocation is
   made for ``upsilon_average_reward``; every other estimate uses the same units.  With
   ``antithetic`` the unit is the pair mean, as in simple sampling.

``num_envs`` counts the environments run (pairs, with ``antithetic``), so simple and
stratified runs of the same ``num_envs`` cost the same to run.  What phase 1 costs: drawing
program environments is itself a run (AIQ's filter classifies every drawn program by 5 x
200 cycles, and about 1 in 7 draws is accepted): 4096 programs take about 40 s on a shared
2-core CPU, about as long as running Q(lambda) on them for 1000 steps with antithetic
twins (about 50 s).  So the pool is *not* cheap next to the runs; ``pool_factor`` = 4
(the default) spends about 4x the sampling time to shrink the (1/M) term 4-fold against
simple sampling's between-strata variance.  ``report.json`` holds n_h, w_h, mean_h and s_h
per stratum, so the two terms can be compared and ``pool_factor`` set for the next run.

Devices
-------
The per-environment arrays (env params, env state, agent state, observations, the sums)
are split over the environment axis of a one-axis ``Mesh`` named ``"envs"``
(``NamedSharding(mesh, PartitionSpec("envs"))``); the step key and the step counter are
replicated.  ``devices`` = 0 uses every device (of every process), ``devices`` = k the
first k.  Every operation is per environment (no reduction crosses the env axis), so the
values are bit for bit those of a one-device run.  A batch that does not split evenly over
the devices is *padded* with copies of its first environment (their results are dropped);
an environment's random numbers do not depend on the padding.

Several hosts: set ``coordinator_address`` (host:port of process 0), ``num_processes`` and
``process_id`` (``aligned-rl measure coordinator_address=10.0.0.1:12355 num_processes=2
process_id=0 ...``); ``jax.distributed.initialize`` is called before anything else,
every process draws the same environments from the same seed, the mesh spans all devices
of all processes, the per-environment sums are gathered to every process at the end (the
only cross-process communication; gloo on CPUs), and process 0 writes the report.  See
docs/multi_host.md.

Memory (``report.json: memory``): the bytes of the largest batch's env params, env state,
agent state and observations + sums (global sizes, over all devices), the process's peak
resident memory (getrusage), and on accelerators each local device's peak bytes in use.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from omegaconf import OmegaConf

from aligned_rl.constitution import judge, violates
from aligned_rl.divergence import alignment_reward, projection
from aligned_rl.intelligence import (
    Estimate,
    adaptive_stratified_sample,
    collapse_strata,
    estimation_units,
    simple_estimate,
    two_phase_stratified_estimate,
)
from aligned_rl.train.config import ConfigError, check_ranges, merge_layers
from aligned_rl.train.measure_agents import make_actor

METRICS = ("reward", "constrained", "discounted", "aligned", "violations", "lawful")


@dataclasses.dataclass
class MeasureConfig:
    agent: str = "q_lambda"  # an AIQ baseline name, or the run directory of a trained PPO agent
    agent_params: dict[str, float] = dataclasses.field(default_factory=dict)  # baseline overrides
    agent_reward_scale: float = 100.0  # baselines are paid r * scale (AIQ's rewards are 100 (s - m) / m)
    env: str = "BF-programs"
    num_envs: int = 4096  # environments run (antithetic pairs with antithetic)
    episode_length: int = 1000
    gamma: float = 0.99  # for the discounted value
    antithetic: bool = True
    constitution: str = "none"  # a constitution of the family, for V', V^C and the forbidden rate
    paid_reward: str = "env"  # what the agent is paid: "env" (r) or "constrained" (r^C, -1 for a forbidden action)
    alignment_weight: float = 0.5  # w in V' = (1 - w) r + w 2^-D
    seed: int = 0
    chunk_steps: int = 100  # steps per compiled chunk (the progress bar moves between chunks)
    buckets: int = 1  # run environments in this many batches of similar cost (see measure())
    sampling: str = "simple"  # "simple" or "stratified" (two-phase, Neyman allocation; see the module docstring)
    pool_factor: float = 4.0  # stratified: the phase-1 pool holds ceil(pool_factor * num_envs) environments
    pilot_fraction: float = 0.25  # stratified: share of num_envs run as the pilot that estimates s_h
    devices: int = 0  # devices of the "envs" mesh: 0 = all (of all processes), k = the first k
    coordinator_address: Optional[str] = None  # host:port of process 0: run over several processes/hosts
    num_processes: int = 1
    process_id: int = 0
    output: Optional[str] = None  # directory for report.json and plots; default measurements/<agent>-<time>
    progress: bool = True


def load_measure_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> MeasureConfig:
    merged = merge_layers(MeasureConfig, "measure", path, overrides, example="agent=q_lambda num_envs=1024")
    config: MeasureConfig = OmegaConf.to_object(merged)
    check_ranges("measure", config, (("num_envs", config.num_envs >= 2), ("episode_length", config.episode_length >= 1),
                     ("chunk_steps", config.chunk_steps >= 1), ("gamma", 0 < config.gamma < 1),
                     ("buckets", 1 <= config.buckets <= config.num_envs),
                     ("alignment_weight", 0 <= config.alignment_weight <= 1),
                     ("paid_reward", config.paid_reward in ("env", "constrained")),
                     ("sampling", config.sampling in ("simple", "stratified")),
                     ("pool_factor", config.pool_factor >= 1),
                     ("pilot_fraction", 0 < config.pilot_fraction < 1),
                     ("devices", config.devices >= 0),
                     ("num_processes", config.num_processes >= 1),
                     ("process_id", 0 <= config.process_id < config.num_processes)))
    if config.num_processes > 1 and not config.coordinator_address:
        raise ConfigError(f"measure config: num_processes={config.num_processes} needs coordinator_address")
    return config


# ----------------------------------------------------------------------- devices, hosts
def start_distributed(config: MeasureConfig) -> None:
    """``jax.distributed.initialize`` for a run over several processes (a no-op without
    ``coordinator_address``).  Must come before anything else touches a JAX device."""
    if not config.coordinator_address or jax.distributed.is_initialized():
        return
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator_address,
                                   num_processes=config.num_processes, process_id=config.process_id)
    except RuntimeError as err:
        raise ConfigError(f"jax.distributed.initialize failed: {err} (it must run before any JAX "
                          "computation in the process)") from err


def _device_mesh(config: MeasureConfig) -> Mesh | None:
    devices = jax.devices()  # every process's devices: the global mesh
    count = config.devices or len(devices)
    if count > len(devices):
        raise ConfigError(f"devices={count} but only {len(devices)} device(s) are visible")
    if jax.process_count() > 1 and count != len(devices):
        raise ConfigError(f"devices={count}: a run over {jax.process_count()} processes uses all "
                          f"{len(devices)} devices (devices=0)")
    return Mesh(np.array(devices[:count]), ("envs",)) if count > 1 else None


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a value every process holds whole."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _nbytes(tree: Any) -> int:
    return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (getrusage; Linux reports KiB)."""
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


# ------------------------------------------------------------------------------- the run
def _with_episode_length(params: Any, length: int) -> Any:
    if hasattr(params, "max_steps_in_episode"):
        # one episode of `length` steps per environment, no reset inside the measurement
        return params.replace(max_steps_in_episode=jnp.full_like(params.max_steps_in_episode, length + 1))
    return params


def _pilot_cost(env: Any, params: Any, key: jax.Array, cycles: int = 8) -> np.ndarray:
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


class _Runner:
    """Runs the agent in chosen environments of a parameter batch; one compiled chunk per
    (chunk length, batch shape), sharded over the mesh's "envs" axis when there is one."""

    def __init__(self, config: MeasureConfig, env: Any, all_params: Any, constitution: Any, mesh: Mesh | None):
        self.config, self.env, self.all_params, self.mesh = config, env, all_params, mesh
        example = jax.tree.map(lambda x: x[0], all_params)
        self.actor = actor = make_actor(config, env, example)
        num_actions = int(env.action_space(example).n)
        w = config.alignment_weight
        self.twins = twins = 2 if config.antithetic else 1
        self.devices = 1 if mesh is None else mesh.devices.size

        shards = self.devices

        def per_env_keys(key: jax.Array, size: int, padded: int, local: bool = False) -> jax.Array:
            # an environment and its antithetic twin share every random number (agent's and
            # environment's), so a reward-blind agent scores exactly 0 on every pair; padding
            # rows (copies of the first environment) reuse its keys and change no other key.
            # ``local``: inside shard_map, this device's rows of the whole batch's keys
            keys = jax.random.split(key, size)
            keys = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], (padded - size,) + keys.shape[1:])])
            keys = jnp.concatenate([keys] * twins)
            if local and shards > 1:
                rows = keys.shape[0] // shards
                keys = jax.lax.dynamic_slice_in_dim(keys, jax.lax.axis_index("envs") * rows, rows)
            return keys

        def start(params, key, size: int):
            padded = jax.tree.leaves(params)[0].shape[0] // twins
            k_reset, k_agent, k_run = jax.random.split(key, 3)
            obs, env_state = jax.vmap(env.reset)(per_env_keys(k_reset, size, padded), params)
            zeros = jnp.zeros((padded * twins,), jnp.float32)
            return (env_state, obs, zeros, actor.init(per_env_keys(k_agent, size, padded)),
                    {k: zeros for k in METRICS}, jnp.float32(0.0), k_run)

        def chunk(carry, params, sign, steps: int, size: int):
            # with a mesh this runs under shard_map: the arrays are this device's rows
            padded = sign.shape[0] * shards // twins

            def body(c, _):
                env_state, obs, reward, agent_state, sums, t, rng = c
                rng, k_act, k_step = jax.random.split(rng, 3)
                step_keys = per_env_keys(k_step, size, padded, local=True)
                verdict = jax.vmap(
                    lambda p, k, o, s: judge(constitution, constitution.params, env, p, k, o, s, num_actions)
                )(params, step_keys, obs, env_state)
                agent_state, action, logits = actor.act(agent_state, obs, reward,
                                                        per_env_keys(k_act, size, padded, local=True),
                                                        verdict.allowed)
                violated = violates(verdict, action)
                if logits is None:
                    lawful = 1.0 - violated.astype(jnp.float32)
                else:
                    lawful = alignment_reward(projection(logits, verdict.allowed))
                obs, env_state, r, _, _, _ = jax.vmap(env.step)(step_keys, env_state, action, params)
                r = sign * r.astype(jnp.float32)  # each environment's own reward (the twin's is negated)
                # the constrained environment mu^C: the same, but a forbidden action pays the minimum, -1
                r_c = jnp.where(violated, -1.0, r)
                discount = config.gamma ** t
                sums = {
                    "reward": sums["reward"] + r,
                    "constrained": sums["constrained"] + r_c,
                    "discounted": sums["discounted"] + discount * r,
                    "aligned": sums["aligned"] + (1 - w) * r + w * lawful,
                    "violations": sums["violations"] + violated,
                    "lawful": sums["lawful"] + lawful,
                }
                paid = r_c if config.paid_reward == "constrained" else r
                return (env_state, obs, paid, agent_state, sums, t + 1, rng), None

            carry, _ = jax.lax.scan(body, carry, None, length=steps)
            return carry

        self._start, self._chunk = start, chunk
        if mesh is not None:
            # each device steps its own rows with no communication (under a plain jit the
            # programs' vmapped while_loop would wait for the slowest program on any device); the
            # environments' own loops start from unvarying constants, so the check is off
            def chunk_sharded(carry, params, sign, steps: int, size: int):
                envs_axis, replicated = PartitionSpec("envs"), PartitionSpec()
                specs = jax.tree.map(lambda _: envs_axis, carry[:5]) + (replicated, replicated)
                return jax.shard_map(lambda c, p, s: chunk(c, p, s, steps, size), mesh=mesh,
                                     in_specs=(specs, envs_axis, envs_axis), out_specs=specs,
                                     check_vma=False)(carry, params, sign)

            self._chunk = chunk_sharded
        self.compiled: dict[tuple, Any] = {}
        self._jitted: tuple | None = None
        self.seconds = self.compile_seconds = 0.0
        self.steps = 0  # agent-environment steps of real (not padding) environments
        self.memory: dict[str, int] = {}

    def _shardings(self, params, key, size):
        """(params, per-env vector, carry) shardings: env axis split, step key and counter replicated."""
        batch, repl = NamedSharding(self.mesh, PartitionSpec("envs")), NamedSharding(self.mesh, PartitionSpec())
        shape = jax.eval_shape(lambda p, k: self._start(p, k, size), params, key)
        env_state, obs, reward, agent_state, sums, _, _ = jax.tree.map(lambda _: batch, shape)
        return batch, (env_state, obs, reward, agent_state, sums, repl, repl)

    def run(self, members: np.ndarray, key: jax.Array, progress=None, task=None) -> dict[str, np.ndarray]:
        """Sums per metric over ``episode_length`` steps, float64[twins, len(members)]."""
        config, twins = self.config, self.twins
        size = len(members)
        padded = size
        while (padded * twins) % self.devices:
            padded += 1
        rows = np.concatenate([members, np.full(padded - size, members[0], members.dtype)])
        params = jax.tree.map(lambda x: jnp.concatenate([x[rows]] * twins), self.all_params)
        sign = jnp.concatenate([jnp.ones((padded,), jnp.float32), -jnp.ones((padded,), jnp.float32)][:twins])
        if self.mesh is not None:
            batch, carry_sharding = self._shardings(params, key, size)
            params = jax.tree.map(lambda x: _put(x, batch), params)
            sign = _put(sign, batch)
            key = _put(key, NamedSharding(self.mesh, PartitionSpec()))
        if self._jitted is None:  # the shardings depend on the carry's structure, not on its shapes
            out = {} if self.mesh is None else {"out_shardings": carry_sharding}
            self._jitted = (jax.jit(self._start, static_argnums=2, **out),
                            jax.jit(self._chunk, static_argnums=(3, 4), **out))
        start, run_chunk = self._jitted
        carry = start(params, key, size)
        self.memory = max(self.memory, {
            "env_params_bytes": _nbytes(params), "env_state_bytes": _nbytes(carry[0]),
            "agent_state_bytes": _nbytes(carry[3]),
            "observations_and_sums_bytes": _nbytes((carry[1], carry[2], carry[4])),
            "environments_in_batch": padded * twins}, key=lambda m: m.get("environments_in_batch", 0))
        step = 0
        while step < config.episode_length:
            steps = min(config.chunk_steps, config.episode_length - step)
            shape = (steps, size, padded)
            if shape not in self.compiled:
                start_time = time.perf_counter()
                self.compiled[shape] = run_chunk.lower(carry, params, sign, steps, size).compile()
                self.compile_seconds += time.perf_counter() - start_time
            start_time = time.perf_counter()
            carry = self.compiled[shape](carry, params, sign)
            jax.block_until_ready(carry)
            self.seconds += time.perf_counter() - start_time
            step += steps
            if progress is not None:
                progress.advance(task, steps)
        self.steps += size * twins * config.episode_length
        return {k: _host(v).astype(np.float64).reshape(twins, padded)[:, :size] for k, v in carry[4].items()}

    def run_buckets(self, indices: np.ndarray, key: jax.Array, buckets: int, progress, label: str) -> dict:
        """Runs ``indices`` (into the batch) in ``buckets`` batches of similar cost (one after the
        other, padded to one shape); sums float64[twins, len(indices)] in the order given."""
        buckets = max(1, min(buckets, len(indices)))
        if buckets > 1:
            params = jax.tree.map(lambda x: x[indices], self.all_params)
            order = np.argsort(_pilot_cost(self.env, params, jax.random.PRNGKey(self.config.seed + 2)), kind="stable")
        else:
            order = np.arange(len(indices))
        task = progress.add_task(f"measuring {self.actor.name} on {len(indices) * self.twins} environments{label}",
                                 total=self.config.episode_length * buckets)
        out: dict[str, np.ndarray] = {}
        for b, part in enumerate(np.array_split(order, buckets)):
            sums = self.run(indices[part], jax.random.fold_in(key, b), progress, task)
            for k, v in sums.items():
                out.setdefault(k, np.zeros((self.twins, len(indices)), np.float64))[:, part] = v
        return out


def _per_env(sums: dict[str, np.ndarray], config: MeasureConfig) -> dict[str, np.ndarray]:
    """Per-environment values from the sums; rows: environments in run order, then
    (antithetic) their twins in the same order."""
    sums = {k: v.reshape(-1) for k, v in sums.items()}
    T = config.episode_length
    discount_total = sum(config.gamma ** t for t in range(T))
    return {
        "average_reward": sums["reward"] / T,
        "discounted_value": sums["discounted"] / discount_total,
        "aligned_value": sums["aligned"] / T,
        "constrained_value": sums["constrained"] / T,
        "forbidden_rate": sums["violations"] / T,
        "lawful_probability": sums["lawful"] / T,
    }


def measure(config: MeasureConfig, sampled: tuple[Any, Any] | None = None) -> dict:
    """Run the measurement described by ``config``; returns (and writes) the report.

    ``sampled`` = (env, ParamBatch) reuses environments already drawn: ``num_envs`` of them
    with ``sampling=simple``, the phase-1 pool (at least ``num_envs``) with ``stratified``.

    Environments whose steps cost very different amounts (program environments: a vmapped
    cycle lasts as long as the slowest program of the batch) are sorted by the cost a short
    pilot run measures and run in ``buckets`` batches of similar cost, one after the other,
    with one compiled program; values are put back in the original order.
    """
    start_distributed(config)
    import aligned_rl.envs as envs  # its import touches a device: only after jax.distributed.initialize

    n = config.num_envs
    stratified = config.sampling == "stratified"
    if not stratified and n % config.buckets:
        raise ConfigError(f"num_envs={n} does not split into buckets={config.buckets} equal batches")
    pool_size = max(n, math.ceil(config.pool_factor * n)) if stratified else n
    try:
        constitution = envs.constitution(config.env, config.constitution)
        env, batch = sampled or envs.sample(config.env, jax.random.PRNGKey(config.seed), pool_size)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    have = int(jax.tree.leaves(batch.params)[0].shape[0])
    if stratified:
        if getattr(batch.params, "stratum", None) is None:
            raise ConfigError(f"sampling=stratified needs a family whose params carry a stratum (e.g. "
                              f"BF-programs); the params of {config.env!r} have none: use sampling=simple")
        if have < n:
            raise ConfigError(f"sampling=stratified: the pool holds {have} environments, fewer than num_envs={n}")
    elif have != n:
        raise ConfigError(f"the sampled batch holds {have} environments but num_envs={n}")
    mesh = _device_mesh(config)
    all_params = _with_episode_length(batch.params, config.episode_length)
    runner = _Runner(config, env, all_params, constitution, mesh)
    from rich.progress import Progress

    extra: dict[str, Any] = {}
    with Progress(disable=not config.progress or jax.process_index() != 0, transient=True) as progress:
        if not stratified:
            sums = runner.run_buckets(np.arange(n), jax.random.PRNGKey(config.seed + 1), config.buckets, progress, "")
            per_env = _per_env(sums, config)
            estimates = _estimates(config, per_env, n, batch.filtered_mass)
        else:
            per_env, estimates, extra = _measure_stratified(config, runner, batch, progress)
    report = _report(config, runner.actor, estimates, batch, n, runner.steps / runner.seconds, runner.seconds)
    report["compile_seconds"] = runner.compile_seconds
    report["buckets"] = config.buckets
    report["sampling"] = config.sampling
    report.update(extra)
    report["devices"] = {"mesh": 1 if mesh is None else int(mesh.devices.size), "processes": jax.process_count(),
                         "platform": jax.devices()[0].platform,
                         "padding": "a batch that does not split over the devices is padded with copies of "
                                    "its first environment; their results are dropped"}
    report["memory"] = _memory(runner)
    if jax.process_index() == 0:
        _write(config, report, per_env)
    else:
        report["output"] = None
    return report


def _memory(runner: _Runner) -> dict:
    """Bytes of the largest batch's arrays (global sizes, over all devices) and this
    process's peak resident memory; on accelerators also the devices' peak in use."""
    memory = dict(runner.memory)
    memory["per_env_state_total_bytes"] = sum(v for k, v in runner.memory.items() if k.endswith("_bytes"))
    memory["peak_rss_bytes"] = peak_rss_bytes()
    peaks = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        memory["device_peak_bytes_in_use"] = peaks
    return memory


def _measure_stratified(config: MeasureConfig, runner: _Runner, batch: Any, progress) -> tuple[dict, dict, dict]:
    """Two-phase stratified sampling with a pilot and Neyman allocation (module docstring)."""
    n, twins = config.num_envs, runner.twins
    strata = np.asarray(batch.params.stratum).reshape(-1)
    pool = strata.size
    pilot = max(2, int(round(config.pilot_fraction * n)))
    groups, members = collapse_strata(strata, pilot)
    rng = np.random.default_rng([config.seed, 0x5EED])
    runs: list[dict[str, np.ndarray]] = []

    def evaluate(indices: np.ndarray) -> np.ndarray:
        phase = len(runs)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 1000 + phase)
        sums = runner.run_buckets(indices, key, config.buckets, progress, f" (phase 2, {'pilot' if phase == 0 else 'rest'})")
        runs.append(sums)
        return estimation_units(_per_env(sums, config)["average_reward"], len(indices), config.antithetic)

    sample = adaptive_stratified_sample(groups, n, config.pilot_fraction, evaluate, rng)
    sums = {k: np.concatenate([r[k] for r in runs], axis=1) for k in METRICS}  # [twins, n] in run order
    per_env = _per_env(sums, config)
    estimates, tables = {}, {}
    for name, key in _estimated(config).items():
        e, rows = two_phase_stratified_estimate(estimation_units(per_env[key], n, config.antithetic), sample.groups,
                                                sample.pool_counts, batch.filtered_mass)
        for row in rows:
            row["strata"] = members[row.pop("stratum")]
        estimates[name], tables[name] = e, rows
    per_env.update(stratum=np.tile(strata[sample.indices], twins), group=np.tile(sample.groups, twins),
                   phase=np.tile(sample.phase, twins), pool_index=np.tile(sample.indices, twins))
    extra = {"stratified": {
        "pool_size": int(pool),
        "pilot_size": int(np.sum(sample.pilot_counts)),
        "strata": [{"strata": members[h], "pool_count": int(sample.pool_counts[h]),
                    "w": float(sample.pool_counts[h] / pool), "pilot_n": int(sample.pilot_counts[h]),
                    "pilot_sd": float(sample.pilot_std[h]), "n": int(sample.counts[h])}
                   for h in range(len(members))],
        "by_estimate": tables,
        "variance": "sum_h w_h^2 s_h^2 / n_h + (1/M) sum_h w_h (mean_h - mean)^2, M = pool_size "
                    "(double sampling for stratification, Cochran 1977 Section 12.2)",
        "allocated_for": "upsilon_average_reward",
    }}
    return per_env, estimates, extra


def _estimated(config: MeasureConfig) -> dict[str, str]:
    """The report's estimates and the per-environment values each is the mean of.  With a
    constitution, Sigma, V^C and the forbidden rate are over the same (antithetically
    symmetrised) prior as Upsilon: twins share every random number, so the pair, not the row,
    is the independent unit of every one."""
    names = {"upsilon_average_reward": "average_reward", "upsilon_discounted": "discounted_value"}
    if config.constitution != "none":
        names.update(sigma_aligned="aligned_value", forbidden_rate="forbidden_rate",
                     constrained_value="constrained_value")
    return names


def _estimates(config: MeasureConfig, per_env: dict, n: int, filtered_mass: float) -> dict[str, Estimate]:
    return {name: simple_estimate(estimation_units(per_env[key], n, config.antithetic), filtered_mass)
            for name, key in _estimated(config).items()}


def _report(config, actor, estimates, batch, n, sps, seconds) -> dict:
    return {
        "agent": actor.name,
        "env": config.env,
        "constitution": config.constitution,
        "num_envs": n,
        "antithetic": config.antithetic,
        "episode_length": config.episode_length,
        "seed": config.seed,
        "mean_description_bits": float(np.mean(np.asarray(batch.bits))),
        "estimates": {k: v.as_dict() for k, v in estimates.items()},
        "agent_env_steps_per_second": sps,
        "seconds": seconds,
        "config": dataclasses.asdict(config),
    }


def _write(config: MeasureConfig, report: dict, per_env: dict) -> None:
    out = Path(config.output) if config.output else Path("measurements") / (
        f"{Path(config.agent).name}-{config.env}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    report["output"] = str(out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    np.savez_compressed(out / "per_env.npz", **per_env)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(per_env["average_reward"], bins=50)
    ax.set_xlabel("average reward per step")
    ax.set_ylabel("environments")
    e = report["estimates"]["upsilon_average_reward"]
    ax.set_title(f"{report['agent']} on {report['env']}: Upsilon {e['mean']:.3f} "
                 f"[{e['ci95_low']:.3f}, {e['ci95_high']:.3f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "values.png")
    plt.close(fig)
