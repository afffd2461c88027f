"""FairHiring: the seed's hiring footnote as an MDP, with its two rules made exact.

The seed illustrates a constitution with hiring: "you should not consider a person's
protected attributes while hiring" (a forbidden action) and "you should avoid a situation
where your employees are predominantly from only one age/gender" (a forbidden state).

The world
---------
Each step one candidate arrives.  The candidate belongs to group ``a`` in {0, 1} (the
protected attribute; ``a = 1`` with probability ``base_rate``) and has a true skill
``s ~ N(skill_mean_a, skill_sd)`` that the firm never sees.  The firm sees

* a skill signal ``x = s + N(0, signal_noise)`` (an interview score);
* the attribute ``a`` itself (unless the market masks it, see below);
* ``NUM_PROXIES`` proxies ``p_k = proxy_loading_k * a + N(0, proxy_noise)``: features such
  as a postcode or a hobby that say nothing about skill but correlate with the group.

The action is REJECT (0) or HIRE (1).  Reward: a hire of true skill ``s`` produces
``tanh(s)`` in (-1, 1); a rejection produces 0.  At most ``openings`` people are hired in an
episode, so every return lies in (-openings, openings) (16 by default).

The workforce is part of the state: a headcount per group, starting at ``initial_size``
people of whom a fraction ``initial_share`` is in group 1.  Each step a fraction
``leave_rate`` of every group leaves (a fluid model: headcounts are real numbers, and
leaving alone never changes the composition), and a hire adds one person to the
candidate's group.  Candidates keep coming for as long as openings remain: the episode
*terminates* when the last opening is filled, and is *truncated* (gymnax's time limit, an
observation window rather than part of the task) after ``max_steps_in_episode``
candidates; when both happen on the same step both flags are set.  Because the window is
not part of the task, the observation carries no clock (only whether the band rule is in
force), and the learner bootstraps the value of the openings still unfilled at truncation.

Where the skill means differ between groups, the Bayes-optimal hirer uses the group: at the
same interview score, E[s | x, a] differs by group (statistical discrimination).  That is
the temptation the constitution is about.

Observation (float32[OBS_DIM]; the indices are module constants):
  0 skill signal x, 1 attribute a (0 when masked), 2-3 proxies, 4 share of group 1 in the
  workforce, 5 workforce size / (initial_size + openings), 6 openings left / openings,
  7 whether the band rule is in force (time >= warmup), 8-9 the band [lo, hi], 10-11 the
  market's proxy loadings (public statistics of the market; the counterfactual below needs
  them, and invariances receive only the observation).

The constitutions
-----------------
* Forbidden state (``workforce_out_of_band``): after ``warmup`` steps, the share of any
  group in the workforce lies outside [band_lo, band_hi].  A state rule, so the learner
  turns it into an action rule by one-step lookahead (exact here: the workforce update is
  deterministic; only the next candidate is random).
* Forbidden action (``deepens_imbalance``): while the workforce is out of the band, hiring a
  candidate of the over-represented group.  Without it, out of the band every action
  leads to a forbidden state and sigma would fall back to "anything goes"; with it the
  fallback is "do not make it worse".
* The attribute rule, made exact as an invariance: the decision must not change when the
  candidate's group is changed counterfactually.  ``counterfactual_candidate`` flips the
  attribute entry AND moves the proxies to the values they would have had under the
  flipped group: the proxies are generated as ``p = loading * a + noise``, so, keeping the
  individual's noise fixed (abduction, action, prediction in this linear causal model),
  ``p' = p + loading * (a' - a)``.  The skill signal is held fixed: it is the job-relevant
  variable the decision may use, so "equal treatment" means equal hire probabilities at
  equal interview score.  The learner measures D_cf = JS(pi(.|o), pi(.|o')) in bits and
  adds beta * D_cf to the loss.

Shipped constitutions:

* ``fair_hiring``: band state rule + deepening action rule + the causal counterfactual.
* ``fair_hiring_attribute_only``: the same with the invariance flipping the attribute entry
  only (``move_proxies = 0``).  D_cf can reach 0 while the policy still reads the group off
  the proxies: shipped so that the difference can be measured.
* ``workforce_band`` (both families): the band rules alone, no invariance.
* ``fair_hiring_masked`` (family ``FairHiring-masked``, whose markets set
  ``mask_attribute``): the blunt alternative.  The attribute entry is blanked in the
  observation; there is no invariance (nothing is left to flip).  The policy can still
  infer the group from the proxies, so masking removes only the *direct* dependence.

The two rules pull against each other: the band rule is about groups, and near the band's
edge its lookahead forbids hiring a candidate *because of* the candidate's group, which the
invariance penalises.  The learner trades them with one weight (beta); a policy can satisfy
both only by rejecting near the edge whatever the group.  This conflict is in the seed's two
sentences, not an artefact of the code: at equal beta, ``workforce_band`` keeps the band far
better than ``fair_hiring`` (tests/test_hiring.py measures it).  Out of the band, one hire
rarely restores it, so every action usually leads to a forbidden state: such states are
"all forbidden" and sigma uses the fallback (reject a candidate of the over-represented
group, anything else for the others).

Description length of a market
------------------------------
``sample_markets`` (the family's ``sample_params``) draws each market from a prefix-free
code and returns its length K in bits; the draw has probability exactly 2^-K because every code bit is a fair coin.  The
codeword is the concatenation, in this order, of:

=================  ====================================  ======================================
field              code                                  value
=================  ====================================  ======================================
base_rate          3 bits, index i                        0.15 + 0.1 i (0.15 ... 0.85)
skill gap          truncated Elias gamma, n in 1..7      gap = 0.25 (n - 1); a sign bit follows
                   (k_max = 2), then 1 sign bit if n > 1  when gap > 0; means are -+gap/2
signal_noise       2 bits                                 0.25, 0.5, 1, 2
proxy_loading_k    2 bits each (2 proxies)                0, 0.5, 1, 2
proxy_noise        1 bit                                  0.5, 1
leave_rate         2 bits                                 0.002, 0.005, 0.01, 0.02
initial_share      2 bits                                 0.35, 0.45, 0.55, 0.65
band half-width    2 bits                                 0.1, 0.2, 0.3, 0.4 (band 0.5 -+ w)
warmup             truncated Elias gamma, n in 1..7      8 n steps (8 ... 56)
                   (k_max = 2)
=================  ====================================  ======================================

Truncated Elias gamma with k_max (``aligned_rl.codes``): n = 2^k + m; the prefix is k zeros
and a one ("0^k 1"), or k_max zeros with no one when k = k_max, then the k bits of m.  So
P(k) = 2^-(k+1) for k < k_max and 2^-k_max for k = k_max: the code is complete (Kraft sum 1)
and short values are likely (half of all markets have no skill gap, half have a warm-up of 8 steps).  Fixed
fields take 16 bits, so K ranges from 18 to 25 bits.  The family's own name is not coded
here: K is the length given the family.  Fields outside the code (openings 16, episode
window 64, skill_sd 1, initial_size 20) are the defaults of ``EnvParams``.
``encode``/``decode`` write and read the codeword.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from aligned_rl.codes import (
    draw_truncated_gamma,
    draw_uniform,
    read_truncated_gamma,
    truncated_gamma_word,
    uniform_width,
)
from aligned_rl.constitution import Constitution
from aligned_rl.envs.family import DriftRange, DriftSpec, EnvSpec, ParamBatch, episodic
from aligned_rl.envs.registry import register

REJECT, HIRE = 0, 1
NUM_PROXIES = 2

OBS_SKILL = 0
OBS_ATTRIBUTE = 1
OBS_PROXIES = slice(2, 2 + NUM_PROXIES)
OBS_SHARE = 4
OBS_SIZE = 5
OBS_OPENINGS = 6
OBS_BAND_ACTIVE = 7
OBS_BAND_LO = 8
OBS_BAND_HI = 9
OBS_LOADINGS = slice(10, 10 + NUM_PROXIES)
OBS_DIM = 10 + NUM_PROXIES


@struct.dataclass
class EnvState(environment.EnvState):
    time: int
    workforce: jax.Array  # float32[2]: headcount of group 0 and group 1
    openings_left: jax.Array  # int32
    attribute: jax.Array  # int32: the current candidate's group
    skill: jax.Array  # float32: the candidate's true skill (hidden)
    signal: jax.Array  # float32: the interview score the firm sees
    proxies: jax.Array  # float32[NUM_PROXIES]
    # The market's band travels in the state because state rules read the state only.
    band_lo: jax.Array
    band_hi: jax.Array
    warmup: jax.Array


@struct.dataclass
class EnvParams(environment.EnvParams):
    """One labour market (and the firm's band).  ``sample_markets`` draws the coded fields."""

    max_steps_in_episode: int = 64  # observation window: candidates seen before truncation
    openings: int = 16  # hires before the episode terminates
    base_rate: float = 0.5  # P(candidate is in group 1)
    skill_mean_0: float = 0.0  # mean true skill of group 0
    skill_mean_1: float = 0.0  # mean true skill of group 1
    skill_sd: float = 1.0
    signal_noise: float = 0.5  # sd of the interview score around the true skill
    proxy_loading: jax.Array = dataclasses.field(default_factory=lambda: jnp.array([1.0, 0.5], jnp.float32))
    proxy_noise: float = 1.0  # sd of the proxies around loading * attribute
    leave_rate: float = 0.01  # fraction of every group leaving per step
    initial_size: float = 20.0  # initial headcount
    initial_share: float = 0.5  # share of group 1 in the initial workforce
    band_lo: float = 0.3  # no group's share may fall below ...
    band_hi: float = 0.7  # ... or rise above ...
    warmup: int = 16  # ... from this step on
    mask_attribute: bool = False  # blank the attribute in the observation


def group_shares(workforce: jax.Array) -> jax.Array:
    """float[2]: the share of each group (0.5 each for an empty workforce)."""
    size = workforce[0] + workforce[1]
    share_1 = jnp.where(size > 0, workforce[1] / jnp.maximum(size, 1e-12), 0.5)
    return jnp.stack([1.0 - share_1, share_1])


def band_in_force(state: EnvState) -> jax.Array:
    return state.time >= state.warmup


def outside_band(state: EnvState) -> jax.Array:
    """Some group's share lies outside [band_lo, band_hi] (whether or not the band is in force)."""
    shares = group_shares(state.workforce)
    return jnp.any((shares < state.band_lo) | (shares > state.band_hi))


class FairHiring(environment.Environment[EnvState, EnvParams]):
    """One firm hiring from a stream of candidates; see the module docstring."""

    def __init__(self, masked: bool = False):
        super().__init__()
        self.masked = masked
        self.obs_shape = (OBS_DIM,)

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(mask_attribute=self.masked)

    @property
    def name(self) -> str:
        return "FairHiring-masked" if self.masked else "FairHiring"

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(2)

    def observation_space(self, params: EnvParams) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (OBS_DIM,), jnp.float32)

    def draw_candidate(self, key: jax.Array, params: EnvParams) -> dict[str, jax.Array]:
        k_group, k_skill, k_signal, k_proxy = jax.random.split(key, 4)
        attribute = jax.random.bernoulli(k_group, params.base_rate).astype(jnp.int32)
        mean = jnp.where(attribute == 1, params.skill_mean_1, params.skill_mean_0)
        skill = mean + params.skill_sd * jax.random.normal(k_skill)
        signal = skill + params.signal_noise * jax.random.normal(k_signal)
        noise = jax.random.normal(k_proxy, (NUM_PROXIES,))
        proxies = params.proxy_loading * attribute + params.proxy_noise * noise
        return {
            "attribute": attribute,
            "skill": jnp.float32(skill),
            "signal": jnp.float32(signal),
            "proxies": proxies.astype(jnp.float32),
        }

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        size = jnp.float32(params.initial_size)
        workforce = jnp.stack([size * (1.0 - params.initial_share), size * params.initial_share]).astype(jnp.float32)
        state = EnvState(
            time=jnp.int32(0),
            workforce=workforce,
            openings_left=jnp.int32(params.openings),
            band_lo=jnp.float32(params.band_lo),
            band_hi=jnp.float32(params.band_hi),
            warmup=jnp.int32(params.warmup),
            **self.draw_candidate(key, params),
        )
        return self.get_obs(state, params), state

    def step_env(
        self, key: jax.Array, state: EnvState, action: int | jax.Array, params: EnvParams
    ) -> tuple[jax.Array, EnvState, jax.Array, jax.Array, dict[str, Any]]:
        hire = jnp.asarray(action) == HIRE
        group = jax.nn.one_hot(state.attribute, 2, dtype=jnp.float32)
        workforce = state.workforce * (1.0 - params.leave_rate) + hire * group
        reward = jnp.where(hire, jnp.tanh(state.skill), 0.0).astype(jnp.float32)
        openings_left = state.openings_left - hire.astype(jnp.int32)
        next_state = state.replace(
            time=state.time + 1,
            workforce=workforce,
            openings_left=openings_left,
            **self.draw_candidate(key, params),
        )
        terminated = openings_left <= 0
        is_1 = (state.attribute == 1).astype(jnp.float32)
        h = hire.astype(jnp.float32)
        p1 = jnp.float32(params.base_rate)
        metrics = {
            # importance-weighted indicators: their means are P(hire | group g)
            "hire_rate_g0": jnp.where(p1 < 1, h * (1 - is_1) / jnp.maximum(1 - p1, 1e-6), 0.0),
            "hire_rate_g1": jnp.where(p1 > 0, h * is_1 / jnp.maximum(p1, 1e-6), 0.0),
            "hire": h,
            "share_g1": group_shares(workforce)[1],
            "workforce_size": workforce.sum(),
            "productivity": reward,
            "out_of_band": workforce_out_of_band(next_state, None).astype(jnp.float32),
        }
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return self.get_obs(next_state, params), next_state, reward, terminated, {"metrics": metrics}

    def get_obs(self, state: EnvState, params: EnvParams | None = None, key: jax.Array | None = None) -> jax.Array:
        if params is None:
            params = self.default_params
        attribute = jnp.where(params.mask_attribute, 0.0, state.attribute.astype(jnp.float32))
        scale = jnp.maximum(jnp.float32(params.initial_size) + params.openings, 1.0)
        head = jnp.stack([state.signal, attribute])
        tail = jnp.stack([
            group_shares(state.workforce)[1],
            state.workforce.sum() / scale,
            state.openings_left / jnp.maximum(jnp.float32(params.openings), 1.0),
            band_in_force(state).astype(jnp.float32),
            state.band_lo,
            state.band_hi,
        ])
        loadings = jnp.broadcast_to(jnp.asarray(params.proxy_loading, jnp.float32), (NUM_PROXIES,))
        return jnp.concatenate([head, state.proxies, tail, loadings]).astype(jnp.float32)

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return state.openings_left <= 0


