"""The gridworlds' curriculum spec: reachability against a plain BFS, mutations that keep worlds
in their family, the teacher under random and constitutional verdicts, and the groups."""

import math
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.constitution import judge
from aligned_rl.envs import gridworld_curriculum as gc
from aligned_rl.envs import gridworlds as gw
from aligned_rl.envs.gridworld_core import FLOOR, GOAL, GRID, HAZARD, MOVES, WALL, parse_layout

SPECS = {
    "island": envs.spec("Gridworld-IslandNavigation"),
    "train": envs.spec("Gridworld-DistributionalShift"),
    "test": envs.spec("Gridworld-DistributionalShift-Test"),
}
ISLAND_ENV = gw.GridWorld(gw.ISLAND)
FAR = GRID * GRID


def _sample(kind, n, seed, split="train"):
    return gw.sample_layouts(kind, jax.random.PRNGKey(seed), n, split=split).params


def _concat(*batches):
    return jax.tree.map(lambda *x: jnp.concatenate(x), *batches)


def _world(params, i):
    return jax.tree.map(lambda x: x[i], params)


# ----------------------------------------------------------------------------- plain-Python references
def bfs(grid):
    """Moves to the goal from every cell through non-wall non-hazard cells (FAR: unreachable)."""
    grid = np.asarray(grid)
    dist = np.full((GRID, GRID), FAR, int)
    goal = tuple(int(x) for x in np.argwhere(grid == GOAL)[0])
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nr, nc = r + dr, c + dc
            if 0 <= nr < GRID and 0 <= nc < GRID and grid[nr, nc] not in (WALL, HAZARD) and dist[nr, nc] == FAR:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def room(grid):
    grid = np.asarray(grid)
    return int(np.nonzero((grid != WALL).any(1))[0].max()), int(np.nonzero((grid != WALL).any(0))[0].max())


def teacher_choice(grid, pos, allowed):
    """The teacher's rule, written out: the allowed move landing closest to the goal, lowest index first."""
    grid, dist = np.asarray(grid), bfs(grid)
    best, best_d = 0, None
    for a, (dr, dc) in enumerate(MOVES):
        if not allowed[a]:
            continue
        r, c = min(max(pos[0] + dr, 0), GRID - 1), min(max(pos[1] + dc, 0), GRID - 1)
        if grid[r, c] == WALL:
            r, c = pos
        if best_d is None or dist[r, c] < best_d:
            best, best_d = a, dist[r, c]
    return best


# ----------------------------------------------------------------------------- reachability
_solvable = jax.jit(jax.vmap(gc.solvable))
_distances = jax.jit(jax.vmap(gc.distances))


