"""Config merging: every committed YAML validates; mistakes fail early, naming what to fix."""
import pytest

from experiments import config as config_lib


@pytest.mark.parametrize("exp", config_lib.list_experiments())
def test_every_committed_experiment_validates(exp):
    cfg = config_lib.load(exp)
    assert cfg.exp == exp
    for stage in cfg.stages:  # a pipeline's stages must validate too
        assert config_lib.load(stage).exp == stage


def test_layers_merge_in_order(toy_configs):
    cfg = config_lib.load("toy/tiny", ["model.lr=0.5", "trainer.max_steps=3"])
    assert cfg.model.width == 4 and cfg.model.lr == 0.5  # command line beats the experiment YAML
    assert cfg.trainer.max_steps == 3 and cfg.trainer.checkpoint_every_n_steps == 4
    assert cfg.trainer.accelerator == "cpu"  # from trainer/cpu.yaml


def test_misspelt_key_names_key_and_nearest(toy_configs):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.load("toy/tiny", ["trainer.max_stpes=3"])
    msg = str(err.value)
    assert "trainer.max_stpes" in msg and "trainer.max_steps" in msg and "command line" in msg


def test_misspelt_key_in_yaml_names_the_file(toy_configs):
    (toy_configs / "toy" / "bad.yaml").write_text("model:\n  widht: 3\n")
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.load("toy/bad")
    assert "bad.yaml" in str(err.value) and "model.widht" in str(err.value) and "model.width" in str(err.value)


def test_wrong_type_names_key_value_and_type(toy_configs):
    with pytest.raises(config_lib.ConfigError) as err:
        config_lib.load("toy/tiny", ["model.width=wide"])
    msg = str(err.value)
    assert "model.width" in msg and "wide" in msg and "int" in msg


def test_post_init_checks_run(toy_configs):
    with pytest.raises(config_lib.ConfigError, match="model.width: 0 must be >= 1"):
        config_lib.load("toy/tiny", ["model.width=0"])


def test_unknown_experiment_suggests(toy_configs):
    with pytest.raises(config_lib.ConfigError, match="did you mean toy/tiny"):
        config_lib.load("toy/tinyy")


def test_bad_override_syntax(toy_configs):
    with pytest.raises(config_lib.ConfigError, match="not a key=value override"):
        config_lib.load("toy/tiny", ["max_steps"])
