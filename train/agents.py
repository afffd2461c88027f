"""The agent protocol: what every agent offers the rollout, and the agents that ship.

An :class:`Agent` drives a whole batch of environments::

    state = agent.init(keys)                                             # keys [N]
    state, action, logits = agent.act(state, obs, reward, first, keys, verdict)

``reward`` is what the previous step paid each environment's agent (0 at the start),
``first`` marks observations that begin an episode, ``keys`` are one key for the whole
batch or one per environment, and ``verdict`` is the constitution's
:class:`~aligned_rl.constitution.Judgement` of the states.  ``logits`` are the agent's own
logits before any shield, or ``None`` when its action distribution is implicit (the online
baselines).  ``adaptive`` says whether the rewards an agent is paid can change what it
does; ``shields`` that it draws its actions from ``constitution.shield(logits, allowed)``.

Shipped: :class:`PolicyAgent` (a trained policy of any network in ``policies``, acting
without learning) and :class:`BaselineAgent` (an AIQ baseline learning online).
:func:`load_agent` restores a PPO run's policy without drawing its training environments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

import aligned_rl.envs as envs
from aligned_rl import baselines
from aligned_rl.constitution import UNCONSTRAINED, Judgement, shield
from aligned_rl.envs import IndexedObservations
from aligned_rl.envs.macros import with_macros
from aligned_rl.train import checkpoint
from aligned_rl.train.config import CONFIG_FILE, ConfigError, TrainConfig, load_run_config
from aligned_rl.train.policies import Policy, make_policy
from aligned_rl.train.rollout import Saute


class CannotAct(ConfigError):
    """The agent cannot act in this family (its observations or actions are not the ones it knows)."""


class Agent(Protocol):
    name: str
    adaptive: bool
    shields: bool

    def init(self, keys: jax.Array) -> Any: ...

    def act(self, state: Any, obs: jax.Array, reward: jax.Array, first: jax.Array, keys: jax.Array,
            verdict: Judgement) -> tuple[Any, jax.Array, jax.Array | None]: ...


def _one_key_per_row(keys: jax.Array) -> bool:
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return keys.ndim == 1
    return keys.ndim == 2


def sample_actions(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """Actions drawn from ``logits`` [N, A]: with one key for the batch, or one key per row."""
    if _one_key_per_row(keys):
        return jax.vmap(jax.random.categorical)(keys, logits)
    return jax.random.categorical(keys, logits)


class PolicyAgent(struct.PyTreeNode):
    """A policy with fixed parameters: draws (or, ``greedy``, takes the most likely) actions.
    A pytree whose only leaves are the parameters, so it passes through ``jit``."""

    policy: Policy = struct.field(pytree_node=False)
    params: Any
    shields: bool = struct.field(pytree_node=False, default=False)
    greedy: bool = struct.field(pytree_node=False, default=False)
    name: str = struct.field(pytree_node=False, default="policy")
    saute: Any = struct.field(pytree_node=False, default=None)  # rollout.Saute: it observes a violation budget
    macros: tuple = struct.field(pytree_node=False, default=())  # its tools (envs/macros.py): action A + m runs macro m

    @property
    def adaptive(self) -> bool:
        return self.policy.adaptive

    def init(self, keys: jax.Array) -> Any:
        return self.policy.initial_carry(keys.shape[0])

    def act(self, state, obs, reward, first, keys, verdict):
        state, logits = self.policy.act(self.params, state, obs, reward, first)
        acting = shield(logits, verdict.allowed) if self.shields else logits
        action = jnp.argmax(acting, axis=-1) if self.greedy else sample_actions(keys, acting)
        return self.policy.after_action(state, action), action, logits


class BaselineAgent(struct.PyTreeNode):
    """An AIQ baseline (``aligned_rl.baselines``) learning online in every environment of the
    batch.  Those that read observations (Q(lambda), Q_0, HLQ(lambda)) read them as an index, so
    the family must declare :class:`~aligned_rl.envs.IndexedObservations`; Random and Freq run
    on any family with discrete actions.  Build it with :meth:`make`."""

    agent: baselines.Baseline = struct.field(pytree_node=False)
    env: Any = struct.field(pytree_node=False)
    reward_scale: float = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False)
    indexed: bool = struct.field(pytree_node=False, default=True)  # observations read through the family's index
    adaptive: bool = struct.field(pytree_node=False, default=True)  # learns from the rewards it is paid
    shields: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def make(cls, name: str, env: Any, num_actions: int, overrides: dict, reward_scale: float,
             episode_length: int = 1000) -> "BaselineAgent":
        """The baseline ``name`` with the AIQ paper's parameters for ``episode_length`` (the steps
        it will act in each environment; ``baselines.paper_setting``) and ``overrides`` on top."""
        indexed = isinstance(env, IndexedObservations)
        if not indexed and baselines.BASELINES[name].reads_observations:
            raise CannotAct(
                f"the baseline {name!r} reads observations as an index, and environment {env.name!r} declares "
                "none (it is not an IndexedObservations family); measure a PPO run directory, or a baseline "
                "that ignores observations (random, freq)"
            )
        try:
            agent = baselines.make_baseline(name, env.num_observations if indexed else 1, num_actions,
                                            episode_length, **overrides)
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from err
        return cls(agent, env, reward_scale, name, indexed)

    def init(self, keys):
        return jax.vmap(self.agent.init)(keys)

    def act(self, state, obs, reward, first, keys, verdict):
        del first, keys, verdict  # AIQ's agents never restart, draw from their own keys, and know no rules
        if self.indexed:
            index = jax.vmap(self.env.observation_index)(obs)
        else:  # the agent ignores observations: one index for all of them
            index = jnp.zeros((reward.shape[0],), jnp.int32)
        state, action = jax.vmap(self.agent.step)(state, index, reward * self.reward_scale)
        return state, action, None


def restore_policy(run_dir: str | Path, which: str = "latest") -> tuple[Policy, Any, TrainConfig, int]:
    """(policy, parameters, config, update) of a PPO run's ``which`` checkpoint: the network is
    built from the run's config and only its parameters are read (no training environments
    are drawn, no training state is built)."""
    config = load_run_config(run_dir, ["run.devices=1"])
    try:
        env = envs.spec(config.env.name).make()
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from err
    try:  # its tools are actions too
        env, _ = with_macros(env, UNCONSTRAINED, config.env.macros)
    except ValueError as err:
        raise ConfigError(f"env.macros: {err}") from err
    env_params = env.default_params
    policy = make_policy(config.ppo, int(env.action_space(env_params).n))
    obs, _ = env.reset(jax.random.PRNGKey(0), env_params)
    saute = config.alignment.saute
    if saute.enabled:  # its input ends with the budget left
        obs = Saute(saute.budget, saute.penalty).observe(obs[None], jnp.full((1,), saute.budget))[0]
    like = jax.eval_shape(policy.init, jax.random.split(jax.random.PRNGKey(0)), obs[None])
    mngr = checkpoint.manager(run_dir, read_only=True)
    try:
        step = checkpoint.find_step(mngr, which)
        params = checkpoint.restore_params(mngr, step, like)
    finally:
        mngr.close()
    return policy, params, config, step


def load_agent(run_dir: str | Path, which: str = "latest", greedy: bool = False) -> PolicyAgent:
    """The policy of a PPO run's ``which`` ('latest' or 'best') checkpoint, acting as it was
    trained to (with its shield, if it had one).  Only the parameters are restored."""
    policy, params, config, _ = restore_policy(run_dir, which)
    saute = config.alignment.saute
    return PolicyAgent(policy, params, shields=config.alignment.shield, greedy=greedy, name=str(run_dir),
                       saute=Saute(saute.budget, saute.penalty) if saute.enabled else None,
                       macros=tuple(tuple(m) for m in config.env.macros))


def _interface(family: str) -> tuple:
    """(observation shape, observation dtype, number of actions) of a family's environments."""
    env = envs.spec(family).make()
    space = env.observation_space(env.default_params)
    return tuple(space.shape), str(jnp.dtype(space.dtype)), int(env.action_space(env.default_params).n)


