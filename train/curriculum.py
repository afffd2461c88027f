"""Which environments the learner trains on: a level buffer, prioritised replay, mutations,
error analysis and a teacher, all inside the compiled training program.

A *level* is one environment's params (a family's ``EnvParams``).  With ``curriculum.enabled``
the learner's ``num_envs`` environments ("slots") get new levels every ``level_updates``
updates (their episodes restart there; in between, a slot's episodes restart on its level),
and the curriculum decides which:

* **new** levels come from a *pool* drawn once from the family's prior on the host
  (``pool_size`` of them; the same generator the prior is, drawn ahead so that nothing leaves
  the device), in order; with ``error_analysis`` half of them are drawn from the groups where the
  agent fails (see below);
* **replay** (with probability ``replay_prob`` once the buffer holds a batch of levels) draws
  levels from the buffer as prioritised level replay does (Jiang et al. 2021, "Prioritized
  Level Replay"): ``P = (1 - rho) P_score + rho P_stale``, with ``P_score`` proportional to
  ``(1 / rank)^(1 / temperature)`` of the levels' scores and ``P_stale`` to the updates since
  each was last trained on;
* **mutate** (``mutate: true``, ACCEL: Parker-Holder et al. 2022): after every replay, the next
  levels are the replayed ones with ``edits`` random edits each (the family's ``mutate``, which
  keeps a world valid and solvable).

A level's score, from the updates it was trained on (``score``): ``value_loss``, the mean
positive GAE advantage (PLR's positive value loss); ``max_mc``, the mean of the best episode
return ever reached on the level minus the value of each state (Jiang et al. 2021, robust
PLR; a level where no episode has ended scores by ``value_loss``); ``learnability``,
``p (1 - p)`` for the agent's own success rate p there (Rutherford et al. 2024, "No Regrets").
A replayed level's entry is rescored; a new or mutated level enters the buffer when there is
room or when its score beats the lowest in the buffer, which it replaces.

**Error analysis** (``error_analysis``): every level belongs to one of the family's groups
(``CurriculumSpec.group``: size, hazards, length strata, ...).  The curriculum keeps, per group,
a moving average of the failure rate (1 - success rate) of the levels it trained on, and
counts levels, failures and forbidden actions per group and per quarter of the run (the
report's "how the training mix moved").  Half the new levels are drawn from the pool's levels
of a group chosen with probability proportional to its failure rate (the prior conditioned
on the failing group), and with mutations on, mutations are of replayed levels (which the
scores chose for their failures).

**A teacher** (``teacher.enabled``, a family's ``CurriculumSpec.teacher``): a replayed level
whose failure rate is still above ``teacher.failure`` after ``teacher.after_replays`` replays
is demonstrated: on every state the agent visits there the teacher names its action (an
allowed one: the teacher never demonstrates a forbidden action) and the loss adds
``teacher.weight`` times the cross-entropy of the policy against it.  Each such level counts as
one query; when a demonstrated level is replayed later, the change in its success rate is
counted (``teacher/success_gain``).

Everything lives in :class:`CurriculumState` inside the ``TrainState``, so checkpoints hold
the buffer and a resumed run continues bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from aligned_rl.envs.family import CurriculumSpec, EnvSpec
from aligned_rl.train.config import ConfigError, CurriculumConfig, TrainConfig

NEW, REPLAY, MUTATE = 0, 1, 2
KINDS = ("new", "replay", "mutate")
PHASES = 4  # the run is cut into quarters for the report's training mix
GROUP_EMA = 0.1  # weight of the latest levels in a group's failure rate
SCORES = ("value_loss", "max_mc", "learnability")


class Pool(NamedTuple):
    """Levels drawn from the family's prior up front, and each one's group."""

    params: Any  # [P] levels
    group: jax.Array  # int32 [P]
    order: jax.Array  # int32 [P]: the pool's indices sorted by group
    first: jax.Array  # int32 [G]: where each group starts in ``order``
    count: jax.Array  # int32 [G]: how many of the pool's levels each group holds


class CurriculumState(struct.PyTreeNode):
    """The level buffer, the levels the slots train on, and the counts the report reads."""

    levels: Any  # [B] buffered levels
    score: jax.Array  # float32 [B]
    last: jax.Array  # int32 [B]: the switch at which the level was last trained on
    valid: jax.Array  # bool [B]
    max_return: jax.Array  # float32 [B]: best episode return reached on the level (-inf: none)
    failure: jax.Array  # float32 [B]: the failure rate when last trained on
    replays: jax.Array  # int32 [B]
    taught: jax.Array  # bool [B]: demonstrated, and not replayed since
    taught_failure: jax.Array  # float32 [B]: its failure rate when demonstrated
    level_group: jax.Array  # int32 [B]

    slots: Any  # [N] the levels the environments train on now
    slot_entry: jax.Array  # int32 [H]: buffer entry of each level (-1: not from the buffer); H = N, or N/2 with twins
    slot_group: jax.Array  # int32 [H]
    slot_taught: jax.Array  # bool [H]
    kind: jax.Array  # int32: NEW, REPLAY or MUTATE
    acc: dict  # float32 [H] each: what the slots' levels did since they were chosen

    switches: jax.Array  # int32: level choices made
    pool_next: jax.Array  # int32: the pool's next unused level
    rng: jax.Array
    group_failure: jax.Array  # float32 [G]: moving average of the failure rate
    group_levels: jax.Array  # float32 [PHASES, G]: levels trained on per quarter of the run
    group_trials: jax.Array  # float32 [G]
    group_failures: jax.Array  # float32 [G]
    group_violations: jax.Array  # float32 [G]: forbidden actions
    group_steps: jax.Array  # float32 [G]
    counts: jax.Array  # float32 [3]: level choices of each kind
    queries: jax.Array  # int32: levels demonstrated
    demonstrated: jax.Array  # float32: states labelled by the teacher
    gain_sum: jax.Array  # float32: success-rate change of demonstrated levels at their next replay
    gain_count: jax.Array  # float32


ACC_KEYS = ("score", "steps", "trials", "successes", "violations", "max_return", "value_sum")


def groups_of(spec: EnvSpec) -> tuple[str, ...]:
    return spec.curriculum.groups if spec.curriculum is not None else ("all",)


def is_episodic(spec: EnvSpec) -> bool:
    """The family's episodes end (success is per episode; a family that declares no value is a
    plain gymnax task, whose episodes end), else success is per step."""
    return spec.value is None or spec.value.kind == "episodic"


def check_curriculum(config: TrainConfig, spec: EnvSpec) -> None:
    """The refusals that need the family: what the curriculum asks of it must exist."""
    cur = config.curriculum
    if not cur.enabled:
        return
    name = config.env.name
    has = spec.curriculum
    why = f"{name!r} declares no curriculum spec (no groups, success or mutations)"
    if cur.mutate:
        if has is None or has.mutate is None:
            raise ConfigError(f"curriculum.mutate=true: the params of {name!r} cannot be mutated (its family declares "
                              "no mutation that keeps its worlds valid); set curriculum.mutate=false")
    if cur.teacher.enabled and (has is None or has.teacher is None):
        raise ConfigError(f"curriculum.teacher.enabled=true: {name!r} has no teacher (a teacher is computed only where "
                          "the pure environment allows a competent one, e.g. a shortest-path planner on a "
                          "gridworld); set curriculum.teacher.enabled=false")
    if cur.score == "learnability" and has is None:
        raise ConfigError(f"curriculum.score=learnability needs the family's notion of success, and {why}; "
                          "use curriculum.score=value_loss")
    if cur.error_analysis and has is None:
        raise ConfigError(f"curriculum.error_analysis=true groups levels by the family's params, and {why}; "
                          "set curriculum.error_analysis=false")
    if cur.score == "max_mc" and not is_episodic(spec):
        raise ConfigError(f"curriculum.score=max_mc compares episode returns, and {name!r} is not an episodic family "
                          "(its episodes do not end); use curriculum.score=value_loss or learnability")


def curriculum_pool(spec: EnvSpec, params: Any) -> Pool:
    """The pool of levels ``params`` (drawn from the family's prior) with their groups."""
    size = jax.tree.leaves(params)[0].shape[0]
    if spec.curriculum is None:
        group = np.zeros((size,), np.int32)
    else:
        group = np.asarray(jax.jit(jax.vmap(spec.curriculum.group))(params), np.int32)
    count_groups = len(groups_of(spec))
    order = np.argsort(group, kind="stable").astype(np.int32)
    count = np.bincount(group, minlength=count_groups).astype(np.int32)
    first = (np.cumsum(count) - count).astype(np.int32)
    return Pool(params, jnp.asarray(group), jnp.asarray(order), jnp.asarray(first), jnp.asarray(count))


def _take(tree: Any, index: jax.Array) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def _where(pred: jax.Array, a: Any, b: Any) -> Any:
    """``a`` where ``pred`` [H] else ``b``, leaf by leaf (leaves with a leading axis H)."""
    return jax.tree.map(lambda x, y: jnp.where(pred.reshape(pred.shape + (1,) * (x.ndim - 1)), x, y), a, b)


def replay_probabilities(cur: CurriculumConfig, score: jax.Array, last: jax.Array, valid: jax.Array,
                         now: jax.Array) -> jax.Array:
    """PLR's replay distribution over the buffer: ``(1 - rho) P_score + rho P_stale``."""
    masked = jnp.where(valid, score, -jnp.inf)
    rank = jnp.empty_like(last).at[jnp.argsort(-masked)].set(jnp.arange(1, score.shape[0] + 1, dtype=last.dtype))
    weight = jnp.where(valid, (1.0 / rank.astype(jnp.float32)) ** (1.0 / cur.temperature), 0.0)
    p_score = weight / jnp.maximum(weight.sum(), 1e-30)
    stale = jnp.where(valid, (now - last).astype(jnp.float32), 0.0)
    total = stale.sum()
    p_stale = jnp.where(total > 0, stale / jnp.where(total > 0, total, 1.0), p_score)
    return (1.0 - cur.staleness_coef) * p_score + cur.staleness_coef * p_stale


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """The curriculum of one learner (static structure; the state is a :class:`CurriculumState`)."""

    config: TrainConfig
    spec: CurriculumSpec | None
    group_names: tuple[str, ...]
    num_updates: int
    episodic: bool  # the family's episodes end (success is per episode), else success is per step

    @classmethod
    def for_family(cls, config: TrainConfig, spec: EnvSpec) -> "Curriculum":
        """The curriculum ``config`` asks for in the family ``spec``."""
        return cls(config, spec.curriculum, groups_of(spec), config.num_updates, is_episodic(spec))

    @property
    def cur(self) -> CurriculumConfig:
        return self.config.curriculum

    @property
    def twins(self) -> bool:
        return self.config.env.antithetic

    @property
    def chosen(self) -> int:
        """Levels chosen at each switch: one per environment, or one per twin pair."""
        n = self.config.env.num_envs
        return n // 2 if self.twins else n

    def _slots(self, levels: Any) -> Any:
        return jax.tree.map(lambda x: jnp.concatenate([x, x]), levels) if self.twins else levels

    def _fold(self, x: jax.Array) -> jax.Array:
        """Per-environment sums [N] -> per-level sums [H] (twins add up)."""
        h = self.chosen
        return x[:h] + x[h:] if self.twins else x

    def _group(self, levels: Any) -> jax.Array:
        if self.spec is None:
            return jnp.zeros((self.chosen,), jnp.int32)
        return jax.vmap(self.spec.group)(levels).astype(jnp.int32)

    # ------------------------------------------------------------------ state
    def init(self, key: jax.Array, pool: Pool) -> CurriculumState:
        b, h, g = self.cur.buffer_size, self.chosen, len(self.group_names)
        example = _take(pool.params, jnp.zeros((b,), jnp.int32))
        first = _take(pool.params, jnp.arange(h) % pool.group.shape[0])
        return CurriculumState(
            levels=example,
            score=jnp.zeros((b,), jnp.float32),
            last=jnp.zeros((b,), jnp.int32),
            valid=jnp.zeros((b,), bool),
            max_return=jnp.full((b,), -jnp.inf, jnp.float32),
            failure=jnp.zeros((b,), jnp.float32),
            replays=jnp.zeros((b,), jnp.int32),
            taught=jnp.zeros((b,), bool),
            taught_failure=jnp.zeros((b,), jnp.float32),
            level_group=jnp.zeros((b,), jnp.int32),
            slots=self._slots(first),
            slot_entry=jnp.full((h,), -1, jnp.int32),
            slot_group=jnp.zeros((h,), jnp.int32),
            slot_taught=jnp.zeros((h,), bool),
            kind=jnp.asarray(NEW, jnp.int32),
            acc=self._fresh_acc(),
            switches=jnp.zeros((), jnp.int32),
            pool_next=jnp.zeros((), jnp.int32),
            rng=key,
            group_failure=jnp.full((g,), 0.5, jnp.float32),
            group_levels=jnp.zeros((PHASES, g), jnp.float32),
            group_trials=jnp.zeros((g,), jnp.float32),
            group_failures=jnp.zeros((g,), jnp.float32),
            group_violations=jnp.zeros((g,), jnp.float32),
            group_steps=jnp.zeros((g,), jnp.float32),
            counts=jnp.zeros((3,), jnp.float32),
            queries=jnp.zeros((), jnp.int32),
            demonstrated=jnp.zeros((), jnp.float32),
            gain_sum=jnp.zeros((), jnp.float32),
            gain_count=jnp.zeros((), jnp.float32),
        )

    def _fresh_acc(self) -> dict:
        """Nothing done yet on the slots' levels (no episode's return reached: -inf)."""
        zeros = {k: jnp.zeros((self.chosen,), jnp.float32) for k in ACC_KEYS}
        return zeros | {"max_return": jnp.full((self.chosen,), -jnp.inf, jnp.float32)}

    def switches_now(self, update: jax.Array) -> jax.Array:
        return update % self.cur.level_updates == 0

    def ends_now(self, update: jax.Array) -> jax.Array:
        return (update + 1) % self.cur.level_updates == 0

    # ----------------------------------------------------------- choosing
    def _new_levels(self, cs: CurriculumState, pool: Pool, key: jax.Array) -> Any:
        """[H] levels: the pool's next ones; with error analysis, the second
        half from the groups where the agent fails (the pool's levels of a group drawn with
        probability proportional to its failure rate)."""
        h, size = self.chosen, pool.group.shape[0]
        index = (cs.pool_next + jnp.arange(h)) % size
        if self.cur.error_analysis:
            k_group, k_member = jax.random.split(key)
            weight = jnp.where(pool.count > 0, cs.group_failure, 0.0)
            weight = jnp.where(weight.sum() > 0, weight, (pool.count > 0).astype(jnp.float32))
            groups = jax.random.choice(k_group, weight.shape[0], (h,), p=weight / weight.sum())
            member = jax.random.randint(k_member, (h,), 0, jnp.maximum(pool.count[groups], 1))
            conditioned = pool.order[pool.first[groups] + member]
            index = jnp.where(jnp.arange(h) >= h // 2, conditioned, index)
        return _take(pool.params, index)

    def _replayed(self, cs: CurriculumState, key: jax.Array) -> jax.Array:
        p = replay_probabilities(self.cur, cs.score, cs.last, cs.valid, cs.switches)
        return jax.random.choice(key, cs.score.shape[0], (self.chosen,), replace=False, p=p).astype(jnp.int32)

    def _mutated(self, cs: CurriculumState, key: jax.Array) -> Any:
        parents = jax.tree.map(lambda x: x[: self.chosen], cs.slots)
        keys = jax.random.split(key, self.chosen)
        return jax.vmap(lambda k, p: self.spec.mutate(k, p, self.cur.edits))(keys, parents)

    def choose(self, cs: CurriculumState, pool: Pool) -> CurriculumState:
        """The next levels for the slots: new, replayed or mutated."""
        cur = self.cur
        rng, k_kind, k_new, k_replay, k_mutate = jax.random.split(cs.rng, 5)
        new = self._new_levels(cs, pool, k_new)
        if cur.replay_prob == 0:  # domain randomisation: always new levels
            kind, entries, levels = jnp.asarray(NEW), jnp.zeros((self.chosen,), jnp.int32), new
        else:
            enough = cs.valid.sum() >= self.chosen
            replay = enough & (jax.random.uniform(k_kind) < cur.replay_prob)
            kind = jnp.where(replay, REPLAY, NEW)
            if cur.mutate:
                kind = jnp.where(cs.kind == REPLAY, MUTATE, kind)
            entries = self._replayed(cs, k_replay)
            levels = _where(jnp.full((self.chosen,), kind == REPLAY), _take(cs.levels, entries), new)
        if cur.mutate:
            levels = _where(jnp.full((self.chosen,), kind == MUTATE), self._mutated(cs, k_mutate), levels)
        is_replay = kind == REPLAY
        slot_entry = jnp.where(is_replay, entries, -1)
        taught = jnp.zeros((self.chosen,), bool)
        if cur.teacher.enabled:
            taught = is_replay & (cs.failure[entries] > cur.teacher.failure) & (cs.replays[entries] >= cur.teacher.after_replays)
        group = self._group(levels)
        phase = jnp.minimum(cs.switches * cur.level_updates * PHASES // self.num_updates, PHASES - 1)
        return cs.replace(
            slots=self._slots(levels),
            slot_entry=slot_entry,
            slot_group=group,
            slot_taught=taught,
            kind=kind.astype(jnp.int32),
            acc=self._fresh_acc(),
            pool_next=jnp.where(kind == NEW, (cs.pool_next + self.chosen) % pool.group.shape[0], cs.pool_next),
            rng=rng,
            group_levels=cs.group_levels.at[phase].add(jax.ops.segment_sum(
                jnp.ones((self.chosen,)), group, num_segments=len(self.group_names))),
            counts=cs.counts.at[kind].add(1.0),
            queries=cs.queries + taught.sum(),
        )

    # ------------------------------------------------------------ scoring
    def accumulate(self, cs: CurriculumState, steps: Any, value: jax.Array, advantages: jax.Array,
                   teacher_labelled: jax.Array | None) -> CurriculumState:
        """Add one rollout ([T, N] steps, values, GAE advantages) to the slots' running counts."""
        spec_return = self.spec.success_return if self.spec is not None else 0.0
        done = steps.done.astype(jnp.float32)
        if self.episodic:
            trials = done
            successes = done * (steps.finished_return > spec_return)
        else:
            trials = jnp.ones_like(done)
            successes = (steps.paid > 0).astype(jnp.float32)
        finished_max = jnp.max(jnp.where(steps.done, steps.finished_return, -jnp.inf), axis=0)
        if self.twins:
            h = self.chosen
            finished_max = jnp.maximum(finished_max[:h], finished_max[h:])
        acc = cs.acc
        acc = {
            "score": acc["score"] + self._fold(jnp.maximum(advantages, 0.0).sum(0)),
            "steps": acc["steps"] + self._fold(jnp.full(done.shape[1:], done.shape[0], jnp.float32)),
            "trials": acc["trials"] + self._fold(trials.sum(0)),
            "successes": acc["successes"] + self._fold(successes.sum(0)),
            "violations": acc["violations"] + self._fold(steps.violated.astype(jnp.float32).sum(0)),
            "max_return": jnp.maximum(acc["max_return"], finished_max),
            "value_sum": acc["value_sum"] + self._fold(value.sum(0)),
        }
        demonstrated = cs.demonstrated
        if teacher_labelled is not None:
            demonstrated = demonstrated + teacher_labelled.astype(jnp.float32).sum()
        return cs.replace(acc=acc, demonstrated=demonstrated)

    def scores(self, cs: CurriculumState) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(score, failure rate, best return) of the slots' levels from what they did."""
        acc = cs.acc
        steps = jnp.maximum(acc["steps"], 1.0)
        p = acc["successes"] / jnp.maximum(acc["trials"], 1.0)
        failure = jnp.where(acc["trials"] > 0, 1.0 - p, 1.0)
        entry = cs.slot_entry
        stored = jnp.where(entry >= 0, cs.max_return[jnp.maximum(entry, 0)], -jnp.inf)
        best = jnp.maximum(stored, acc["max_return"])
        positive_value_loss = acc["score"] / steps
        which = self.cur.score
        if which == "value_loss":
            score = positive_value_loss
        elif which == "max_mc":
            regret = best - acc["value_sum"] / steps
            score = jnp.where(jnp.isfinite(best), regret, positive_value_loss)
        else:
            score = jnp.where(acc["trials"] > 0, p * (1.0 - p), 0.0)
        return score, failure, best

    def finish(self, cs: CurriculumState) -> CurriculumState:
        """The slots' levels are done: rescore the replayed, insert the rest, update the groups."""
        score, failure, best = self.scores(cs)
        acc, g = cs.acc, len(self.group_names)
        entry = cs.slot_entry
        replayed = entry >= 0
        # the replayed levels' entries: rescored, marked fresh
        target = jnp.where(replayed, entry, cs.score.shape[0])  # out of range: dropped
        was_taught = cs.taught[jnp.maximum(entry, 0)] & replayed & ~cs.slot_taught
        gain = jnp.where(was_taught, cs.taught_failure[jnp.maximum(entry, 0)] - failure, 0.0)
        cs = cs.replace(
            score=cs.score.at[target].set(score, mode="drop"),
            last=cs.last.at[target].set(cs.switches, mode="drop"),
            max_return=cs.max_return.at[target].set(best, mode="drop"),
            failure=cs.failure.at[target].set(failure, mode="drop"),
            replays=cs.replays.at[target].add(1, mode="drop"),
            taught=cs.taught.at[target].set(cs.slot_taught, mode="drop"),
            taught_failure=cs.taught_failure.at[target].set(failure, mode="drop"),
            gain_sum=cs.gain_sum + gain.sum(),
            gain_count=cs.gain_count + was_taught.sum(),
        )
        if self.cur.replay_prob > 0:  # domain randomisation keeps no buffer: nothing is ever replayed
            cs = self._insert(cs, ~replayed, score, failure, best)
        # the groups
        seg = lambda x: jax.ops.segment_sum(x, cs.slot_group, num_segments=g)  # noqa: E731
        tried = acc["trials"] > 0
        levels_tried = seg(tried.astype(jnp.float32))
        mean_failure = seg(jnp.where(tried, failure, 0.0)) / jnp.maximum(levels_tried, 1.0)
        group_failure = jnp.where(levels_tried > 0,
                                  (1.0 - GROUP_EMA) * cs.group_failure + GROUP_EMA * mean_failure, cs.group_failure)
        return cs.replace(
            group_failure=group_failure,
            group_trials=cs.group_trials + seg(acc["trials"]),
            group_failures=cs.group_failures + seg(acc["trials"] - acc["successes"]),
            group_violations=cs.group_violations + seg(acc["violations"]),
            group_steps=cs.group_steps + seg(acc["steps"]),
            switches=cs.switches + 1,
        )

    def _insert(self, cs: CurriculumState, insert: jax.Array, score: jax.Array, failure: jax.Array,
                best: jax.Array) -> CurriculumState:
        """Each level with ``insert`` goes into a free entry, or replaces the lowest-scored entry
        when its score is higher (one at a time, in slot order)."""
        levels = jax.tree.map(lambda x: x[: self.chosen], cs.slots)

        def one(state, i):
            valid, buf_score = state.valid, state.score
            free = jnp.argmin(valid)  # the first free entry (valid is False there)
            lowest = jnp.argmin(jnp.where(valid, buf_score, jnp.inf))
            has_free = ~valid[free]
            target = jnp.where(has_free, free, lowest)
            ok = insert[i] & (has_free | (score[i] > buf_score[lowest]))
            target = jnp.where(ok, target, buf_score.shape[0])
            level = _take(levels, i)
            state = state.replace(
                levels=jax.tree.map(lambda buf, x: buf.at[target].set(x, mode="drop"), state.levels, level),
                score=buf_score.at[target].set(score[i], mode="drop"),
                last=state.last.at[target].set(state.switches, mode="drop"),
                valid=valid.at[target].set(True, mode="drop"),
                max_return=state.max_return.at[target].set(best[i], mode="drop"),
                failure=state.failure.at[target].set(failure[i], mode="drop"),
                replays=state.replays.at[target].set(0, mode="drop"),
                taught=state.taught.at[target].set(False, mode="drop"),
                level_group=state.level_group.at[target].set(state.slot_group[i], mode="drop"),
            )
            return state, None

        cs, _ = jax.lax.scan(one, cs, jnp.arange(self.chosen))
        return cs

    # ------------------------------------------------------------- teacher
    def demonstrations(self, cs: CurriculumState, obs: jax.Array, allowed: jax.Array,
                       all_forbidden: jax.Array) -> jax.Array:
        """The teacher's action on every step of the demonstrated slots, -1 elsewhere ([T, N]).
        The teacher plans and acts only in updates where some level is demonstrated."""
        teacher = self.spec.teacher
        taught = self._slots(cs.slot_taught)

        def ask(_):
            plans = jax.vmap(teacher.plan)(cs.slots)
            actions = jax.vmap(jax.vmap(teacher.act), in_axes=(None, 0, 0))(plans, obs, allowed).astype(jnp.int32)
            return jnp.where(taught[None, :] & ~all_forbidden, actions, -1)

        return jax.lax.cond(taught.any(), ask, lambda _: jnp.full(all_forbidden.shape, -1, jnp.int32), None)

    def metrics(self, cs: CurriculumState) -> dict[str, jax.Array]:
        out = {
            "curriculum/replay": (cs.kind == REPLAY).astype(jnp.float32),
            "curriculum/mutate": (cs.kind == MUTATE).astype(jnp.float32),
            "curriculum/buffer_filled": cs.valid.mean(),
            "curriculum/buffer_score": jnp.sum(jnp.where(cs.valid, cs.score, 0.0)) / jnp.maximum(cs.valid.sum(), 1),
        }
        if self.cur.teacher.enabled:
            out["teacher/queries"] = cs.queries.astype(jnp.float32)
            out["teacher/demonstrated"] = cs.demonstrated
        return out


def curriculum_report(cs: CurriculumState, group_names: tuple[str, ...]) -> dict:
    """What the error analysis found and how the training mix moved (host side, from a state)."""
    get = lambda x: np.asarray(x, np.float64)  # noqa: E731
    levels = get(cs.group_levels)
    shares = levels / np.maximum(levels.sum(1, keepdims=True), 1.0)
    trials, failures = get(cs.group_trials), get(cs.group_failures)
    violations, steps = get(cs.group_violations), get(cs.group_steps)
    groups = []
    for i, name in enumerate(group_names):
        groups.append({
            "group": name,
            "levels": float(levels[:, i].sum()),
            "failure_rate": float(failures[i] / trials[i]) if trials[i] > 0 else None,
            "forbidden_rate": float(violations[i] / steps[i]) if steps[i] > 0 else None,
            "failure_average": float(get(cs.group_failure)[i]),
            "share_by_quarter": [float(s) for s in shares[:, i]],
        })
    counts = get(cs.counts)
    valid = np.asarray(cs.valid)
    return {
        "groups": groups,
        "choices": {k: float(c) for k, c in zip(KINDS, counts)},
        "buffer_filled": float(valid.mean()),
        "buffer_groups": {name: int(np.sum(valid & (np.asarray(cs.level_group) == i)))
                          for i, name in enumerate(group_names)},
        "teacher_queries": int(cs.queries),
        "teacher_demonstrated_states": float(cs.demonstrated),
        "teacher_success_gain": float(cs.gain_sum / cs.gain_count) if float(cs.gain_count) > 0 else None,
        "teacher_gain_levels": float(cs.gain_count),
    }
