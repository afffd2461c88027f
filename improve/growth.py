"""Architecture edits from parent to child: function-preserving growth, and distillation.

Edits of a feed-forward policy (``ppo.network=mlp``, ``train/policies.py``), whose parameters
are ``{"actor": {"params": {Dense_0 .. Dense_k}}, "critic": {...}}``: trunk layers ``Dense_0 ..
Dense_{k-1}`` (widths ``ppo.hidden_sizes``) and the head ``Dense_k``.  Each edit returns
parameters with exactly the tree of a fresh init of the new architecture, so the learner
(``train.loop.train(config, start_from=params)``) continues from them like from any run.

* :func:`widen` adds units to trunk layers.  The child computes the parent's function for any
  activation: new units get random incoming weights and zero outgoing weights.  Exact in real
  arithmetic; in float32 the wider matrix products may sum in another order, so outputs agree
  to rounding (about float32's epsilon relative to their size), not always bit for bit.
* :func:`deepen` inserts an identity layer (zero bias) after a trunk layer.  Exact when the
  activation is idempotent on the previous layer's outputs: ReLU (``relu(relu(x)) = relu(x)``),
  bit for bit.  Under tanh it cannot be (``tanh(tanh(x)) != tanh(x)``) and is refused.
* :func:`distil` trains a child of any feed-forward architecture (smaller, or different) to
  imitate a parent on observations the parent visited (:func:`collect_observations`):
  KL(parent || child) of the action distributions, in nats, plus the squared difference of
  the values.  Never exact; its report gives both before and after.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

from aligned_rl.train.policies import Policy
from aligned_rl.train.rollout import Rollout

NETWORKS = ("actor", "critic")
#: gain of the trunk layers' orthogonal init (``train/policies.py``): new units' incoming weights use it too
TRUNK_GAIN = float(np.sqrt(2.0))


# ------------------------------------------------------------------------------ the parameter tree
def _dense(net: dict, i: int) -> dict:
    return net["params"][f"Dense_{i}"]


def _check_sizes(params: Any, hidden_sizes: Sequence[int]) -> None:
    """Raise ValueError unless ``params`` is a feed-forward policy's tree with these trunk widths."""
    for name in NETWORKS:
        if name not in params or "params" not in params[name]:
            raise ValueError(f"expected a feed-forward policy's parameters {{'actor', 'critic'}} (ppo.network=mlp); "
                             f"got keys {sorted(params)}")
        layers = params[name]["params"]
        if sorted(layers) != sorted(f"Dense_{i}" for i in range(len(hidden_sizes) + 1)):
            raise ValueError(f"the {name} has layers {sorted(layers)}, not the {len(hidden_sizes)} trunk layers and "
                             f"head of hidden_sizes={list(hidden_sizes)}")
        widths = [int(layers[f"Dense_{i}"]["kernel"].shape[1]) for i in range(len(hidden_sizes))]
        if widths != [int(h) for h in hidden_sizes]:
            raise ValueError(f"the {name}'s trunk widths are {widths}, not hidden_sizes={list(hidden_sizes)}")


