"""`python -m jaxaudio.embed` end to end, on log-mel arrays and on audio files."""

import os
import shutil

import numpy as np

from conftest import GOLDEN


def test_embed_mel_matches_original_model(cli, tmp_path, golden, aisfx_checkpoint):
  del aisfx_checkpoint
  ref = golden("aisfx_embeddings.npz")
  np.save(tmp_path / "mel.npy", ref["inputs"])
  r = cli("jaxaudio.embed", "--model=aisfx", f"--mel={tmp_path / 'mel.npy'}",
          f"--out={tmp_path / 'e.npz'}")
  assert r.returncode == 0, r.stderr
  emb = np.load(tmp_path / "e.npz")["embeddings"]
  assert emb.shape == (4, 512) and np.abs(emb - ref["embeddings"]).max() < 1e-4


def test_embed_audio_folder_reports_bad_files(cli, tmp_path, aisfx_checkpoint):
  del aisfx_checkpoint
  folder = tmp_path / "clips"
  os.makedirs(folder / "sub")
  for name in ("tone_44k.flac", "siren_44k.flac"):
    shutil.copy(os.path.join(GOLDEN, "audio", name), folder / name)
  shutil.copy(os.path.join(GOLDEN, "audio", "tone_22k.flac"), folder / "sub" / "low_rate.flac")
  (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
  r = cli("jaxaudio.embed", "--model=aisfx", f"--audio={folder}", f"--out={tmp_path / 'e.npz'}")
  assert r.returncode == 0, r.stderr
  assert "broken.wav" in r.stderr and "skipped 1" in r.stdout
  out = np.load(tmp_path / "e.npz")
  files = [os.path.basename(f) for f in out["files"]]
  # 2.6 s at 44.1 kHz = 113 frames: one 100-frame window (hop 50 leaves a partial one).
  assert sorted(set(files)) == ["low_rate.flac", "siren_44k.flac", "tone_44k.flac"]
  assert out["embeddings"].shape == (len(files), 512) and np.all(out["offsets"] == 0.0)
  strict = cli("jaxaudio.embed", "--model=aisfx", f"--audio={folder}", "--strict",
               f"--out={tmp_path / 'f.npz'}")
  assert strict.returncode == 2 and "broken.wav" in strict.stderr


def test_embed_offsets_follow_window_hop(cli, tmp_path, aisfx_checkpoint):
  del aisfx_checkpoint
  import soundfile as sf
  sr = 44100
  x = np.sin(2 * np.pi * 440 * np.arange(6 * sr) / sr).astype(np.float32) * 0.3
  sf.write(tmp_path / "six.wav", x, sr)
  r = cli("jaxaudio.embed", f"--audio={tmp_path / 'six.wav'}", f"--out={tmp_path / 'e.npz'}")
  assert r.returncode == 0, r.stderr
  offsets = np.load(tmp_path / "e.npz")["offsets"]
  hop_s = 50 * 1024 / sr   # half a window of 100 frames of 1024 samples
  np.testing.assert_allclose(offsets, hop_s * np.arange(len(offsets)), rtol=1e-6)
  assert len(offsets) == 4  # 260 frames -> windows at 0, 50, 100, 150


def test_embed_writes_musicnn_taggrams(cli, tmp_path, golden, musicnn_checkpoint):
  musicnn_checkpoint("MSD_musicnn")
  ref = golden("musicnn_models.npz")
  np.save(tmp_path / "mel.npy", ref["inputs"])
  r = cli("jaxaudio.embed", "--model=musicnn_msd", f"--mel={tmp_path / 'mel.npy'}",
          f"--out={tmp_path / 'e.npz'}")
  assert r.returncode == 0, r.stderr
  out = np.load(tmp_path / "e.npz")
  assert np.abs(out["embeddings"] - ref["musicnn_msd/embedding"]).max() < 1e-4
  assert np.abs(out["taggram"] - ref["musicnn_msd/taggram"]).max() < 1e-5
  assert list(out["tag_names"][:3]) == ["rock", "pop", "alternative"]


def test_embed_with_a_fine_tuned_run_needs_no_model_flag(cli, tmp_path, trained):
  """--checkpoint=RUN embeds with the run's fine-tuned backbone at the chosen step."""
  import jax
  from jaxaudio.runs import rundir
  workdir, _ = trained
  run = rundir.open_run(workdir, 20)
  x = np.random.default_rng(0).uniform(0, 1, (3, 100, 96)).astype(np.float32)
  np.save(tmp_path / "mel.npy", x)
  r = cli("jaxaudio.embed", f"--checkpoint={workdir}", "--step=20",
          f"--mel={tmp_path / 'mel.npy'}", f"--out={tmp_path / 'e.npz'}")
  assert r.returncode == 0, r.stderr
  assert "at step 20" in r.stdout
  out = np.load(tmp_path / "e.npz")
  want = np.asarray(jax.jit(lambda v, x: run.model.apply(v, x)["embedding"])(run.variables, x))
  assert out["embeddings"].shape == (3, 16) and "taggram" not in out
  np.testing.assert_allclose(out["embeddings"], want, rtol=1e-5, atol=1e-6)
  wrong = cli("jaxaudio.embed", f"--checkpoint={workdir}", "--model=panns_cnn14",
              f"--mel={tmp_path / 'mel.npy'}", f"--out={tmp_path / 'f.npz'}")
  assert wrong.returncode == 2 and "drop --model" in wrong.stderr
