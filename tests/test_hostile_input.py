"""Hostile audio and config input: headers that lie, rates and lengths out of range, random
bytes. Each is one AudioError / ConfigError sentence, decoded within a memory bound, never a
traceback; the chunked decoder yields what a one-shot decode gives, bit for bit."""

import logging
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from datafixtures import data_config, write_class_folder
from jaxaudio.runs import configs
from jaxaudio.audio import io
from jaxaudio.audio import featurize
from jaxaudio.data.sources import list_source, unmeasured_classes
from jaxaudio.audio.io import audio_files
from jaxaudio.runtime.errors import AudioError, ConfigError, JaxAudioError
from jaxaudio.models.registry import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Examples per fuzz target: bounded for CI; JAXAUDIO_FUZZ_EXAMPLES=20000 runs a campaign.
FUZZ = int(os.environ.get("JAXAUDIO_FUZZ_EXAMPLES", "0")) or None


def wav_bytes(rate: int, channels: int = 1, bits: int = 16, frames: int = 32000,
              data_len: int | None = None, payload: bytes | None = None) -> bytes:
  """A RIFF/WAVE file whose header says what we choose, whatever the samples are."""
  width = max(1, bits // 8)
  data = payload if payload is not None else bytes(frames * channels * width)
  length = len(data) if data_len is None else data_len
  fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * channels * width) & 0xFFFFFFFF,
                    (channels * width) & 0xFFFF, bits)
  return (b"RIFF" + struct.pack("<I", (36 + len(data)) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
          + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", length & 0xFFFFFFFF) + data)


def write(path, blob: bytes) -> str:
  with open(path, "wb") as f:
    f.write(blob)
  return str(path)


@pytest.mark.parametrize("rate", [0, 1, 999, 800_000])
def test_a_rate_outside_the_range_is_one_sentence_before_decoding(tmp_path, rate):
  path = write(tmp_path / "x.wav", wav_bytes(rate))
  for decode in (lambda: io.read_audio(path), lambda: io.load_audio(path, 16000)):
    with pytest.raises(AudioError, match=f"sample rate of {rate} Hz, outside 1000-768000 Hz"):
      decode()
  res = featurize.featurize(0, _spec(), featurize.Settings(), path=path)
  assert res.windows is None and "outside 1000-768000 Hz" in res.error


def test_the_1_hz_header_is_refused_within_a_memory_bound(tmp_path):
  """A 64 KB WAV declaring 1 Hz resampled to 8.9 hours at 16 kHz (2 GB, 6 GB with the
  resampler's buffers) before: now refused with the process's peak memory where it started."""
  path = write(tmp_path / "one_hz.wav", wav_bytes(1, frames=32000))
  code = (
      "import resource, sys\n"
      "from jaxaudio.audio.io import load_audio\n"
      "from jaxaudio.runtime.errors import AudioError\n"
      "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
      "try:\n"
      f"  load_audio({path!r}, 16000)\n"
      "  sys.exit('decoded')\n"
      "except AudioError as err:\n"
      "  print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, err)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  grew_kb, message = out.split(" ", 1)
  assert "1 Hz" in message
  assert int(grew_kb) < 50_000, f"peak memory grew by {int(grew_kb) / 1e3:.0f} MB"


def test_a_file_over_max_seconds_is_refused_and_the_limit_can_be_lifted(tmp_path):
  path = str(tmp_path / "long.flac")
  sf.write(path, np.zeros(8000 * 12, np.float32), 8000)
  with pytest.raises(AudioError, match="12 s of audio is longer than the limit of 10 s"):
    io.read_audio(path, max_seconds=10)
  assert len(io.load_audio(path, 16000, max_seconds=None)) == 16000 * 12
  res = featurize.featurize(0, _spec(), featurize.Settings(), path=path, max_seconds=10)
  assert "longer than the limit" in res.error
  res = featurize.featurize(0, _spec(), featurize.Settings(), waveform=np.zeros(8000 * 12),
                            rate=8000, max_seconds=10)
  assert "longer than data.max_seconds=10" in res.error


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 6), (16000, 1), (22050, 3)])
def test_block_decoding_equals_a_one_shot_decode_bit_for_bit(tmp_path, monkeypatch, rate,
                                                              channels):
  """Small blocks (many per file), mixed down and resampled as they come: the same samples
  as soundfile's whole read, its mean over channels and soxr's one-shot resampler."""
  rng = np.random.default_rng(rate)
  x = (0.2 * rng.standard_normal((rate * 3 + 17, channels))).astype(np.float32)
  path = str(tmp_path / "x.flac")
  sf.write(path, x, rate, subtype="PCM_24")
  whole, _ = sf.read(path, dtype="float32", always_2d=True)
  mono = whole.mean(axis=1)
  monkeypatch.setattr(io, "BLOCK_BYTES", 4 * channels * 3001)   # 3001 frames a block
  got, got_rate = io.read_audio(path)
  assert got_rate == rate and np.array_equal(got, mono)
  for target in (16000, 32000, 44100):
    want = mono if target == rate else soxr.resample(mono, rate, target, quality="HQ")
    res, source = io.decode(path, target)
    assert source == rate and res.dtype == np.float32 and np.array_equal(res, want), target