def param_count(params: Any) -> int:
    """How many numbers ``params`` holds (any pytree of arrays)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------ widen
def widen(params: Any, hidden_sizes: Sequence[int], new_sizes: Sequence[int], key: jax.Array) -> Any:
    """The parent's function in a wider network: trunk layer i of actor and critic goes from
    ``hidden_sizes[i]`` to ``new_sizes[i] >= hidden_sizes[i]`` units.

    Old weights are kept exactly.  A new unit's incoming weights (from the previous layer's
    old units) are normal with standard deviation sqrt(2) / sqrt(fan-in), the second moments
    of the trunk's orthogonal init (gain sqrt(2)) where fan-in >= width; its bias is zero; its
    outgoing weights (its row of the next layer's kernel, head included) are zero.  No old
    unit and no output reads a new unit, so the network computes the same function whatever
    the activation.  Gradients still
    reach the new units' outgoing weights (d loss / dW[new, j] = a_new * delta_j, with a_new
    nonzero and different per unit), so the first update puts them to use.

    Why not Net2Net's split-and-noise (Chen et al. 2016: copy a unit, halve its outgoing
    weights, add noise to break the symmetry): the noise makes the child only approximately
    the parent, and without it the copies stay identical under gradient descent.  Here the
    function is exact and the symmetry is broken by the random incoming weights, which make
    every new unit compute something different from every other.

    Exact in real arithmetic; in float32 the wider matrix products add the new units' zero
    contributions and may sum in another order, so outputs agree to rounding (about float32's
    epsilon relative to their size), not always bit for bit.
    """
    hidden_sizes = [int(h) for h in hidden_sizes]
    new_sizes = [int(h) for h in new_sizes]
    _check_sizes(params, hidden_sizes)
    if len(new_sizes) != len(hidden_sizes) or any(n < h for n, h in zip(new_sizes, hidden_sizes)):
        raise ValueError(f"new_sizes={new_sizes} must have one width per trunk layer of hidden_sizes={hidden_sizes}, "
                         "none narrower (to shrink a network, distil it into a smaller one)")
    # (input rows, new columns) of each trunk layer's new units, for actor and critic
    blocks = [(int(_dense(params[name], i)["kernel"].shape[0]), new_sizes[i] - hidden_sizes[i])
              for name in NETWORKS for i in range(len(hidden_sizes))]
    # one draw for every new weight (one compiled program), cut into the blocks in order
    draws = np.asarray(jax.random.normal(key, (sum(r * c for r, c in blocks),), jnp.float32))
    offset, out = 0, {}
    for name in NETWORKS:
        layers = {}
        for i in range(len(hidden_sizes) + 1):
            kernel, bias = np.asarray(_dense(params[name], i)["kernel"]), np.asarray(_dense(params[name], i)["bias"])
            in_old, out_old = kernel.shape
            in_new = in_old if i == 0 else new_sizes[i - 1]
            out_new = out_old if i == len(hidden_sizes) else new_sizes[i]  # the head keeps its outputs
            # rows of new inputs (the previous layer's new units) stay zero: zero outgoing weights
            grown = np.zeros((in_new, out_new), kernel.dtype)
            grown[:in_old, :out_old] = kernel
            # columns of new units: random incoming weights from the old inputs
            size = in_old * (out_new - out_old)
            block = draws[offset:offset + size].reshape(in_old, out_new - out_old)
            grown[:in_old, out_old:] = block * TRUNK_GAIN / np.sqrt(in_old)
            offset += size
            grown_bias = np.zeros((out_new,), bias.dtype)
            grown_bias[:out_old] = bias
            layers[f"Dense_{i}"] = {"kernel": jnp.asarray(grown), "bias": jnp.asarray(grown_bias)}
        out[name] = {"params": layers}
    assert offset == draws.size
    return out


# ------------------------------------------------------------------------------ deepen
def deepen(params: Any, hidden_sizes: Sequence[int], activation: str, key: jax.Array,
           position: int | None = None) -> tuple[Any, list[int]]:
    """The parent's function with one more trunk layer: (params, new hidden sizes).

    The new layer becomes trunk layer ``position`` (1 .. len(hidden_sizes); default: after the
    last trunk layer), as wide as the layer before it, with identity kernel and zero bias;
    the layers after it are renumbered (``Dense_i`` -> ``Dense_{i+1}``).  It computes
    act(h) of the previous layer's output h = act(z), which is h exactly when the activation
    is idempotent: ReLU (relu(relu(z)) = relu(z)), bit for bit.  Under tanh it is not
    (tanh(tanh(z)) != tanh(z)) and the edit is refused with ValueError.  It cannot go first
    (``position=0``): raw observations are not outputs of a ReLU.  ``key`` is not used (the
    identity needs no randomness; every edit takes one).
    """
    del key
    hidden_sizes = [int(h) for h in hidden_sizes]
    _check_sizes(params, hidden_sizes)
    if activation == "tanh":
        raise ValueError(
            "deepen is function-preserving only for an activation with act(act(x)) = act(x), and "
            "tanh(tanh(x)) != tanh(x), so an identity layer would change what a tanh network computes. "
            "Widen it instead (improve.growth.widen is exact for any activation), or evolve agents trained "
            "with ppo.activation=relu")
    if activation != "relu":
        raise ValueError(f"unknown activation {activation!r}; ppo.activation is 'tanh' or 'relu'")
    k = len(hidden_sizes)
    position = k if position is None else int(position)
    if not 1 <= position <= k:
        raise ValueError(f"position={position} must be in 1..{k}: the new layer follows a trunk layer "
                         "(before the first, it would apply ReLU to raw observations)")
    width = hidden_sizes[position - 1]
    out = {}
    for name in NETWORKS:
        old = params[name]["params"]
        dtype = old["Dense_0"]["kernel"].dtype
        layers = {f"Dense_{i}": old[f"Dense_{i}"] for i in range(position)}
        layers[f"Dense_{position}"] = {"kernel": jnp.eye(width, dtype=dtype), "bias": jnp.zeros((width,), dtype)}
        for i in range(position, k + 1):
            layers[f"Dense_{i + 1}"] = old[f"Dense_{i}"]
        out[name] = {"params": layers}
    return out, hidden_sizes[:position] + [width] + hidden_sizes[position:]


# ------------------------------------------------------------------------------ distillation
def collect_observations(agent: Any, env: Any, constitution: Any, params: Any, key: jax.Array,
                         steps: int) -> jax.Array:
    """What ``agent`` (a ``train.agents.PolicyAgent``) sees running ``steps`` steps of the one
    rollout in every environment of ``params`` [N] (episodes restart where they end), as
    observations [steps * N, ...] (step-major).  Under Saute they carry the budget left, as
    the agent sees them."""
    n = jax.tree.leaves(params)[0].shape[0]
    num_actions = int(env.action_space(env.default_params).n)

    @jax.jit
    def run(agent, params, key):
        rollout = Rollout(agent, env, constitution, num_actions, saute=getattr(agent, "saute", None))
        k_reset, k_run = jax.random.split(key)
        keys = jax.random.split(k_reset, n)
        carry = rollout.start(params, keys, keys, k_run)
        _, stacked = rollout.run(params, constitution.params, carry, steps)
        return stacked.obs.reshape((steps * n,) + stacked.obs.shape[2:])

    return run(agent, params, key)


def _check_feedforward(policy: Policy, role: str) -> None:
    if policy.adaptive or policy.needs_sequences or not policy.supports_invariances:
        raise ValueError(f"the {role} ({type(policy).__name__}) does not decide from the observation alone; "
                         "distillation on observations needs feed-forward policies (ppo.network=mlp)")


def _outputs(policy: Policy, params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logits [B, A], values [B]) of a feed-forward policy."""
    b = obs.shape[0]
    _, logits, values = policy.step(params, policy.initial_carry(b), obs, jnp.zeros((b,), jnp.float32),
                                    jnp.ones((b,), bool))
    return logits, values