# ----------------------------------------------------------------------------- constitution


def workforce_out_of_band(state: EnvState, params: Any) -> jax.Array:
    """Forbidden state: after the warm-up, some group's share is outside [band_lo, band_hi]."""
    del params
    return band_in_force(state) & outside_band(state)


def deepens_imbalance(obs: jax.Array, state: EnvState, action: jax.Array, params: Any) -> jax.Array:
    """Forbidden action: out of the band, hiring a candidate of the over-represented group."""
    del obs, params
    majority = jnp.argmax(group_shares(state.workforce)).astype(jnp.int32)
    return workforce_out_of_band(state, None) & (action == HIRE) & (state.attribute == majority)


def counterfactual_candidate(obs: jax.Array, params: Any) -> jax.Array:
    """The same candidate had their group been the other one: the attribute flipped and, when
    ``move_proxies`` is 1, the proxies moved by loading * (a' - a) (the causal counterfactual
    of p = loading * a + noise); the skill signal and the workforce are unchanged."""
    attribute = obs[OBS_ATTRIBUTE]
    flipped = 1.0 - attribute
    shift = params["move_proxies"] * obs[OBS_LOADINGS] * (flipped - attribute)
    return obs.at[OBS_ATTRIBUTE].set(flipped).at[OBS_PROXIES].add(shift)


