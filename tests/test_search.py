"""`jaxaudio.search`: exact search against numpy, incremental indexing, refusals, ANN, CLI."""

import json
import os
import shutil

import faiss  # noqa: F401  (a required test dependency: imported, never skipped)
import numpy as np
import pytest
import soundfile as sf

from datafixtures import SR, tone, write_class_folder


def _brute_force(emb, fid, queries, k, per_file):
  """Independent reference: numpy scores, per-file best, stable ordering by (-score, index)."""
  out = []
  for q in queries:
    s = (emb.astype(np.float64) @ q.astype(np.float64).T).max(axis=1)
    if per_file:
      best = np.full(fid.max() + 1, -np.inf)
      np.maximum.at(best, fid, s)
      out.append(np.sort(best)[::-1][:k])
    else:
      out.append(np.sort(s)[::-1][:k])
  return np.array(out)


def test_exact_search_matches_numpy_per_file_and_per_window():
  from jaxaudio.search import exact
  rng = np.random.default_rng(0)
  n, d = exact.BLOCK + 777, 24                      # more than one block, ragged last block
  emb = rng.standard_normal((n, d)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  fid = np.sort(rng.integers(0, 3000, n)).astype(np.int32)
  fid = np.unique(fid, return_inverse=True)[1].astype(np.int32)   # files 0..F-1, contiguous
  index = exact.ExactIndex(emb, fid, int(fid.max()) + 1)
  queries = [emb[rng.integers(0, n, w)] + 0.01 * rng.standard_normal((w, d)).astype(np.float32)
             for w in (1, 3, 5, 2, 7)]
  for per_file in (True, False):
    scores, rows = index.search(queries, 10, per_file)
    np.testing.assert_allclose(scores, _brute_force(emb, fid, queries, 10, per_file), atol=1e-5)
    for q, sc, rw in zip(queries, scores, rows):   # each returned row really has that score
      np.testing.assert_allclose((emb[rw] @ q.T).max(axis=1), sc, atol=1e-5)
      if per_file:
        assert len(set(fid[rw])) == len(rw)
    # One query at a time takes the one-pass matmul instead of the block loop: same answers.
    assert exact.one_pass(8, n) and not exact.one_pass(64, n)
    for q, sc, rw in zip(queries, scores, rows):
      one_scores, one_rows = index.search([q], 10, per_file)
      np.testing.assert_allclose(one_scores[0], sc, atol=1e-6)
      assert np.array_equal(one_rows[0], rw)
  # More queries than one program takes, k larger than the number of files.
  many = [emb[i:i + 1] for i in range(exact.QUERY_BATCH + 3)]
  scores, rows = exact.ExactIndex(emb[:40], fid[:40] - fid[0], int(fid[39] - fid[0]) + 1).search(
      many[:3] + [emb[j:j + 1] for j in range(3)], 1000)
  assert scores.shape[1] == int(fid[39] - fid[0]) + 1
  assert index.search(many, 1, per_file=False)[1][:, 0].tolist() == list(range(len(many)))


def test_windows_that_tie_resolve_to_the_files_first_one_in_exact_and_approximate_search():
  """Windows whose scores differ by float32 rounding only: both search paths report the
  file's first of them, whatever the arithmetic (JAX's dot, float64, jittered scores)."""
  from jaxaudio.search import exact
  from jaxaudio.search.searcher import rank_candidates
  rng = np.random.default_rng(3)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)   # noqa: E731
  q = unit(rng.standard_normal(16))
  emb = unit(rng.standard_normal((12, 16)))
  emb[5:9] = unit(q + 1e-4 * rng.standard_normal((4, 16)))   # cosine 1 - O(1e-8): a tie
  emb[10] = unit(q + 0.1 * rng.standard_normal(16))           # close, but not tied
  emb = emb.astype(np.float32)
  fid = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2], np.int32)
  want = [5, 10, int(np.argmax(emb[:3] @ q))]    # file 1's first tied window, file 2, file 0
  scores, rows = exact.ExactIndex(emb, fid, 3).search([q[None].astype(np.float32)], 3)
  assert rows[0].tolist() == want and scores[0][0] == pytest.approx(1.0, abs=1e-6)
  for jitter in (0.0, 1e-7, -1e-7):
    cand = (emb.astype(np.float64) @ q)[None] + jitter * rng.standard_normal((1, 12))
    order = rng.permutation(12)                 # the graph returns neighbours in any order
    ranked = rank_candidates(cand[:, order], order[None], fid, 3, per_file=True)
    assert [r for r, _ in ranked] == want
    per_window = rank_candidates(cand[:, order], order[None], fid, 4, per_file=False)
    assert {r for r, _ in per_window} == {5, 6, 7, 8}   # ties as windows: all four, no others


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
  """Tone files of several lengths (long ones span many windows) plus one corrupt file."""
  root = tmp_path_factory.mktemp("collection")
  write_class_folder(str(root / "audio"), per_class=3, seconds=1.0)
  sf.write(str(root / "audio" / "long_sweep.wav"),
           np.concatenate([tone(300, 3.0, seed=1), tone(1500, 3.0, seed=2)]), SR)
  (root / "audio" / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
  return str(root / "audio")


@pytest.fixture(scope="module")
def export_dir(trained, tmp_path_factory):
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  workdir, _ = trained
  return stablehlo.for_run(workdir)


def _rows_by_file(path):
  from jaxaudio.search import store
  m = store.read_manifest(path)
  rows = store.load_rows(path, m)
  return {e.path: (rows.embeddings[rows.file_of_row == i], rows.offsets[rows.file_of_row == i])
          for i, e in enumerate(rows.files)}


def test_index_is_incremental_and_every_file_finds_itself_first(collection, export_dir,
                                                                 tmp_path):
  from jaxaudio.search import indexer, store
  from jaxaudio.search.searcher import Searcher
  audio = str(tmp_path / "audio")
  shutil.copytree(collection, audio)
  index = str(tmp_path / "index")
  first = indexer.update(index, audio, export_dir, workers=1, progress=False)
  assert (first["added"], first["files"], len(first["skipped"])) == (10, 10, 1)
  assert "broken.wav" in first["skipped"][0]["path"]
  assert "cannot decode audio" in first["skipped"][0]["reason"]
  before = _rows_by_file(index)
  long_file = os.path.join(audio, "long_sweep.wav")
  assert len(before[long_file][0]) > 3 and before[long_file][1][1] > 0   # windows with offsets

  s = Searcher(index)
  for path in sorted(before):
    hits = s.search([s.embed_audio(path)], k=3)[0]
    assert hits[0].file == path and hits[0].score == pytest.approx(1.0, abs=1e-5), path
    assert len({h.file for h in hits}) == 3
  # A span of the long file that starts on a window boundary is made of that file's own
  # windows: it finds the file at one of them, never at an earlier one.
  start = float(before[long_file][1][2])
  hits = s.search([s.embed_audio(long_file, start=start)], k=1, per_file=False)[0]
  assert hits[0].file == long_file and hits[0].score == pytest.approx(1.0, abs=1e-5)
  assert hits[0].offset in before[long_file][1][2:]

  # A finer hop gives more windows, a quarter window apart, in a separate index.
  fine = indexer.update(str(tmp_path / "fine"), audio, export_dir, hop=0.25, workers=1,
                        progress=False)
  fine_off = _rows_by_file(str(tmp_path / "fine"))[long_file][1]
  step = float(before[long_file][1][1]) / 2      # default hop 0.5 -> 0.25 of a window
  assert fine["rows"] > first["rows"] and len(fine_off) > len(before[long_file][1])
  np.testing.assert_allclose(np.diff(fine_off), step, atol=1e-3)

  # Nothing changed: nothing embedded, the manifest keeps its segments.
  again = indexer.update(index, audio, export_dir, workers=1, progress=False)
  assert (again["added"], again["updated"], again["removed"], again["unchanged"]) == (0, 0, 0, 10)
  # One new, one changed, one deleted file.
  sf.write(os.path.join(audio, "new.wav"), tone(900, 1.3, seed=7), SR)
  changed = os.path.join(audio, "mid", "mid_0.wav")
  sf.write(changed, tone(1700, 2.5, seed=9), SR)
  os.remove(os.path.join(audio, "low", "low_1.wav"))
  third = indexer.update(index, audio, export_dir, workers=1, progress=False)
  assert (third["added"], third["updated"], third["removed"], third["unchanged"]) == (1, 1, 1, 8)
  after = _rows_by_file(index)
  for path, (emb, off) in after.items():
    if path in before and path != changed:   # untouched rows are carried over bit for bit
      assert np.array_equal(emb, before[path][0]) and np.array_equal(off, before[path][1])
  # The updated index holds the same rows as one built from scratch.
  fresh = indexer.update(str(tmp_path / "fresh"), audio, export_dir, workers=1, progress=False)
  assert fresh["files"] == third["files"] == 10
  for path, (emb, off) in _rows_by_file(str(tmp_path / "fresh")).items():
    np.testing.assert_allclose(after[path][0], emb, atol=1e-5)
    assert np.array_equal(after[path][1], off)
  # Deleting most files compacts the segments into one and leaves no orphan files behind.
  for name in ("high", "low"):
    shutil.rmtree(os.path.join(audio, name))
  indexer.update(index, audio, export_dir, workers=1, progress=False)
  m = store.read_manifest(index)
  assert len(m.segments) == 1 and len(m.files) == 5
  assert sorted(f for f in os.listdir(index) if f.startswith("seg-")) == sorted(
      f"{s}.{k}.npy" for s in m.segments for k in ("emb", "off"))
  s = Searcher(index)
  assert s.search([s.embed_audio(changed)], k=1)[0][0].file == changed


def test_another_model_a_missing_or_damaged_index_are_refused(collection, export_dir,
                                                              tmp_path):
  from jaxaudio.inference import exported
  from jaxaudio.exports import stablehlo
  from jaxaudio.runtime.errors import SearchIndexError
  from jaxaudio.search import indexer
  from jaxaudio.search.searcher import Searcher
  index = str(tmp_path / "index")
  indexer.update(index, collection, export_dir, workers=1, progress=False)
  other = str(tmp_path / "other")
  shutil.copytree(export_dir, other)
  model = exported.load(other)
  weights = [w + 1e-3 if i == 0 else w for i, w in enumerate(model.weights)]
  np.savez(f"{other}/weights.npz", **{f"w{i:05d}": w for i, w in enumerate(weights)})
  sha = exported.weights_sha256(weights)
  meta = dict(model.meta, weights_sha256=sha)
  json.dump(meta, open(f"{other}/meta.json", "w"))
  with pytest.raises(SearchIndexError, match="was built with another weights_sha256 .* pass "
                     "--rebuild to re-embed every file with this model"):
    indexer.update(index, collection, other, workers=1, progress=False)
  json.dump(dict(meta, frontend=dict(meta["frontend"], fmax=8000.0)),
            open(f"{other}/meta.json", "w"))
  with pytest.raises(SearchIndexError, match="another weights_sha256 and frontend"):
    indexer.update(index, collection, other, workers=1, progress=False)
  with pytest.raises(SearchIndexError, match="another settings"):   # a finer hop: new index
    indexer.update(index, collection, export_dir, hop=0.25, workers=1, progress=False)
  with pytest.raises(SearchIndexError, match="is not a jaxaudio search index"):
    Searcher(str(tmp_path / "nothing"))
  seg = next(f for f in os.listdir(index) if f.endswith(".emb.npy"))
  data = open(os.path.join(index, seg), "rb").read()
  open(os.path.join(index, seg), "wb").write(data[:len(data) // 2])
  with pytest.raises(SearchIndexError, match="the search index is damaged .* rebuild it"):
    Searcher(index)
  open(os.path.join(index, "index.json"), "w").write("{not json")
  with pytest.raises(SearchIndexError, match="index.json is unreadable"):
    Searcher(index)
  from jaxaudio.search import store
  with store.writer_lock(index):       # a second writer is kept out while one runs
    with pytest.raises(SearchIndexError, match="is being updated by another `search index` run"):
      indexer.update(index, collection, export_dir, workers=1, progress=False)
  with pytest.raises(SearchIndexError, match="strict mode stops at the first bad file"):
    indexer.update(str(tmp_path / "strict"), collection, export_dir, strict=True, workers=1,
                   progress=False)


def test_approximate_index_reports_its_recall_and_finds_the_query_first(collection, export_dir,
                                                                         tmp_path):
  from jaxaudio.search import ann, indexer, store
  from jaxaudio.search.searcher import Searcher
  index = str(tmp_path / "index")
  summary = indexer.update(index, collection, export_dir, with_ann=True, workers=1,
                           progress=False)
  assert 0.9 <= summary["ann_recall_at_10"] <= 1.0
  m = store.read_manifest(index)
  assert m.ann["recall_at_10"] == summary["ann_recall_at_10"]
  s = Searcher(index, use_ann=True)
  path = os.path.join(collection, "high", "high_2.wav")
  assert s.search([s.embed_audio(path)], k=3)[0][0].file == path
  # recall_at_10 itself, against a reference that is wrong on purpose for half the queries
  rng = np.random.default_rng(1)
  emb = rng.standard_normal((300, 16)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  graph = ann.Graph(ann.build(emb), np.arange(300))
  approx = lambda q, k: graph.search(q, k)[1]   # noqa: E731
  truth = lambda q, k: np.argsort(-(q @ emb.T), axis=1)[:, :k]   # noqa: E731
  assert ann.recall_at_10(approx, truth, emb, queries=100) > 0.95
  shifted = lambda q, k: np.argsort(-(q @ emb.T), axis=1)[:, 11:11 + k]   # noqa: E731
  assert ann.recall_at_10(approx, shifted, emb, queries=100) < 0.05


def test_graph_skips_dead_rows_and_maps_ids_to_live_rows():
  from jaxaudio.search import ann
  rng = np.random.default_rng(2)
  emb = rng.standard_normal((400, 16)).astype(np.float32)
  emb /= np.linalg.norm(emb, axis=1, keepdims=True)
  graph = ann.build(emb[:300])
  ann.add(graph, emb[300:])                       # ids 300..399, appended
  alive = np.ones(400, bool)
  alive[rng.choice(400, 120, replace=False)] = False
  to_live = np.where(alive, np.cumsum(alive) - 1, -1)
  live = emb[alive]
  scores, rows = ann.Graph(graph, to_live).search(emb, 10, ef=400)
  # ef above the graph size: exactly the 10 best live rows, dead ones never, in live numbering
  truth = np.argsort(-(emb @ live.T), axis=1, kind="stable")[:, :10]
  assert np.array_equal(np.sort(rows, axis=1), np.sort(truth, axis=1))
  np.testing.assert_allclose(scores, np.take_along_axis(emb @ live.T, rows, axis=1), atol=1e-5)


def test_approximate_index_is_extended_not_rebuilt_on_update(collection, export_dir, tmp_path):
  from jaxaudio.runtime.errors import SearchIndexError
  from jaxaudio.search import indexer, store
  from jaxaudio.search.searcher import Searcher
  audio = str(tmp_path / "audio")
  shutil.copytree(collection, audio)
  index = str(tmp_path / "index")
  first = indexer.update(index, audio, export_dir, with_ann=True, workers=1, progress=False)
  m1 = store.read_manifest(index)
  assert m1.ann["last_update"] == "built" and m1.ann["dead_rows"] == 0
  assert m1.ann["graph_rows"] == first["rows"]

  def check_against_exact():
    """Every file's self-query: the graph's per-file ranking equals exact search's."""
    exact, approx = Searcher(index), Searcher(index, use_ann=True)
    live = {e.path for e in store.read_manifest(index).files}
    for path in sorted(live):
      q = exact.embed_audio(path)
      want = [(h.file, h.offset) for h in exact.search([q], k=5)[0]]
      got = [(h.file, h.offset) for h in approx.search([q], k=5)[0]]
      assert got == want and set(f for f, _ in got) <= live, path

  # One new file, one changed, one deleted: the graph keeps its ids and gains the new rows.
  sf.write(os.path.join(audio, "new.wav"), tone(900, 1.3, seed=7), SR)
  sf.write(os.path.join(audio, "mid", "mid_0.wav"), tone(1700, 2.5, seed=9), SR)
  os.remove(os.path.join(audio, "low", "low_1.wav"))
  second = indexer.update(index, audio, export_dir, workers=1, progress=False)
  m2 = store.read_manifest(index)
  assert m2.ann["last_update"] == "extended" and m2.ann["file"] != m1.ann["file"]
  assert m2.ann["spans"][:len(m1.ann["spans"])] == m1.ann["spans"]
  new_rows = m2.segments[m2.ann["spans"][-1][0]]
  assert m2.ann["graph_rows"] == m1.ann["graph_rows"] + new_rows
  assert m2.ann["dead_rows"] == m2.ann["graph_rows"] - second["rows"] > 0
  assert second["ann_recall_at_10"] == m2.ann["recall_at_10"] >= 0.9
  assert not os.path.exists(os.path.join(index, m1.ann["file"]))   # the old graph is gone
  check_against_exact()
  # Only a deletion: the same graph file, its dead rows skipped.
  os.remove(os.path.join(audio, "high", "high_0.wav"))
  indexer.update(index, audio, export_dir, workers=1, progress=False)
  m3 = store.read_manifest(index)
  assert m3.ann["last_update"] == "kept" and m3.ann["file"] == m2.ann["file"]
  assert m3.ann["dead_rows"] > m2.ann["dead_rows"]
  check_against_exact()
  # A missing graph file is rebuilt by the next update; so is one past a quarter dead.
  os.remove(os.path.join(index, m3.ann["file"]))
  with pytest.raises(SearchIndexError, match="is missing; run python -m jaxaudio.search index "
                     "--ann again"):
    Searcher(index, use_ann=True)
  indexer.update(index, audio, export_dir, workers=1, progress=False)
  m4 = store.read_manifest(index)
  assert m4.ann["last_update"] == "built" and m4.ann["dead_rows"] == 0
  check_against_exact()
  for name in ("high", "low"):
    shutil.rmtree(os.path.join(audio, name))
  indexer.update(index, audio, export_dir, workers=1, progress=False)
  m5 = store.read_manifest(index)
  assert m5.ann["last_update"] == "built" and m5.ann["graph_rows"] == m5.live_rows
  check_against_exact()
  # Every file deleted: an empty folder is refused (an unmounted disk must not empty the
  # index); a folder whose only file does not decode leaves an empty graph that finds
  # nothing, as exact search does.
  query = Searcher(index).embed_audio(os.path.join(audio, "new.wav"))
  shutil.rmtree(audio)
  os.makedirs(audio)
  with pytest.raises(SearchIndexError, match="holds no audio files"):
    indexer.update(index, audio, export_dir, workers=1, progress=False)
  assert store.read_manifest(index).files == m5.files
  shutil.copy(os.path.join(collection, "broken.wav"), audio)
  indexer.update(index, audio, export_dir, workers=1, progress=False)
  assert Searcher(index, use_ann=True).search([query], k=3) == [[]]
  assert Searcher(index).search([query], k=3) == [[]]


def test_search_cli_indexes_and_queries(cli, collection, export_dir, tmp_path):
  index = str(tmp_path / "index")
  r = cli("jaxaudio.search", "index", f"--model={export_dir}", f"--audio={collection}",
          f"--index={index}", "--workers=1")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "10 files" in r.stdout and "skipped: " in r.stdout and "broken.wav" in r.stdout
  query = os.path.join(collection, "low", "low_2.wav")
  r = cli("jaxaudio.search", "query", f"--index={index}", f"--audio={query}", "--k=4", "--json")
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["query"] == query and len(out["results"]) == 4
  assert out["results"][0]["file"] == query and out["results"][0]["offset"] == 0.0
  assert [h["score"] for h in out["results"]] == sorted((h["score"] for h in out["results"]),
                                                        reverse=True)
  r = cli("jaxaudio.search", "query", f"--index={tmp_path}/none", f"--audio={query}")
  assert r.returncode == 2 and "is not a jaxaudio search index" in r.stderr
  r = cli("jaxaudio.search", f"--index={index}", f"--audio={query}")
  assert r.returncode == 2 and "the first argument must be the command" in r.stderr


def test_search_cli_turns_hostile_input_into_sentences_and_skips(cli, collection, export_dir,
                                                                  tmp_path):
  """Issue 23's cases: a 0 Hz and a 1 Hz header, end=inf, a symlink loop, a dangling link and
  a named pipe in the folder, a folder without audio: one sentence and exit 2, or a reported
  skip while the rest is indexed and queried."""
  import struct

  def wav(rate, frames=16000):
    data = bytes(2 * frames)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16)
            + struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16) + b"data"
            + struct.pack("<I", len(data)) + data)
  audio = tmp_path / "audio"
  shutil.copytree(os.path.join(collection, "low"), audio)
  (audio / "zero_hz.wav").write_bytes(wav(0))
  (audio / "one_hz.wav").write_bytes(wav(1))
  os.symlink(audio / "loop_b.wav", audio / "loop_a.wav")
  os.symlink(audio / "loop_a.wav", audio / "loop_b.wav")
  os.symlink(audio / "gone.wav", audio / "dangling.wav")
  os.mkfifo(audio / "pipe.wav")
  index = str(tmp_path / "index")
  r = cli("jaxaudio.search", "index", f"--model={export_dir}", f"--audio={audio}",
          f"--index={index}", "--workers=1")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "3 files" in r.stdout and "skipped 6" in r.stdout, r.stdout
  for name, words in (("zero_hz.wav", "sample rate of 0 Hz"), ("one_hz.wav", "of 1 Hz"),
                      ("loop_a.wav", "symlink is broken or loops"),
                      ("pipe.wav", "not a regular file")):
    assert any(name in l and words in l for l in r.stdout.splitlines()), (name, r.stdout)
  # query: one bad file is one sentence; a folder skips and reports its bad files.
  for args, words in (((f"--audio={audio / 'zero_hz.wav'}",), "sample rate of 0 Hz"),
                      ((f"--audio={audio / 'low_0.wav'}", "--end=inf"), "not a span of seconds"),
                      ((f"--audio={audio / 'low_0.wav'}", "--end=1e308", "--start=1e307"),
                       "not a span"),
                      ((f"--audio={tmp_path}",), "no audio file there could be queried")):
    if args == (f"--audio={tmp_path}",):
      os.makedirs(tmp_path / "empty", exist_ok=True)
      args = (f"--audio={tmp_path / 'empty'}",)
    r = cli("jaxaudio.search", "query", f"--index={index}", *args)
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (args, r.stderr)
  r = cli("jaxaudio.search", "query", f"--index={index}", f"--audio={audio}", "--json", "--k=1")
  assert r.returncode == 0, r.stderr[-2000:]
  found = json.loads(r.stdout)
  assert sorted(os.path.basename(q["query"]) for q in found) == ["low_0.wav", "low_1.wav",
                                                                 "low_2.wav"]
  assert all(q["results"][0]["file"] == q["query"] for q in found)
  assert sum("skipped:" in l for l in r.stderr.splitlines()) == 6
