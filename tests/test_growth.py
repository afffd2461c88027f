"""Architecture edits: widening and deepening preserve the function, the grown parameters train,
and distillation brings a smaller child close to its parent."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import aligned_rl.envs as envs
from aligned_rl.improve.growth import collect_observations, deepen, distil, param_count, widen
from aligned_rl.train.agents import PolicyAgent
from aligned_rl.train.config import load_config
from aligned_rl.train.loop import build_constitution, load_run, train
from aligned_rl.train.policies import FeedForwardPolicy, make_policy
from tests.conftest import CARTPOLE, TINY

OBS_DIM, NUM_ACTIONS = 7, 3


def _init(hidden, activation, seed=0, obs_dim=OBS_DIM, num_actions=NUM_ACTIONS):
    """A policy and a fresh init of it."""
    policy = FeedForwardPolicy(num_actions, hidden, activation)
    return policy, jax.jit(policy.init)(jax.random.split(jax.random.PRNGKey(seed)), jnp.zeros((1, obs_dim)))


def _random(hidden, activation, seed=0, obs_dim=OBS_DIM, num_actions=NUM_ACTIONS):
    """A policy and parameters of its shapes drawn at random (kernels ~ N(0, 1/fan-in), biases ~
    N(0, 0.1^2)): logits of order one and nonzero biases, unlike a fresh init, and nothing to compile."""
    policy = FeedForwardPolicy(num_actions, hidden, activation)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        scale = 1.0 / np.sqrt(leaf.shape[0]) if len(leaf.shape) == 2 else 0.1
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32)

    return policy, jax.tree.map(draw, _fresh_shapes(policy, obs_dim))


def _outputs(policy, params, obs):
    _, logits, values = jax.jit(lambda p, o: policy.step(p, (), o, None, None))(params, obs)
    return np.asarray(logits), np.asarray(values)


def _fresh_shapes(policy, obs_dim=OBS_DIM):
    """Shapes and dtypes of a fresh init of ``policy`` (nothing computed)."""
    return jax.eval_shape(policy.init, jax.random.split(jax.random.PRNGKey(0)), jnp.zeros((1, obs_dim)))


def _observations(seed, n=512, obs_dim=OBS_DIM):
    return 2.0 * jax.random.normal(jax.random.PRNGKey(seed), (n, obs_dim))


def _assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype


# ------------------------------------------------------------------------------ widen
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_widen_preserves_the_function_to_float32_rounding(activation):
    hidden, wider = [8, 6, 5], [13, 6, 20]
    parent, params = _random(hidden, activation)
    child_params = widen(params, hidden, wider, jax.random.PRNGKey(1))
    child = FeedForwardPolicy(NUM_ACTIONS, wider, activation)
    obs = _observations(2)
    for before, after in zip(_outputs(parent, params, obs), _outputs(child, child_params, obs)):
        # exact in real arithmetic; float32 matrix products of another width may round differently
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    # the architecture of a fresh init of the wider config, so the learner accepts it
    _assert_same_tree(child_params, _fresh_shapes(child))
    assert param_count(child_params) > param_count(params)
    for net in ("actor", "critic"):
        for i in range(len(hidden) + 1):
            old, new = params[net]["params"][f"Dense_{i}"], child_params[net]["params"][f"Dense_{i}"]
            rows, cols = old["kernel"].shape
            np.testing.assert_array_equal(new["kernel"][:rows, :cols], old["kernel"])  # old weights exactly
            np.testing.assert_array_equal(new["bias"][:cols], old["bias"])
            assert not np.any(new["kernel"][rows:])  # new units' outgoing weights: zero
            assert not np.any(new["bias"][cols:])
            if i < len(hidden) and wider[i] > hidden[i]:  # new units' incoming weights: random, all different
                incoming = np.asarray(new["kernel"][:rows, cols:])
                assert np.all(np.abs(incoming).sum(axis=0) > 0)
                assert np.unique(incoming.round(6), axis=1).shape[1] == incoming.shape[1]


def test_widen_new_units_learn_after_one_gradient_step():
    hidden, wider = [8, 6], [12, 10]
    _, params = _random(hidden, "tanh")
    child_params = widen(params, hidden, wider, jax.random.PRNGKey(1))
    child = FeedForwardPolicy(NUM_ACTIONS, wider, "tanh")
    obs = _observations(4, n=64)
    target = jax.random.randint(jax.random.PRNGKey(5), (64,), 0, NUM_ACTIONS)

    def loss(p):
        _, logits, values = child.step(p, (), obs, None, None)
        log_p = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(log_p, target[:, None], axis=1).mean() + jnp.mean((values - 1.0) ** 2)

    grads = jax.jit(jax.grad(loss))(child_params)
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, child_params, grads)
    for net in ("actor", "critic"):
        for i in range(1, len(hidden) + 1):  # the layer that reads trunk layer i - 1
            width, old_width = wider[i - 1], hidden[i - 1]
            kernel = np.asarray(stepped[net]["params"][f"Dense_{i}"]["kernel"])
            out_old = params[net]["params"][f"Dense_{i}"]["kernel"].shape[1]
            outgoing = kernel[old_width:width, :out_old]  # the new units' weights into the old units / head
            assert np.all(np.abs(outgoing).sum(axis=1) > 0), (net, i)
            assert len(np.unique(outgoing.round(7), axis=0)) == width - old_width  # symmetry broken


def test_widen_refuses_narrowing_and_wrong_sizes():
    _, params = _random([8, 6], "tanh")
    with pytest.raises(ValueError, match="narrower"):
        widen(params, [8, 6], [8, 4], jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="hidden_sizes"):
        widen(params, [8, 7], [8, 8], jax.random.PRNGKey(0))


# ------------------------------------------------------------------------------ deepen
@pytest.mark.parametrize("position", [None, 1, 2])
def test_deepen_relu_is_exact(position):
    hidden = [8, 6, 5]
    parent, params = _random(hidden, "relu")
    grown, new_hidden = deepen(params, hidden, "relu", jax.random.PRNGKey(1), position=position)
    at = len(hidden) if position is None else position
    assert new_hidden == hidden[:at] + [hidden[at - 1]] + hidden[at:]
    child = FeedForwardPolicy(NUM_ACTIONS, new_hidden, "relu")
    obs = _observations(2)
    for before, after in zip(_outputs(parent, params, obs), _outputs(child, grown, obs)):
        np.testing.assert_array_equal(after, before)  # bit for bit: relu(1 * h + 0) = h for h >= 0
    _assert_same_tree(grown, _fresh_shapes(child))
    for net in ("actor", "critic"):  # renumbered: the layers after the new one moved up by one
        for i in range(len(hidden) + 1):
            j = i if i < at else i + 1
            np.testing.assert_array_equal(grown[net]["params"][f"Dense_{j}"]["kernel"],
                                          params[net]["params"][f"Dense_{i}"]["kernel"])


def test_deepen_refuses_tanh_and_a_first_layer():
    _, params = _random([8, 6], "tanh")
    with pytest.raises(ValueError, match=r"tanh\(tanh\(x\)\) != tanh\(x\).*[Ww]iden.*ppo.activation=relu"):
        deepen(params, [8, 6], "tanh", jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="position"):
        deepen(params, [8, 6], "relu", jax.random.PRNGKey(0), position=0)


@pytest.mark.slow
def test_grown_parameters_train_in_the_learner(tmp_path):
    """Widen then deepen a relu parent; the learner starts from the result for a few updates."""
    base = [*TINY, "ppo.activation=relu", "ppo.total_timesteps=128"]
    parent_config = load_config(CARTPOLE, [*base, "ppo.hidden_sizes=[16]"])
    policy = make_policy(parent_config.ppo, 2)
    obs = jnp.zeros((1, 4))
    params = jax.jit(policy.init)(jax.random.split(jax.random.PRNGKey(0)), obs)
    grown = widen(params, [16], [24], jax.random.PRNGKey(1))
    grown, hidden = deepen(grown, [24], "relu", jax.random.PRNGKey(2))
    assert hidden == [24, 24]
    config = load_config(CARTPOLE, [*base, "ppo.hidden_sizes=[24,24]", f"run.dir={tmp_path / 'run'}"])
    child = make_policy(config.ppo, 2)
    _assert_same_tree(grown, _fresh_shapes(child, obs_dim=4))
    probe = _observations(6, n=128, obs_dim=4)
    for before, after in zip(_outputs(policy, params, probe), _outputs(child, grown, probe)):
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)
    summary = train(config, start_from=grown)  # non-finite values would raise TrainingDiverged
    assert summary["updates"] == 2
    trained = load_run(tmp_path / "run")[1].params
    for net in ("actor", "critic"):
        head = np.asarray(trained[net]["params"]["Dense_2"]["kernel"])
        assert not np.any(grown[net]["params"]["Dense_2"]["kernel"][16:])
        assert np.all(np.abs(head[16:]).sum(axis=1) > 0)  # the new units' outgoing weights learned


# ------------------------------------------------------------------------------ distillation
def test_distil_brings_a_smaller_child_close_to_its_parent():
    env_name = "CartPole-v1"
    spec = envs.spec(env_name)
    env = spec.make()
    constitution = build_constitution(load_config(CARTPOLE))
    parent, parent_params = _init([64, 64], "tanh", obs_dim=4, num_actions=2)
    # a decisive parent: its head scaled so that its actions are far from uniform
    head = parent_params["actor"]["params"]["Dense_2"]
    parent_params["actor"]["params"]["Dense_2"] = {**head, "kernel": head["kernel"] * 3000.0}
    env_params = spec.sample_params(env, jax.random.PRNGKey(1), 8).params
    obs = collect_observations(PolicyAgent(parent, parent_params), env, constitution, env_params,
                               jax.random.PRNGKey(2), 128)
    assert obs.shape == (128 * 8, 4)
    assert len(np.unique(np.asarray(obs), axis=0)) > 900  # it visited states, not one reset state
    order = np.asarray(jax.random.permutation(jax.random.PRNGKey(3), obs.shape[0]))
    train_obs, held_out = obs[order[:768]], obs[order[768:]]

    child, child_params = _init([16], "relu", seed=4, obs_dim=4, num_actions=2)
    assert param_count(child_params) < param_count(parent_params) / 10
    before = child_params
    child_params, report = distil(parent, parent_params, child, child_params, train_obs, steps=400, lr=1e-2,
                                  key=jax.random.PRNGKey(5), minibatch_size=128)

    def reference(p, o):  # KL in nats and squared value error, in float64
        pl, pv = (x.astype(np.float64) for x in _outputs(parent, parent_params, o))
        cl, cv = (x.astype(np.float64) for x in _outputs(child, p, o))
        log_p = pl - np.log(np.exp(pl - pl.max(1, keepdims=True)).sum(1, keepdims=True)) - pl.max(1, keepdims=True)
        log_q = cl - np.log(np.exp(cl - cl.max(1, keepdims=True)).sum(1, keepdims=True)) - cl.max(1, keepdims=True)
        return (np.exp(log_p) * (log_p - log_q)).sum(1).mean(), ((pv - cv) ** 2).mean()

    kl0, v0 = reference(before, train_obs)
    kl1, v1 = reference(child_params, train_obs)
    assert report["kl_unit"] == "nats"
    np.testing.assert_allclose([report["kl_before"], report["kl_after"]], [kl0, kl1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([report["value_error_before"], report["value_error_after"]], [v0, v1],
                               rtol=1e-4, atol=1e-6)
    assert report["observations"] == 768 and report["steps"] == 400
    assert kl0 > 0.1  # far apart to begin with
    assert kl1 < kl0 / 4 and v1 < v0 / 4
    held_kl0, held_v0 = reference(before, held_out)
    held_kl1, held_v1 = reference(child_params, held_out)
    assert held_kl1 < held_kl0 / 4 and held_v1 < held_v0 / 4


def test_distil_refuses_a_recurrent_policy_or_other_actions():
    parent, other = FeedForwardPolicy(NUM_ACTIONS, [8], "tanh"), FeedForwardPolicy(NUM_ACTIONS + 1, [8], "tanh")
    obs, key = _observations(0, n=16), jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="actions"):
        distil(parent, None, other, None, obs, 1, 1e-3, key)
    config = load_config(CARTPOLE, ["ppo.network=rl2", "ppo.hidden_sizes=[8]", "ppo.memory_size=8"])
    recurrent = make_policy(config.ppo, NUM_ACTIONS)
    with pytest.raises(ValueError, match="feed-forward"):
        distil(parent, None, recurrent, None, obs, 1, 1e-3, key)