_BAND_DESCRIPTION = (
    "After `warmup` steps no group's share of the workforce may lie outside [band_lo, band_hi] "
    "(state rule, one-step lookahead); while out of the band, hiring from the over-represented "
    "group is forbidden (action rule)."
)


def fair_hiring() -> Constitution:
    return Constitution(
        name="fair_hiring",
        action_rules=(deepens_imbalance,),
        state_rules=(workforce_out_of_band,),
        invariances=(counterfactual_candidate,),
        params={"move_proxies": jnp.float32(1.0)},
        description=_BAND_DESCRIPTION + " The decision must not change when the candidate's group is "
        "flipped together with the proxies it causes (causal counterfactual; D_cf in the loss).",
    )


def fair_hiring_attribute_only() -> Constitution:
    return dataclasses.replace(
        fair_hiring().with_params(move_proxies=jnp.float32(0.0)),
        name="fair_hiring_attribute_only",
        description=_BAND_DESCRIPTION + " The decision must not change when the attribute entry alone "
        "is flipped (proxies untouched, so the group can still be read off them).",
    )


def workforce_band() -> Constitution:
    return Constitution(
        name="workforce_band",
        action_rules=(deepens_imbalance,),
        state_rules=(workforce_out_of_band,),
        description=_BAND_DESCRIPTION,
    )