def test_many_channels_decode_in_bounded_blocks(tmp_path, monkeypatch):
  """1024 channels: a block holds BLOCK_BYTES of samples, not 1024 frames x channels."""
  path = str(tmp_path / "wide.wav")
  sf.write(path, np.full((2000, 1024), 0.25, np.float32), 8000, subtype="FLOAT")
  sizes = []
  real = sf.SoundFile.read

  def spy(self, frames=-1, *args, **kwargs):
    out = real(self, frames, *args, **kwargs)
    sizes.append(out.nbytes)
    return out
  monkeypatch.setattr(sf.SoundFile, "read", spy)
  monkeypatch.setattr(io, "BLOCK_BYTES", 1 << 20)
  x, _ = io.read_audio(path)
  assert len(x) == 2000 and np.allclose(x, 0.25)
  assert max(sizes) <= 1 << 20 and len(sizes) > 4


def test_truncated_and_corrupt_files_are_sentences(tmp_path):
  rng = np.random.default_rng(0)
  good = str(tmp_path / "good.flac")
  sf.write(good, (0.3 * rng.standard_normal(44100 * 5)).astype(np.float32), 44100)
  blob = open(good, "rb").read()
  cut = write(tmp_path / "cut.flac", blob[: len(blob) // 3])
  with pytest.raises(AudioError, match="cut.flac: cannot decode audio"):
    io.read_audio(cut)
  noise = write(tmp_path / "noise.ogg", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
  with pytest.raises(AudioError, match="noise.ogg: cannot decode audio"):
    io.read_audio(noise)


def test_folders_skip_broken_links_loops_and_pipes_with_a_reason(tmp_path):
  sf.write(str(tmp_path / "a.wav"), np.zeros(1600, np.float32), 16000)
  os.symlink(tmp_path / "gone.wav", tmp_path / "dangling.wav")
  os.symlink(tmp_path / "loop2.wav", tmp_path / "loop1.wav")
  os.symlink(tmp_path / "loop1.wav", tmp_path / "loop2.wav")
  os.mkfifo(tmp_path / "pipe.wav")
  skipped = []
  assert audio_files(str(tmp_path), skipped) == [str(tmp_path / "a.wav")]
  reasons = {os.path.basename(s["path"]): s["reason"] for s in skipped}
  assert set(reasons) == {"dangling.wav", "loop1.wav", "loop2.wav", "pipe.wav"}
  assert "symlink is broken or loops" in reasons["dangling.wav"]
  assert "not a regular file" in reasons["pipe.wav"]


def _spec():
  return get_model("aisfx").spec.to_dict()


# Fuzzing, bounded in examples: any header, any bytes -> samples or one AudioError.
@settings(max_examples=FUZZ or 150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(rate=st.one_of(st.integers(0, 2 ** 32 - 1), st.sampled_from([0, 1, 8000, 44100])),
       channels=st.one_of(st.integers(0, 65535), st.integers(1, 8)),
       bits=st.sampled_from([0, 8, 16, 24, 32, 64, 7]),
       data_len=st.one_of(st.none(), st.integers(0, 2 ** 32 - 1)),
       payload=st.binary(max_size=4096))
def test_fuzz_wav_headers_give_samples_or_one_sentence(tmp_path_factory, rate, channels, bits,
                                                        data_len, payload):
  path = write(tmp_path_factory.mktemp("fuzz") / "f.wav",
               wav_bytes(rate, channels, bits, data_len=data_len, payload=payload))
  _decodes_or_says_why(path)


@settings(max_examples=FUZZ or 100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(suffix=st.sampled_from([".wav", ".flac", ".ogg", ".aiff", ".mp3", ".au"]),
       head=st.sampled_from([b"", b"RIFF", b"fLaC", b"OggS", b"FORM", b".snd", b"ID3"]),
       body=st.binary(max_size=8192))
def test_fuzz_random_bytes_give_samples_or_one_sentence(tmp_path_factory, suffix, head, body):
  path = write(tmp_path_factory.mktemp("fuzz") / f"f{suffix}", head + body)
  _decodes_or_says_why(path)


def _decodes_or_says_why(path):
  for decode in (lambda: io.read_audio(path, max_seconds=60),
                 lambda: (io.load_audio(path, 16000, max_seconds=60), 16000)):
    try:
      x, rate = decode()
    except AudioError as err:
      message = str(err)
      assert message.startswith(path) and "\n" not in message, message
      continue
    assert x.dtype == np.float32 and x.ndim == 1 and 0 < len(x) <= 60 * rate + rate
    assert np.all(np.isfinite(x))


_KEYS = [(section, key) for section in ("data", "train") for key, value in
         configs.base_config()[section].items() if isinstance(value, (int, float))
         and not isinstance(value, bool)]


@settings(max_examples=FUZZ or 200, deadline=None)
@given(key=st.sampled_from(_KEYS),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9)))
def test_fuzz_config_values_validate_or_name_the_key(key, value):
  """Any number for any numeric key: validate() passes, or one ConfigError naming that key;
  never another exception, and never a non-finite or non-positive learning rate accepted."""
  c = configs.base_config()
  section, name = key
  if isinstance(c[section][name], float):
    c[section][name] = float(value)
  else:
    assume(isinstance(value, int))
    c[section][name] = value
  try:
    configs.validate(c)
  except JaxAudioError as err:
    assert isinstance(err, ConfigError), err
    assert f"{section}.{name}" in str(err) or "train." in str(err) or "data." in str(err), err
    return
  if (section, name) == ("train", "learning_rate"):
    assert math.isfinite(c.train.learning_rate) and c.train.learning_rate > 0


@pytest.mark.parametrize("key,value,words", [
    ("train.learning_rate", -0.1, "train.learning_rate=-0.1 is invalid"),
    ("train.learning_rate", float("nan"), "train.learning_rate=nan is invalid; give a finite"),
    ("train.learning_rate", 0.0, "use a positive learning rate"),
    ("train.final_lr_fraction", 1.5, "train.final_lr_fraction=1.5"),
    ("train.head_dropout", 1.0, "train.head_dropout=1.0"),
    ("data.max_seconds", -1.0, "data.max_seconds=-1.0"),
    ("data.loudness_db", float("inf"), "data.loudness_db=inf is invalid; give a finite"),
])
def test_impossible_values_are_refused_naming_the_key(key, value, words):
  c = configs.base_config()
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
    configs.validate(c)


def test_a_class_too_small_for_validation_and_test_is_warned_about(tmp_path, caplog):
  """A class folder with one file stays whole in train when splits are carved: its scores are
  never measured, and the console says so, naming the class and the fix."""
  root = write_class_folder(str(tmp_path / "clips"), per_class=8)
  os.makedirs(tmp_path / "clips" / "rare")
  sf.write(str(tmp_path / "clips" / "rare" / "only.wav"), np.zeros(16000, np.float32), 16000)
  with caplog.at_level(logging.WARNING, logger="jaxaudio"):
    listing = list_source(data_config(tmp_path, f"folder:{root}"))
  assert unmeasured_classes(listing) == {"rare": ["validation", "test"]}
  (line,) = [r.getMessage() for r in caplog.records if "rare" in r.getMessage()]
  assert "1 training clip(s) and none in validation or test" in line and "at least 3" in line