def kl_nats(parent_logits: jax.Array, child_logits: jax.Array) -> jax.Array:
    """KL(parent || child) [B] in nats, exact over the discrete actions."""
    log_p = jax.nn.log_softmax(parent_logits)
    log_q = jax.nn.log_softmax(child_logits)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def distil(parent_policy: Policy, parent_params: Any, child_policy: Policy, child_params: Any,
           observations: jax.Array, steps: int, lr: float, key: jax.Array, minibatch_size: int = 256,
           value_weight: float = 1.0) -> tuple[Any, dict]:
    """Train the child to imitate the parent on ``observations`` [N, ...]: ``steps`` adam steps
    (learning rate ``lr``) on minibatches of ``minibatch_size`` drawn without replacement, of

        mean KL(parent || child) in nats + value_weight * mean (v_parent - v_child)^2,

    all in one jitted scan.  Both are feed-forward policies with the same actions; their
    architectures may differ.  Returns (child params, report): the report's ``kl_*`` are the
    mean KL in nats and ``value_error_*`` the mean squared value difference over all of
    ``observations``, before and after.
    """
    _check_feedforward(parent_policy, "parent")
    _check_feedforward(child_policy, "child")
    if parent_policy.num_actions != child_policy.num_actions:
        raise ValueError(f"the parent has {parent_policy.num_actions} actions and the child "
                         f"{child_policy.num_actions}; a child imitates a parent over the same actions")
    observations = jnp.asarray(observations)
    n = observations.shape[0]
    batch = min(int(minibatch_size), n)
    target_logits, target_values = jax.jit(lambda p, o: _outputs(parent_policy, p, o))(parent_params, observations)

    def losses(params, obs, logits, values):
        child_logits, child_values = _outputs(child_policy, params, obs)
        return kl_nats(logits, child_logits).mean(), jnp.mean((values - child_values) ** 2)

    def loss(params, obs, logits, values):
        kl, value_error = losses(params, obs, logits, values)
        return kl + value_weight * value_error

    @jax.jit
    def fit(params, key):
        state = TrainState.create(apply_fn=None, params=params, tx=optax.adam(lr))

        def body(state, k):
            idx = jax.random.choice(k, n, (batch,), replace=False)
            grads = jax.grad(loss)(state.params, observations[idx], target_logits[idx], target_values[idx])
            return state.apply_gradients(grads=grads), None

        state, _ = jax.lax.scan(body, state, jax.random.split(key, steps))
        return state.params

    measure = jax.jit(lambda p: losses(p, observations, target_logits, target_values))
    kl_before, value_before = measure(child_params)
    child_params = fit(child_params, key)
    kl_after, value_after = measure(child_params)
    report = {
        "kl_unit": "nats",
        "kl_before": float(kl_before),
        "kl_after": float(kl_after),
        "value_error_before": float(value_before),
        "value_error_after": float(value_after),
        "steps": int(steps),
        "minibatch_size": batch,
        "observations": int(n),
        "parent_param_count": param_count(parent_params),
        "child_param_count": param_count(child_params),
    }
    return child_params, report