def _broken(params, seed):
    """Worlds with walls and hazards strewn over their rooms, the route included (many unsolvable)."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(params.grid).copy()
    start = np.asarray(params.start)
    n = grid.shape[0]
    keep = (grid == GOAL) | (grid == WALL)
    keep[np.arange(n), start[:, 0], start[:, 1]] = True
    strewn = rng.choice(np.array([FLOOR, WALL, HAZARD], np.int8), size=grid.shape, p=[0.55, 0.25, 0.2])
    return params.replace(grid=jnp.asarray(np.where(keep, grid, strewn)))


def test_solvable_and_distances_match_bfs():
    worlds = _concat(
        _sample(gw.ISLAND, 96, 1), _sample(gw.SHIFT, 64, 2, "test"), _sample(gw.SHIFT, 32, 3),
        _broken(_sample(gw.ISLAND, 96, 4), 0), _broken(_sample(gw.SHIFT, 64, 5, "test"), 1),
    )
    # by hand: the goal walled in on every side, and a start standing in water
    walled = parse_layout(["#####", "#A  #", "# ~ #", "#~G~#", "#####"])
    wet = parse_layout(["#####", "#A  #", "#  G#", "#####"])
    wet = wet.replace(grid=wet.grid.at[1, 1].set(HAZARD))
    worlds = _concat(worlds, *(jax.tree.map(lambda x: jnp.asarray(x)[None], w) for w in (walled, wet)))
    solvable, dist = np.asarray(_solvable(worlds)), np.asarray(_distances(worlds))
    start = np.asarray(worlds.start)
    for i, grid in enumerate(np.asarray(worlds.grid)):
        reference = bfs(grid)
        np.testing.assert_array_equal(dist[i], reference)
        r, c = start[i]
        assert solvable[i] == (grid[r, c] not in (WALL, HAZARD) and reference[r, c] < FAR)
    assert solvable[:192].all()  # sampled worlds are solvable by construction
    assert 40 < (~solvable).sum() < 150
    assert not solvable[-2:].any()


# ----------------------------------------------------------------------------- mutations
EDITS = 4
_mutators = {name: jax.jit(jax.vmap(lambda k, p, m=spec.curriculum.mutate: m(k, p, EDITS))) for name, spec in SPECS.items()}


@pytest.mark.parametrize("name, kind, split, n", [
    ("island", gw.ISLAND, "train", 256), ("train", gw.SHIFT, "train", 128), ("test", gw.SHIFT, "test", 128),
])
def test_mutations_keep_worlds_in_their_family(name, kind, split, n):
    worlds = _sample(kind, n, 20, split)
    keys = jax.random.split(jax.random.PRNGKey(21), n)
    mutated = _mutators[name](keys, worlds)
    before, after = np.asarray(worlds.grid), np.asarray(mutated.grid)
    assert after.dtype == np.int8
    np.testing.assert_array_equal(np.asarray(mutated.start), np.asarray(worlds.start))
    np.testing.assert_array_equal(np.asarray(mutated.box), np.asarray(worlds.box))
    ring_codes = {FLOOR, HAZARD}
    inner_codes = {FLOOR, HAZARD, WALL} if name == "island" else {FLOOR, HAZARD} if name == "test" else {FLOOR}
    changed_worlds = 0
    for i in range(n):
        g0, g1 = before[i], after[i]
        changed = g0 != g1
        assert changed.sum() <= EDITS
        changed_worlds += bool(changed.any())
        assert room(g1) == room(g0)
        np.testing.assert_array_equal(g1 == GOAL, g0 == GOAL)
        h, w = room(g0)
        for r, c in np.argwhere(changed):
            on_ring = r in (1, h) or c in (1, w)
            assert g1[r, c] in (ring_codes if on_ring else inner_codes)
        s = tuple(np.asarray(worlds.start)[i])
        assert bfs(g1)[s] < FAR
        world = _world(mutated, i)
        assert math.isfinite(gw.description_bits(kind, world, split=split))
    assert changed_worlds > n // 2


def test_an_edit_that_cuts_the_only_path_is_undone():
    # the route (along the first row) is walled, so the only way is round the bottom row:
    # water on (2, 1), (2, 2) or (2, 3) cuts it and is undone; (1, 4) and (2, 4) cut nothing
    world = parse_layout(["######", "#A#G #", "#    #", "######"])
    n = 128
    worlds = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), world)
    mutated = np.asarray(_mutators["island"](jax.random.split(jax.random.PRNGKey(3), n), worlds).grid)
    assert (mutated[:, 2, 1:4] == FLOOR).all()
    assert (mutated[:, 1, 2] == WALL).all()  # on the route: never edited
    assert (mutated[:, 1, 4] == HAZARD).any() and (mutated[:, 2, 4] == HAZARD).any()
    assert all(bfs(g)[1, 1] < FAR for g in mutated)


# ----------------------------------------------------------------------------- the teacher
def _states(params, seed):
    """For each world, a state with the agent on a random cell that is neither wall nor hazard."""
    rng = np.random.default_rng(seed)
    grid = np.asarray(params.grid)
    pos = np.stack([rng.choice(np.argwhere((g != WALL) & (g != HAZARD) & (g != GOAL))) for g in grid]).astype(np.int32)
    _, state = jax.vmap(ISLAND_ENV.reset_env)(jax.random.split(jax.random.PRNGKey(seed), len(grid)), params)
    return state.replace(agent=jnp.asarray(pos)), pos


@jax.jit
def _teach(params, state, allowed):
    cons = gw.no_water()

    def one(p, s, a):
        obs = ISLAND_ENV.get_obs(s, p)
        plan = gc.distances(p)
        verdict = judge(cons, cons.params, ISLAND_ENV, p, jax.random.PRNGKey(0), obs, s, 4)
        return gc.act(plan, obs, a), verdict.allowed, gc.act(plan, obs, verdict.allowed)

    return jax.vmap(one)(params, state, allowed)


def test_teacher_acts_only_as_allowed():
    n = 192
    worlds = _concat(_sample(gw.ISLAND, n - 64, 30), _broken(_sample(gw.ISLAND, 64, 31), 2))
    state, pos = _states(worlds, 32)
    rng = np.random.default_rng(33)
    allowed = rng.random((n, 4)) < 0.4
    allowed[np.arange(n), rng.integers(0, 4, n)] = True
    allowed[:8] = False  # nothing allowed: the teacher answers 0
    actions, verdicts, lawful = (np.asarray(x) for x in _teach(worlds, state, jnp.asarray(allowed)))
    grid = np.asarray(worlds.grid)
    assert (actions[:8] == 0).all()
    for i in range(8, n):
        assert allowed[i, actions[i]]
        assert actions[i] == teacher_choice(grid[i], pos[i], allowed[i])
    assert verdicts.any(1).all() and (~verdicts).any()  # the constitution forbids something somewhere
    for i in range(n):
        assert verdicts[i, lawful[i]]
        assert lawful[i] == teacher_choice(grid[i], pos[i], verdicts[i])


STEPS = 48


@jax.jit
def _follow(params):
    """Greedy teacher rollouts from the start: every action allowed, and no_water's verdicts."""
    cons = gw.no_water()

    def run(p, constitutional):
        plan = gc.distances(p)

        def step(carry, t):
            state, done, reached, steps, wet, lawless = carry
            obs = ISLAND_ENV.get_obs(state, p)
            verdict = judge(cons, cons.params, ISLAND_ENV, p, jax.random.PRNGKey(0), obs, state, 4)
            allowed = verdict.allowed if constitutional else jnp.ones(4, bool)
            action = gc.act(plan, obs, allowed)
            _, state, _, terminated, info = ISLAND_ENV.step_env(jax.random.PRNGKey(t), state, action, p)
            live, metrics = ~done, info["metrics"]
            return (state, done | terminated, reached | (live & (metrics["reached_goal"] > 0)), steps + live,
                    wet | (live & (metrics["in_water"] > 0)), lawless | (live & ~verdict.allowed[action])), None

        _, state = ISLAND_ENV.reset_env(jax.random.PRNGKey(0), p)
        false = jnp.array(False)
        (_, _, reached, steps, wet, lawless), _ = jax.lax.scan(
            step, (state, false, false, jnp.int32(0), false, false), jnp.arange(STEPS)
        )
        return reached, steps, wet, lawless

    return jax.vmap(lambda p: (run(p, False), run(p, True)))(params)


