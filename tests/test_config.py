"""Config defaults, validation and the one-sentence errors of config-driven CLIs."""

import pytest

from jaxaudio.runs import configs
from jaxaudio.runtime.errors import ConfigError, UnknownModelError


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
  from jaxaudio.runs import configs
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


@pytest.mark.parametrize("args,words", [
    (("--config=configs/nope.py", "--config.train.num_steps=3"),
     "no such config file configs/nope.py"),
    (("--config=configs/finetune.py", "--config.train.lerning_rate=3"),
     'unknown config key in --config.train.lerning_rate=3 (Did you mean "learning_rate"'),
    (("--config=configs/finetune.py", "--config.train.learning_rate=-0.1"),
     "config key train.learning_rate=-0.1 is invalid; use a positive learning rate"),
])
def test_cli_config_errors_with_overrides_are_one_plain_sentence(cli, args, words):
  """A missing file with an override (a traceback before), a misspelt key (literal \\' and
  \\n before) and an impossible learning rate (trained to loss 37.8 before)."""
  r = cli("jaxaudio.main", *args)
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert r.returncode == 2 and len(lines) == 1 and words in lines[0], r.stderr
  assert "\\'" not in lines[0] and "\\n" not in lines[0]
