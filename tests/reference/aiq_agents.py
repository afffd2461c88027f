"""The four AIQ baseline agents in plain Python: Random, Freq, Q(lambda) and HLQ(lambda).

Written from the semantics of AIQ's agents with Python lists and floats (float64).  An agent
answers ``perceive(obs, reward, u) -> action``, AIQ's cycle: the reward just received is for
the previous action, then the next action is chosen.  ``u`` holds the step's three uniform
numbers in [0, 1) as the library documents them: ``u[0]`` breaks ties among greedy actions,
``u[1]`` decides exploration against epsilon, ``u[2]`` draws the exploratory (or softmax)
action.  Index draws floor(u * n) are taken in float32 (NumPy's float32) so that the same
uniform always gives the same index on both sides.  ``tables()`` returns the learned tables
under the library's names, for comparison.

The constructor takes the agent's parameters by name (``num_obs``, ``num_actions`` and, as
the agent needs them, ``init_q``, ``lam``, ``alpha``, ``epsilon``, ``gamma``, ``sel_mode``).
"""

from __future__ import annotations

import math

import numpy as np


def f32_index(u: float, n: int) -> int:
    """floor(u * n) computed in float32, kept below n."""
    return min(int(np.float32(u) * np.float32(n)), n - 1)


def ref_greedy(values: list[float], u: float) -> int:
    """AIQ's random_optimal, scanned left to right.

    The running best starts at -1e10 with one "slot"; a strictly larger value
    restarts the slot count at 1, an equal value adds a slot.  Then the k-th
    action holding the best value is chosen, k = floor(u * slots); when no
    action holds it (best never moved off -1e10) the answer is action 0.
    """
    best, slots = -1e10, 1
    for x in values:
        if x > best:
            best, slots = x, 1
        elif x == best:
            slots += 1
    k = f32_index(u, slots)
    holders = [i for i, x in enumerate(values) if x == best]
    return holders[k] if k < len(holders) else 0


def ref_softmax(values: list[float], u: float, temperature: float) -> int:
    """AIQ's soft_max: Boltzmann draw at the given temperature, floored at 1e-4."""
    temperature = max(temperature, 1e-4)
    scaled = [x / temperature for x in values]
    top, bottom = max(scaled), min(scaled)
    if bottom < -595.0 or top > 595.0:
        # keep exp() finite: move the top to 595, clip the bottom at -595
        scaled = [max(x - top + 595.0, -595.0) for x in scaled]
    weights = [math.exp(x) for x in scaled]
    norm = sum(weights) or 1e-20
    remaining = u
    for i, w in enumerate(weights):
        remaining -= w / norm
        if remaining < 0.0:
            return i
    return len(weights) - 1


class RefAgent:
    """Shared bits: AIQ's reset leaves previous observation and action at 0."""

    def __init__(self, num_obs: int, num_actions: int, **params):
        self.S, self.A = num_obs, num_actions
        self.p = params
        self.prev_obs, self.prev_action = 0, 0
        self.reset_tables()

    def reset_tables(self):
        pass

    def epsilon_greedy(self, values, u):
        greedy = ref_greedy(values, u[0])
        if u[1] < float(np.float32(self.p["epsilon"])):
            return greedy, f32_index(u[2], self.A)
        return greedy, greedy

    def tables(self) -> dict[str, list]:
        return {}


class RefRandom(RefAgent):
    def perceive(self, obs, reward, u):
        return f32_index(u[2], self.A)


class RefFreq(RefAgent):
    def reset_tables(self):
        self.total = [0.0] * self.A
        self.count = [1.0] * self.A

    def perceive(self, obs, reward, u):
        # the reward just received is credited to the action that earned it
        self.total[self.prev_action] += reward
        self.count[self.prev_action] += 1.0
        means = [t / c for t, c in zip(self.total, self.count)]
        _, action = self.epsilon_greedy(means, u)
        self.prev_action = action
        return action

    def tables(self):
        return {"total": self.total, "count": self.count}


class RefQLambda(RefAgent):
    def reset_tables(self):
        self.q = [[self.p["init_q"]] * self.A for _ in range(self.S)]
        self.e = [[0.0] * self.A for _ in range(self.S)]

    def perceive(self, obs, reward, u):
        alpha, gamma, lam = self.p["alpha"], self.p["gamma"], self.p["lam"]
        greedy, action = self.epsilon_greedy(self.q[obs], u)
        s, a = self.prev_obs, self.prev_action
        td = reward + gamma * self.q[obs][greedy] - self.q[s][a]
        self.e[s][a] += 1.0
        for i in range(self.S):
            for j in range(self.A):
                self.q[i][j] += alpha * td * self.e[i][j]
                # Watkins: traces survive only greedy steps
                self.e[i][j] = self.e[i][j] * gamma * lam if action == greedy else 0.0
        self.prev_obs, self.prev_action = obs, action
        return action

    def tables(self):
        return {"q": self.q, "e": self.e}


class RefHLQLambda(RefAgent):
    FLOOR = 1e-100

    def reset_tables(self):
        self.q = [[self.p["init_q"]] * self.A for _ in range(self.S)]
        self.e = [[0.0] * self.A for _ in range(self.S)]
        self.v = [[1.0] * self.A for _ in range(self.S)]

    def perceive(self, obs, reward, u):
        gamma, lam = self.p["gamma"], self.p["lam"]
        if self.p["sel_mode"] == 0:
            greedy, action = self.epsilon_greedy(self.q[obs], u)
        else:
            greedy = ref_greedy(self.q[obs], u[0])
            action = ref_softmax(self.q[obs], u[2], self.p["epsilon"])
        s, a = self.prev_obs, self.prev_action
        td = reward + gamma * self.q[obs][greedy] - self.q[s][a]
        self.e[s][a] += 1.0
        self.v[s][a] += 1.0
        v_next, e_next = self.v[obs][action], self.e[obs][action]
        rates = [[0.0] * self.A for _ in range(self.S)]
        for i in range(self.S):
            for j in range(self.A):
                d = 1.0 if (i, j) == (obs, action) else 0.0
                rates[i][j] = (self.e[i][j] / (v_next - gamma * e_next)
                               * (lam * v_next + d) / (lam * self.v[i][j] + d))
        for i in range(self.S):
            for j in range(self.A):
                self.v[i][j] = self.v[i][j] * lam if self.v[i][j] > self.FLOOR else self.FLOOR
                self.e[i][j] = self.e[i][j] * (gamma * lam) if action == greedy else 0.0
                self.q[i][j] += rates[i][j] * td
        self.prev_obs, self.prev_action = obs, action
        return action

    def tables(self):
        return {"q": self.q, "e": self.e, "v": self.v}
