"""Config defaults, validation and the one-sentence errors of config-driven CLIs."""

import pytest

from jaxaudio import configs
from jaxaudio.errors import ConfigError, UnknownModelError


def test_defaults_validate_and_bad_values_name_the_key():
  c = configs.base_config()
  configs.validate(c)
  for key, value, words in (("window_hop", 0.0, "data.window_hop=0.0"),
                            ("loudness", "loud", "use peak, rms or none"),
                            ("val_fraction", 0.7, "data.val_fraction"),
                            ("source", "ftp:x", "data.source")):
    bad = configs.base_config()
    bad.data[key] = value
    with pytest.raises(ConfigError, match=words):
      configs.validate(bad)
  for key, value, words in (("batch_size", 0, "train.batch_size=0 is invalid"),
                            ("num_steps", -1, "train.num_steps=-1 is invalid")):
    bad = configs.base_config()
    bad.train[key] = value
    with pytest.raises(ConfigError, match=words):
      configs.validate(bad)
  bad = configs.base_config()
  bad.model.name = "resnet"
  with pytest.raises(UnknownModelError):
    configs.validate(bad)


@pytest.mark.parametrize("arg,words", [
    ("--config.data.bogus=1", "unknown config key in --config.data.bogus=1"),
    ("--config.data.window_hop=abc", "could not convert string to float"),
    ("--config=configs/nope.py", "no such config file configs/nope.py"),
])
def test_cli_config_errors_are_one_sentence(cli, arg, words):
  r = cli("jaxaudio.prepare", "--config=configs/finetune.py", arg)
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr


def test_a_run_saved_before_a_key_existed_still_opens():
  from jaxaudio import configs
  saved = configs.base_config().to_dict()
  for section, key in (("train", "bn"), ("train", "epochs"), ("train", "sampling"),
                       ("train", "class_weights"), ("train", "label_smoothing"), ("data", "group")):
    del saved[section][key]
  saved["train"]["num_steps"] = 1350   # runs then always had a step count
  cfg = configs.from_saved(saved)
  assert (cfg.train.bn, cfg.train.epochs, cfg.train.sampling, cfg.train.class_weights,
          cfg.train.label_smoothing, cfg.data.group) == ("batch", 0.0, "uniform", "none", 0.0, "")
  configs.validate(cfg)
  assert configs.from_saved(configs.base_config().to_dict()) == configs.base_config()