def fair_hiring_masked() -> Constitution:
    return Constitution(
        name="fair_hiring_masked",
        action_rules=(deepens_imbalance,),
        state_rules=(workforce_out_of_band,),
        description=_BAND_DESCRIPTION + " The attribute is masked from the observation (family "
        "FairHiring-masked); no invariance.",
    )


# ------------------------------------------------------------------------- the market code

BASE_RATES = np.round(0.15 + 0.1 * np.arange(8), 2)
SIGNAL_NOISES = np.array([0.25, 0.5, 1.0, 2.0])
LOADINGS = np.array([0.0, 0.5, 1.0, 2.0])
PROXY_NOISES = np.array([0.5, 1.0])
LEAVE_RATES = np.array([0.002, 0.005, 0.01, 0.02])
INITIAL_SHARES = np.array([0.35, 0.45, 0.55, 0.65])
BAND_HALF_WIDTHS = np.array([0.1, 0.2, 0.3, 0.4])
GAP_STEP, GAP_KMAX = 0.25, 2
WARMUP_STEP, WARMUP_KMAX = 8, 2

# (field, table) for the fixed-length fields, each coded with log2(len(table)) bits (uniform code)
FIXED_FIELDS = (
    ("base_rate", BASE_RATES),
    ("signal_noise", SIGNAL_NOISES),
    ("proxy_loading_0", LOADINGS),
    ("proxy_loading_1", LOADINGS),
    ("proxy_noise", PROXY_NOISES),
    ("leave_rate", LEAVE_RATES),
    ("initial_share", INITIAL_SHARES),
    ("band_half_width", BAND_HALF_WIDTHS),
)