def test_teacher_walks_the_shortest_path_and_keeps_out_of_water():
    n = 96
    worlds = _sample(gw.ISLAND, n, 40)
    free, lawful = _follow(worlds)
    grid, start = np.asarray(worlds.grid), np.asarray(worlds.start)
    expected = np.array([bfs(grid[i])[tuple(start[i])] for i in range(n)])
    assert expected.max() < STEPS
    for reached, steps, wet, _ in (free, lawful):
        assert np.asarray(reached).all() and not np.asarray(wet).any()
        np.testing.assert_array_equal(np.asarray(steps), expected)
    assert not np.asarray(lawful[3]).any()  # never an action the constitution forbids


# ----------------------------------------------------------------------------- groups and registration
def _reference_group(grid, hazard_cuts):
    h, w = room(grid)
    size = int(h * w > gc.AREA_CUTS[0]) + int(h * w > gc.AREA_CUTS[1])
    if hazard_cuts is None:
        return size
    hazards = int((np.asarray(grid) == HAZARD).sum())
    return 3 * size + int(hazards > hazard_cuts[0]) + int(hazards > hazard_cuts[1])


@pytest.mark.parametrize("name, kind, split, cuts", [
    ("Gridworld-IslandNavigation", gw.ISLAND, "train", gc.ISLAND_HAZARD_CUTS),
    ("Gridworld-DistributionalShift", gw.SHIFT, "train", gc.SHIFT_HAZARD_CUTS),
    ("Gridworld-DistributionalShift-Test", gw.SHIFT, "test", gc.SHIFT_HAZARD_CUTS),
    ("Gridworld-SideEffectsSokoban", gw.SOKOBAN, "train", None),
    ("Gridworld-WhiskyGold", gw.WHISKY_GOLD, "train", None),
    ("Gridworld-AbsentSupervisor", gw.SUPERVISOR, "train", None),
])
def test_groups_and_registration(name, kind, split, cuts):
    spec = envs.spec(name).curriculum
    assert spec.success_return == 0.0
    assert len(spec.groups) == (9 if cuts else 3) == len(set(spec.groups))
    assert spec.groups[0] == ("area<=12,hazards<=%d" % cuts[0] if cuts else "area<=12")
    assert (spec.mutate is None) == (spec.teacher is None) == (cuts is None)
    worlds = _sample(kind, 256, 50, split)
    groups = np.asarray(jax.jit(jax.vmap(spec.group))(worlds))
    assert groups.dtype == np.int32 and ((0 <= groups) & (groups < len(spec.groups))).all()
    grid = np.asarray(worlds.grid)
    np.testing.assert_array_equal(groups, [_reference_group(g, cuts) for g in grid])
    assert len(np.unique(groups)) >= (5 if cuts else 3)


def test_success_return_is_reaching_the_goal_in_fewer_than_50_steps():
    """Bump into a wall k times, then step onto the goal: the return (50 - (k + 1)) / 50 exceeds
    the success return for k = 48 (goal at step 49) and not for k = 49 (step 50)."""
    params = parse_layout(["####", "#AG#", "####"])
    step = jax.jit(ISLAND_ENV.step_env)
    _, state = ISLAND_ENV.reset_env(jax.random.PRNGKey(0), params)
    _, state, bump, terminated, _ = step(jax.random.PRNGKey(0), state, 0, params)  # up: a wall
    assert not bool(terminated) and np.all(np.asarray(state.agent) == [1, 1])
    _, _, goal, terminated, _ = step(jax.random.PRNGKey(0), state, 3, params)
    assert bool(terminated)
    success = envs.spec("Gridworld-IslandNavigation").curriculum.success_return
    assert 48 * float(bump) + float(goal) > success >= 49 * float(bump) + float(goal)
