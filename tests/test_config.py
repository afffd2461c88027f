"""Bad input gets a clear error before anything compiles."""

import pytest

from aligned_rl.cli import main
from aligned_rl.constitution import Constitution
from aligned_rl.train.alignment_tax import load_tax_config
from aligned_rl.train.config import ConfigError, check_constitution, from_dict, load_config, to_dict
from aligned_rl.train.measure_config import load_measure_config
from tests.conftest import CARTPOLE, REPO


def test_default_config_file_loads():
    config = load_config(CARTPOLE)
    assert config.env.name == "CartPole-v1"
    assert config.constitution.name == "safe_zone"
    assert config.num_updates == config.ppo.total_timesteps // (config.env.num_envs * config.ppo.num_steps)


def test_round_trip_through_dict():
    config = load_config(CARTPOLE, ["ppo.lr=1e-3"])
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("ppo.lrr=1e-3", "unknown config key 'ppo.lrr'"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("ppo.lr=fast", "bad value for 'ppo.lr'"),
        ("env.num_envs=many", "bad value for 'env.num_envs'"),
        ("ppo.num_minibatches=3", "does not split into"),
        ("alignment.divergence=euclid", "alignment.divergence must be one of"),
        ("alignment.divergence=kl_pi_sigma", "set constitution.eps > 0"),
        ("ppo.gamma=1.5", "ppo.gamma must be in (0, 1]"),
        ("alignment.reward_weight=2", "alignment.reward_weight must be in [0, 1]"),
        ("ppo.total_timesteps=10", "less than one update"),
    ],
)
def test_bad_overrides_are_refused_with_a_clear_message(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(CARTPOLE, [override])
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ppo:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'ppo.learning_rate'"):
        load_config(path)


def test_missing_file_and_malformed_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(CARTPOLE, ["ppo.lr"])


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    assert main(["train", "--config", CARTPOLE, "ppo.lrr=1"]) == 2
    assert "unknown config key 'ppo.lrr'" in capsys.readouterr().err
    assert main(["train", "--config", CARTPOLE, "env.name=NoSuchEnv-v0"]) == 2
    assert "unknown environment 'NoSuchEnv-v0'" in capsys.readouterr().err
    assert main(["train", "--config", CARTPOLE, "constitution.name=no_such_rules"]) == 2
    assert "ships no constitution 'no_such_rules'" in capsys.readouterr().err
    assert main(["train", "--config", CARTPOLE, "constitution.params.zone_middle=1"]) == 2
    assert "no parameter(s) ['zone_middle']" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert main(["train", "--resume", "/no/such/run"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--config", CARTPOLE, "ppo.lr=0.001"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.001" in out and "safe_zone" in out


# ------------------------------------------------------------------ flags without effect
# A key set away from its default where the rest of the config leaves it without effect is
# refused; the message names the key, says why and what to do.
NO_RULES = ["constitution.name=none"]  # the schema's defaults (CartPole, no constitution)


@pytest.mark.parametrize(
    "path, overrides, key",
    [
        (CARTPOLE, ["ppo.memory_size=32"], "ppo.memory_size"),
        (CARTPOLE, ["alignment.lagrange.target=divergence"], "alignment.lagrange.target"),
        (CARTPOLE, ["alignment.lagrange.budget=0.1"], "alignment.lagrange.budget"),
        (CARTPOLE, ["alignment.lagrange.lr=2.0"], "alignment.lagrange.lr"),
        (CARTPOLE, ["alignment.lagrange.beta_max=10"], "alignment.lagrange.beta_max"),
        (CARTPOLE, ["alignment.reward_mode=multiplicative", "alignment.reward_weight=0.5"],
         "alignment.reward_weight"),
        (CARTPOLE, ["alignment.divergence=none", "alignment.beta=5"], "alignment.beta"),
        (CARTPOLE, ["alignment.divergence=none", "alignment.lagrange.enabled=true"], "alignment.lagrange.enabled"),
        (CARTPOLE, ["alignment.divergence=none", "alignment.lagrange.enabled=true",
                    "alignment.lagrange.target=divergence"], "alignment.lagrange.enabled"),
        (CARTPOLE, ["constitution.eps=0.1"], "constitution.eps"),
        (CARTPOLE, ["alignment.divergence=none", "constitution.eps=0.1"], "constitution.eps"),
        (CARTPOLE, ["constitution.lookahead_threshold=0.5"], "constitution.lookahead_threshold"),
        (CARTPOLE, ["constitution.name=none"], "constitution.params"),
        (None, [*NO_RULES, "alignment.shield=true"], "alignment.shield"),
        (None, [*NO_RULES, "alignment.divergence=tv", "constitution.eps=0.1"], "constitution.eps"),
        (None, [*NO_RULES, "constitution.lookahead_samples=4"], "constitution.lookahead_samples"),
        (None, [*NO_RULES, "constitution.lookahead_samples=4", "constitution.lookahead_threshold=0.5"],
         "constitution.lookahead_samples"),
        (None, [*NO_RULES, "alignment.divergence=tv", "alignment.lagrange.enabled=true"],
         "alignment.lagrange.enabled"),
        (None, [*NO_RULES, "alignment.beta=5"], "alignment.beta"),
        (None, [*NO_RULES, "alignment.lagrange.enabled=true", "alignment.lagrange.target=divergence"],
         "alignment.lagrange.enabled"),
        (None, [*NO_RULES, "alignment.reward_mode=multiplicative"], "alignment.reward_mode"),
        (None, [*NO_RULES, "alignment.reward_weight=0.5"], "alignment.reward_weight"),
        (None, [*NO_RULES, "alignment.divergence=none", "alignment.reward_weight=0.5"], "alignment.reward_weight"),
    ],
)
def test_flag_without_effect_is_refused_naming_the_flag(path, overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "has no effect" in message, message


@pytest.mark.parametrize(
    "path, overrides",
    [
        # the default value is never refused, whatever else the config says
        (CARTPOLE, ["alignment.divergence=none", "alignment.beta=1.0"]),
        (CARTPOLE, ["ppo.memory_size=128", "alignment.lagrange.lr=0.5", "alignment.lagrange.target=forbidden_rate"]),
        (CARTPOLE, ["alignment.reward_mode=multiplicative", "alignment.reward_weight=0.0"]),
        (None, [*NO_RULES, "constitution.eps=0.0", "constitution.lookahead_samples=1", "alignment.shield=false"]),
        # flags that do act
        (CARTPOLE, ["alignment.divergence=none", "alignment.reward_weight=0.5"]),  # 2^-D_proj shapes the reward
        (CARTPOLE, ["alignment.divergence=none", "alignment.reward_mode=multiplicative"]),
        (CARTPOLE, ["alignment.divergence=tv", "constitution.eps=0.1"]),
        (CARTPOLE, ["constitution.lookahead_samples=16", "constitution.lookahead_threshold=0.5"]),
        (CARTPOLE, ["alignment.lagrange.enabled=true", "alignment.lagrange.budget=0.1", "alignment.beta=0"]),
        (CARTPOLE, ["ppo.network=rl2", "ppo.memory_size=32", "ppo.anneal_lr=false"]),
        (None, [*NO_RULES, "alignment.divergence=kl_sigma_pi", "alignment.beta=5"]),  # pulls pi toward uniform
        (None, [*NO_RULES, "alignment.divergence=js", "alignment.lagrange.enabled=true",
                "alignment.lagrange.target=divergence"]),
        (None, [*NO_RULES, "alignment.divergence=tv", "alignment.reward_weight=0.5"]),
    ],
)
def test_flags_with_effect_and_defaults_are_accepted(path, overrides):
    load_config(path, overrides)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("constitution.eps=-0.1", "constitution.eps must be a finite number >= 0"),
        ("constitution.lookahead_samples=0", "constitution.lookahead_samples must be >= 1"),
        ("constitution.lookahead_threshold=1.0", "constitution.lookahead_threshold must be in [0, 1)"),
        ("alignment.lagrange.beta_max=-1", "alignment.lagrange.beta_max must be >= 0"),
    ],
)
def test_constitution_and_lagrange_ranges(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(CARTPOLE, [override])
    assert fragment in str(err.value)


def test_refused_flag_exits_with_code_2(capsys):
    assert main(["config", "--config", CARTPOLE, "ppo.memory_size=32"]) == 2
    err = capsys.readouterr().err
    assert "ppo.memory_size=32 has no effect" in err and "ppo.network=rl2" in err
    assert main(["train", "--config", CARTPOLE, "alignment.divergence=none", "alignment.beta=3"]) == 2
    assert "alignment.beta=3.0 has no effect" in capsys.readouterr().err


def _rule(*args):
    return False


def test_check_constitution_refuses_what_its_rules_leave_without_effect():
    """The checks that need the built constitution: its rules are known only once built."""
    actions_only = Constitution(name="actions_only", action_rules=(_rule,))
    with_states = Constitution(name="with_states", state_rules=(_rule,))
    invariance_only = Constitution(name="invariance_only", invariances=(lambda obs, params: obs,))
    # flags as set in a config whose constitution is named (CartPole's safe_zone), checked against others
    lookahead = load_config(CARTPOLE, ["constitution.lookahead_samples=4", "constitution.lookahead_threshold=0.5"])
    with pytest.raises(ConfigError, match=r"^constitution.lookahead_samples=4 has no effect: constitution "
                                          r"'actions_only' has no state rules"):
        check_constitution(lookahead, actions_only)
    check_constitution(lookahead, with_states)
    beta = load_config(CARTPOLE, ["alignment.beta=5"])
    check_constitution(beta, actions_only)
    check_constitution(beta, invariance_only)  # beta weighs the invariance term D_cf
    for overrides, key in ((["alignment.shield=true"], "alignment.shield"),
                           (["alignment.lagrange.enabled=true"], "alignment.lagrange.enabled"),
                           (["alignment.reward_weight=0.3"], "alignment.reward_weight")):
        config = load_config(CARTPOLE, overrides)
        check_constitution(config, actions_only)
        with pytest.raises(ConfigError, match=rf"^{key}=.* has no effect.*'invariance_only' forbids no action"):
            check_constitution(config, invariance_only)


def test_check_constitution_with_a_shipped_constitution():
    from aligned_rl.train.loop import build_constitution

    config = load_config(None, ["env.name=Gridworld-WhiskyGold", "constitution.name=no_whisky",
                                "constitution.lookahead_samples=8"])
    with pytest.raises(ConfigError, match="constitution.lookahead_samples=8 has no effect: constitution 'no_whisky'"):
        check_constitution(config, build_constitution(config))


SHIPPED = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_loads(name, capsys):
    path = REPO / "configs" / name
    text = path.read_text()
    if "\nagent:" in text:  # aligned-rl measure
        load_measure_config(str(path))
    elif "\naligned:" in text:  # aligned-rl tax
        load_tax_config(str(path))
    elif "\nepisode_lengths:" in text:  # aligned-rl aiq
        from aligned_rl.train.aiq_table import load_aiq_config

        load_aiq_config(str(path))
    elif "\nmethods:" in text and "\nreference:" in text:  # aligned-rl curriculum: every method's config loads
        from aligned_rl.train.curriculum_compare import load_curriculum_config

        load_curriculum_config(str(path))
    elif "\nmethods:" in text:  # aligned-rl frontier: every method's training config loads
        from aligned_rl.train.frontier import load_frontier_config

        load_frontier_config(str(path))
    elif "\nchild_steps:" in text:  # aligned-rl evolve
        from aligned_rl.improve.evolve_config import load_evolve_config

        load_evolve_config(str(path))
    elif "\nagents:" in text:  # aligned-rl improve
        from aligned_rl.improve.config import load_improve_config

        load_improve_config(str(path))
    elif text.startswith("drift:") or "\ndrift:" in text:  # a drift scenario (envs/drift.py)
        from aligned_rl.envs.drift import load_scenario

        load_scenario(path)
    else:
        from aligned_rl.train.loop import build_constitution

        assert main(["config", "--config", str(path)]) == 0, capsys.readouterr().err
        config = load_config(path)
        check_constitution(config, build_constitution(config))


def test_shipped_configs_include_training_measure_and_tax():
    assert {"cartpole.yaml", "measure_q_lambda.yaml", "tax_programs.yaml"} <= set(SHIPPED)