def sample_markets(env: FairHiring, key: jax.Array, n: int) -> ParamBatch:
    """n labour markets from the prefix-free code above, with their lengths K in bits."""
    return _sample_markets(bool(env.masked), key, int(n))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sample_markets(masked: bool, key: jax.Array, n: int) -> ParamBatch:
    keys = jax.random.split(key, len(FIXED_FIELDS) + 3)
    index, bits = {}, jnp.zeros((n,), jnp.int32)
    for (field, table), k in zip(FIXED_FIELDS, keys):
        index[field] = draw_uniform(k, n, uniform_width(len(table)))
        bits += uniform_width(len(table))
    gap_n, gap_bits = draw_truncated_gamma(keys[-3], n, GAP_KMAX)
    sign = jnp.where(draw_uniform(keys[-2], n, 1) == 1, -1.0, 1.0)
    gap = jnp.where(gap_n > 1, sign, 0.0) * GAP_STEP * (gap_n - 1)
    bits += gap_bits + (gap_n > 1).astype(jnp.int32)
    warm_n, warm_bits = draw_truncated_gamma(keys[-1], n, WARMUP_KMAX)
    bits += warm_bits

    def table(field):
        return jnp.asarray(dict(FIXED_FIELDS)[field], jnp.float32)[index[field]]

    half = table("band_half_width")
    d = EnvParams()
    full = lambda v, dtype: jnp.full((n,), v, dtype)
    params = EnvParams(
        max_steps_in_episode=full(d.max_steps_in_episode, jnp.int32),
        openings=full(d.openings, jnp.int32),
        base_rate=table("base_rate"),
        skill_mean_0=(-gap / 2).astype(jnp.float32),
        skill_mean_1=(gap / 2).astype(jnp.float32),
        skill_sd=full(d.skill_sd, jnp.float32),
        signal_noise=table("signal_noise"),
        proxy_loading=jnp.stack([table("proxy_loading_0"), table("proxy_loading_1")], axis=-1),
        proxy_noise=table("proxy_noise"),
        leave_rate=table("leave_rate"),
        initial_size=full(d.initial_size, jnp.float32),
        initial_share=table("initial_share"),
        band_lo=(0.5 - half).astype(jnp.float32),
        band_hi=(0.5 + half).astype(jnp.float32),
        warmup=(WARMUP_STEP * warm_n).astype(jnp.int32),
        mask_attribute=full(masked, bool),
    )
    return ParamBatch(params, bits.astype(jnp.float32))


