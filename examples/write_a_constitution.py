"""A constitution of your own: an action rule and a state rule on CartPole, judged in one state.

    python examples/write_a_constitution.py

To train with it, register it beside its environment (docs/constitutions.md).
"""

import jax
import jax.numpy as jnp

import aligned_rl.envs as envs
from aligned_rl.constitution import Constitution, judge


def too_fast(state, params):  # forbidden state
    return jnp.abs(state.x_dot) > params["max_speed"]


def push_right_on_the_right(obs, state, action, params):  # forbidden action
    return (obs[0] > params["edge"]) & (action == 1)


rules = Constitution(
    name="gentle",
    action_rules=(push_right_on_the_right,),
    state_rules=(too_fast,),
    params={"max_speed": jnp.float32(1.5), "edge": jnp.float32(1.0)},
)

if __name__ == "__main__":
    env, env_params = envs.make("CartPole-v1")
    obs, state = env.reset(jax.random.PRNGKey(0), env_params)
    print(judge(rules, rules.params, env, env_params, jax.random.PRNGKey(1), obs, state, 2))
