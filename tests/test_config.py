"""Bad input gets a clear error before anything compiles."""

import pytest

from aligned_rl.cli import main
from aligned_rl.train.config import ConfigError, load_config, to_dict, from_dict
from conftest import CARTPOLE


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