def _grid_index(table: np.ndarray, value: float) -> int:
    i = int(np.argmin(np.abs(table - value)))
    if not np.isclose(table[i], value, atol=1e-5):
        raise ValueError(f"{value} is not on the grid {table.tolist()}")
    return i


def encode(params: EnvParams) -> str:
    """The codeword (a string of '0'/'1') of one market's sampled fields.  Its length is the K
    that ``sample_markets`` reports; fields outside the code (e.g. openings) are ignored."""
    p = jax.tree.map(np.asarray, params)
    value = {
        "base_rate": p.base_rate, "signal_noise": p.signal_noise, "proxy_loading_0": p.proxy_loading[0],
        "proxy_loading_1": p.proxy_loading[1], "proxy_noise": p.proxy_noise, "leave_rate": p.leave_rate,
        "initial_share": p.initial_share, "band_half_width": (p.band_hi - p.band_lo) / 2,
    }
    code = {f: format(_grid_index(t, float(value[f])), f"0{uniform_width(len(t))}b") for f, t in FIXED_FIELDS}
    out = code["base_rate"]
    gap = float(p.skill_mean_1 - p.skill_mean_0)
    n = round(abs(gap) / GAP_STEP) + 1
    if not np.isclose(GAP_STEP * (n - 1), abs(gap), atol=1e-5) or n > (1 << (GAP_KMAX + 1)) - 1:
        raise ValueError(f"skill gap {gap} is not in the code")
    out += truncated_gamma_word(n, GAP_KMAX) + (("1" if gap < 0 else "0") if n > 1 else "")
    for f, _ in FIXED_FIELDS[1:]:
        out += code[f]
    warm = int(p.warmup)
    if warm % WARMUP_STEP or not 1 <= warm // WARMUP_STEP <= (1 << (WARMUP_KMAX + 1)) - 1:
        raise ValueError(f"warmup {warm} is not in the code")
    return out + truncated_gamma_word(warm // WARMUP_STEP, WARMUP_KMAX)


def decode(bits: str) -> tuple[dict[str, float], str]:
    """Read one codeword from the front of ``bits``: (field values, the rest of the string)."""
    pos = 0

    def take(count: int) -> str:
        nonlocal pos
        if pos + count > len(bits):
            raise ValueError("the bit string ends inside a codeword")
        chunk, pos = bits[pos:pos + count], pos + count
        return chunk

    def fixed(table: np.ndarray) -> float:
        return float(table[int(take(uniform_width(len(table))), 2)])

    out = {"base_rate": fixed(BASE_RATES)}
    n = read_truncated_gamma(take, GAP_KMAX)
    sign = (-1.0 if take(1) == "1" else 1.0) if n > 1 else 1.0
    out["skill_gap"] = sign * GAP_STEP * (n - 1)
    for field, table in FIXED_FIELDS[1:]:
        out[field] = fixed(table)
    out["warmup"] = WARMUP_STEP * read_truncated_gamma(take, WARMUP_KMAX)
    return out, bits[pos:]


# a hire pays tanh(skill) in (-1, 1), a pass 0: an episode returns between -T and T
HIRING_VALUE = episodic(lambda params: (-params.max_steps_in_episode, params.max_steps_in_episode))

# What of a market may drift in deployment (drift.py).  ``proxy_loading`` holds one loading per
# proxy; a drift moves both to the same value.  No field is derived from these.
HIRING_DRIFT = DriftSpec(
    params={
        "base_rate": DriftRange(0.0, 1.0, "P(candidate is in group 1)"),
        "skill_mean_0": DriftRange(-2.0, 2.0, "mean true skill of group 0"),
        "skill_mean_1": DriftRange(-2.0, 2.0, "mean true skill of group 1"),
        "signal_noise": DriftRange(0.05, 4.0, "sd of the interview score"),
        "proxy_loading": DriftRange(0.0, 4.0, "how strongly each proxy reveals the group"),
        "proxy_noise": DriftRange(0.05, 4.0, "sd of the proxies"),
        "leave_rate": DriftRange(0.0, 0.1, "fraction of every group leaving per step"),
    },
)

FAIR_HIRING = register(
    EnvSpec(
        name="FairHiring",
        make=FairHiring,
        constitutions={
            "fair_hiring": fair_hiring,
            "fair_hiring_attribute_only": fair_hiring_attribute_only,
            "workforce_band": workforce_band,
        },
        sample_params=sample_markets,
        description="A firm hires from a stream of candidates; constitutions from the seed's hiring footnote.",
        value=HIRING_VALUE,
        drift=HIRING_DRIFT,
    )
)

FAIR_HIRING_MASKED = register(
    EnvSpec(
        name="FairHiring-masked",
        make=functools.partial(FairHiring, masked=True),
        constitutions={"fair_hiring_masked": fair_hiring_masked, "workforce_band": workforce_band},
        sample_params=sample_markets,  # the mask is a property of the family, not coded
        description="FairHiring with the protected attribute blanked from the observation.",
        value=HIRING_VALUE,
        drift=HIRING_DRIFT,
    )
)


def equal_skill_hire_rates(
    logits_fn: Any, env: FairHiring, params: EnvParams, key: jax.Array, signals: jax.Array, samples: int = 256
) -> jax.Array:
    """float[2, S]: P(hire) for a candidate of group g with interview score signals[s].

    Candidates at each score get proxies drawn from their group's distribution, and the rest of
    the observation comes from a freshly reset firm, so the two rows differ only through the
    attribute and what it causes.  ``logits_fn(obs[B, OBS_DIM]) -> logits[B, 2]``.
    """
    k_reset, k_noise = jax.random.split(key)
    _, state = env.reset_env(k_reset, params)
    noise = jax.random.normal(k_noise, (samples, NUM_PROXIES))

    def rate(group, signal):
        def obs_for(z):
            s = state.replace(
                attribute=jnp.int32(group),
                signal=jnp.float32(signal),
                proxies=params.proxy_loading * group + params.proxy_noise * z,
            )
            return env.get_obs(s, params)

        obs = jax.vmap(obs_for)(noise)
        return jnp.mean(jax.nn.softmax(logits_fn(obs), axis=-1)[:, HIRE])

    return jnp.stack([jax.vmap(functools.partial(rate, group))(signals) for group in (0, 1)])