def acting_steps(kind: str, episode_length: int, episodes: int, params: Any) -> int:
    """The steps an agent acts in each environment of a measurement (its horizon):
    ``episode_length`` in a continuing family; in an episodic one ``episodes`` x the longest
    episode ``params`` allow (a batch's, or before the draw the family's default params)."""
    if kind == "continuing":
        return int(episode_length)
    return int(episodes) * int(np.max(np.asarray(params.max_steps_in_episode)))


def make_agent(spec: str, env: Any, num_actions: int, env_name: str, overrides: dict | None = None,
               reward_scale: float = 100.0, episode_length: int = 1000) -> Any:
    """An agent by name: an AIQ baseline (``random``, ``freq``, ``q_lambda``, ``q_0``,
    ``hlq_lambda``) with the AIQ paper's parameters for ``episode_length`` (the steps it will act
    in each environment) and parameter ``overrides`` on top; a baseline in AIQ's command-line
    spelling (``HLQ_l,0,0,0.95,0.04,0.7``, ``Freq,0.07``, ``Random``: a spec with a comma, or
    one of AIQ's names; ``baselines.parse_aiq_spec``), whose parameters ``overrides`` may not
    set again; or the run directory of a PPO agent trained on ``env_name`` (or on a family with
    the same observations and actions).  :class:`CannotAct` where it cannot act."""
    overrides = dict(overrides or {})
    if spec in baselines.BASELINES:
        return BaselineAgent.make(spec, env, num_actions, overrides, reward_scale, episode_length)
    if Path(spec, CONFIG_FILE).is_file():
        if overrides:
            raise ConfigError(f"agent_params {sorted(overrides)} are baseline parameters, and {spec} is a PPO "
                              "run: they would change nothing; remove them")
        trained_on = load_run_config(spec).env.name
        if trained_on != env_name and _interface(trained_on) != _interface(env_name):
            raise CannotAct(f"{spec} was trained on {trained_on!r}, whose observations and actions "
                            f"{_interface(trained_on)} are not those of {env_name!r} {_interface(env_name)}")
        try:
            return load_agent(spec)
        except FileNotFoundError as err:
            raise ConfigError(f"{err}: nothing to measure") from err
    if "," in spec or spec in baselines.AIQ_NAMES:
        try:
            name, params = baselines.parse_aiq_spec(spec)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        twice = sorted(set(params) & set(overrides))
        if twice:
            raise ConfigError(f"agent {spec!r} sets {', '.join(twice)} already, and agent_params sets "
                              f"{'it' if len(twice) == 1 else 'them'} again: give each parameter once (or "
                              f"agent={name} with agent_params)")
        agent = BaselineAgent.make(name, env, num_actions, {**params, **overrides}, reward_scale, episode_length)
        return agent.replace(name=spec)
    raise ConfigError(
        f"agent {spec!r} is neither a baseline ({sorted(baselines.BASELINES)}), nor one in AIQ's spelling "
        f"({', '.join(baselines.AIQ_NAMES)}, e.g. HLQ_l,0,0,0.95,0.04,0.7), nor a run directory"
    )
