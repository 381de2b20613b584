"""IVF-PQ (`search index --ann=ivfpq`) and sharded search (jaxaudio.search.shards).

Index folders are written through jaxaudio.search.store (segments, manifest, the trained
run's exported model), with synthetic clustered rows in the model's embedding size, so the
approximate index has thousands of rows to train on in seconds; references are FAISS's exact
inner-product search and one index over the union of the shards' rows.
"""

from __future__ import annotations

import dataclasses
import os

import faiss
import numpy as np
import pytest
import soundfile as sf

from datafixtures import SR, tone

ROWS = 12000        # rows of the recall test: IVF-PQ's 128 lists and 1,024 re-scored codes
RECALL = 0.95       # stated: recall@10 against exact search at the index's measured nprobe


def clustered(n, dim, seed=0, centres=2000, spread=0.5):
  """Rows around cluster centres, L2-normalised (bench_search's shape, fewer centres)."""
  rng = np.random.default_rng(seed)
  c = np.random.default_rng(123).standard_normal((centres, dim)).astype(np.float32)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  x = c[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, dim)).astype(
      np.float32) / np.sqrt(dim)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def export_dir(trained):
  from jaxaudio.exports import stablehlo
  return stablehlo.for_run(trained[0])


@pytest.fixture(scope="module")
def identity(export_dir):
  from jaxaudio.inference import exported
  from jaxaudio.search import indexer, store
  meta = exported.load(export_dir).meta
  return store.model_identity({**meta, "settings": dataclasses.asdict(
      indexer.search_settings(meta))})


def write_index(path, identity, export_dir, emb, names, windows, method=None):
  """An index folder holding `names` (files of `windows` rows each, in name order) with the
  rows `emb` in that order, as one segment; `method` builds its approximate index."""
  from jaxaudio.search import ann, store
  os.makedirs(path)
  seg = store.segment_name(1)
  offsets = np.tile(np.arange(windows, dtype=np.float32) * 0.5, len(names))
  store.write_segment(path, seg, emb, offsets)
  files = [store.Entry(n, 1, 0, seg, i * windows, windows, windows * 0.5)
           for i, n in enumerate(names)]
  manifest = store.Manifest(model=identity, segments={seg: len(emb)}, files=files,
                            generation=1)
  store.install_model(path, export_dir)
  if method:
    manifest.ann = ann.upkeep(path, None, manifest, None, False, method, False)
  store.write_manifest(path, manifest)
  return store.read_manifest(path)


def flat_top(emb, queries, k):
  """FAISS exact inner-product search: the independent reference."""
  flat = faiss.IndexFlatIP(emb.shape[1])
  flat.add(emb)
  return flat.search(np.ascontiguousarray(queries), k)[1]


def test_ivfpq_recall_against_exact_search_is_measured_and_stored(tmp_path, identity,
                                                                  export_dir):
  from jaxaudio.search import ann, store
  from jaxaudio.search.searcher import Searcher
  dim = identity["embedding_dim"]
  emb = clustered(ROWS, dim)
  names = [f"/archive/{i:05d}.wav" for i in range(ROWS // 8)]
  m = write_index(str(tmp_path / "index"), identity, export_dir, emb, names, 8, "ivfpq")
  entry = m.ann
  assert entry["method"] == "ivfpq" and entry["last_update"] == "built"
  assert entry["lists"] == ann.nlist_for(ROWS) == 128
  assert entry["code_bytes"] == dim // 8          # 4-bit codes of dim/4 sub-quantisers
  assert entry["recall_at_10"] >= RECALL and entry["recall_queries"] == ann.RECALL_QUERIES
  assert entry["recall_by_nprobe"][str(entry["nprobe"])] == entry["recall_at_10"]
  assert all(r < RECALL for p, r in entry["recall_by_nprobe"].items()
             if int(p) < entry["nprobe"])          # the smallest nprobe that reaches it
  # the stored figure, checked against FAISS's exact search on rows the training never saw
  s = Searcher(str(tmp_path / "index"), use_ann=True)
  assert s.nprobe == entry["nprobe"]
  pick = np.random.default_rng(7).choice(ROWS, 200, replace=False)
  truth = flat_top(emb, emb[pick], 11)
  found = s._graph.search(emb[pick], 11, s.nprobe)[1]
  assert ann.recall_of(found, truth, pick) >= RECALL
  # every figure of the stored ladder agrees with FAISS's exact search on other queries
  for nprobe, stored in entry["recall_by_nprobe"].items():
    again = ann.recall_of(s._graph.search(emb[pick], 11, int(nprobe))[1], truth, pick)
    assert abs(again - stored) < 0.05, (nprobe, again, stored)
  # a query finds its own file first, its window at score 1, as exact search does
  row = int(pick[0])
  (hits,) = s.search([emb[row:row + 1]], k=3)
  assert hits[0].file == names[row // 8] and hits[0].offset == (row % 8) * 0.5
  assert hits[0].score == pytest.approx(1.0, abs=1e-5)
  assert s.info()["nprobe"] == entry["nprobe"]
  assert store.read_manifest(str(tmp_path / "index")).ann == entry
  # `serve --nprobe`: the server's approximate searcher scans what it is told, else the manifest's
  from jaxaudio.search.service import Service
  assert Service(str(tmp_path / "index")).current().approx.nprobe == entry["nprobe"]
  assert Service(str(tmp_path / "index"), nprobe=entry["nprobe"] + 3).current().approx.nprobe \
      == entry["nprobe"] + 3


def test_ivfpq_rescores_more_candidates_where_nprobe_stops_helping(tmp_path, identity,
                                                                   export_dir, monkeypatch):
  """Dense neighbourhoods (600 rows a centre): the true neighbours sit in the lists scanned,
  but their codes rank below the re-scored few, so nprobe plateaus and the build doubles the
  re-scored candidates until recall@10 reaches the target; the Searcher re-scores as many."""
  from jaxaudio.search import ann
  from jaxaudio.search.searcher import Searcher
  monkeypatch.setattr(ann, "REFINE", 16)
  dim = identity["embedding_dim"]
  emb = clustered(ROWS, dim, seed=3, centres=20, spread=0.35)
  names = [f"/archive/{i:05d}.wav" for i in range(ROWS // 8)]
  entry = write_index(str(tmp_path / "index"), identity, export_dir, emb, names, 8,
                      "ivfpq").ann
  by_nprobe = list(entry["recall_by_nprobe"].values())
  assert by_nprobe[-1] < RECALL and by_nprobe[-1] - by_nprobe[-2] < ann.PLATEAU   # stopped helping
  assert entry["refine"] > 16 and entry["recall_at_10"] >= RECALL
  assert entry["recall_ladder"][-1] == [entry["nprobe"], entry["refine"], entry["recall_at_10"]]
  assert all(r < RECALL for _, _, r in entry["recall_ladder"][:-1])   # the first to reach it
  s = Searcher(str(tmp_path / "index"), use_ann=True)
  assert s._graph.refine == entry["refine"]
  pick = np.random.default_rng(7).choice(ROWS, 200, replace=False)
  truth = flat_top(emb, emb[pick], 11)
  assert ann.recall_of(s._graph.search(emb[pick], 11, s.nprobe)[1], truth, pick) >= RECALL
  s._graph.refine = 16
  assert ann.recall_of(s._graph.search(emb[pick], 11, s.nprobe)[1], truth, pick) < RECALL


def test_ivfpq_extended_over_two_updates_holds_one_builds_row_set(tmp_path, trained,
                                                                  export_dir):
  """Through the indexer: a second update adds the new files' rows to the codes (no
  retraining), and the index then holds every live row once, as one build over all files."""
  from jaxaudio.search import ann, indexer, store
  audio = tmp_path / "audio"
  audio.mkdir()
  for i in range(16):     # 16 x 12 s at a hop of 1/20 window: ~1,400 windows
    sf.write(str(audio / f"a{i:02d}.wav"), tone(200 + 60 * i, 12.0, seed=i, level=0.2)
             + 0.05 * np.random.default_rng(i).standard_normal(int(12.0 * SR)).astype(
                 np.float32), SR)
  index, whole = str(tmp_path / "index"), str(tmp_path / "whole")
  first = indexer.update(index, str(audio), export_dir, with_ann="ivfpq", hop=0.05,
                         workers=1, progress=False)
  m1 = store.read_manifest(index)
  assert m1.ann["method"] == "ivfpq" and m1.ann["last_update"] == "built"
  assert first["ann_recall_at_10"] == m1.ann["recall_at_10"]
  for i in range(16, 20):
    sf.write(str(audio / f"a{i:02d}.wav"), tone(200 + 60 * i, 12.0, seed=i, level=0.2), SR)
  indexer.update(index, str(audio), export_dir, workers=1, progress=False)   # keeps ivfpq
  m2 = store.read_manifest(index)
  assert m2.ann["method"] == "ivfpq" and m2.ann["last_update"] == "extended"
  assert m2.ann["spans"][:len(m1.ann["spans"])] == m1.ann["spans"]
  assert m2.ann["trained_for_rows"] == m1.ann["trained_for_rows"] == first["rows"]
  indexer.update(whole, str(audio), export_dir, with_ann="ivfpq", hop=0.05, workers=1,
                 progress=False)
  w = store.read_manifest(whole)
  for path, m in ((index, m2), (whole, w)):
    ids = ann.live_ids(m.ann["spans"], m)
    assert np.array_equal(np.sort(ids[ids >= 0]), np.arange(m.live_rows))
    assert ann.load(os.path.join(path, m.ann["file"])).ntotal == len(ids)
  rows = lambda p, m: {(e.path, float(o)) for e, o in zip(*_file_offsets(p, m))}  # noqa: E731
  assert rows(index, m2) == rows(whole, w)


def _file_offsets(path, manifest):
  from jaxaudio.search import store
  r = store.load_rows(path, manifest, embeddings=False)
  return [r.files[f] for f in r.file_of_row], r.offsets


def _shards(tmp_path, identity, export_dir, method=None, union=True):
  """Two shards of interleaved file names and (`union`) one index over all their rows."""
  dim = identity["embedding_dim"]
  emb = clustered(2 * 6000, dim, seed=3)
  names = [f"/archive/{i:05d}.wav" for i in range(len(emb) // 6)]
  per_file = emb.reshape(len(names), 6, dim)
  for part in (0, 1):
    write_index(str(tmp_path / "parts" / f"shard{part}"), identity, export_dir,
                per_file[part::2].reshape(-1, dim), names[part::2], 6, method)
  if union:
    write_index(str(tmp_path / "union"), identity, export_dir, emb, names, 6, method)
  return emb, names


def _parts(tmp_path):
  return [str(tmp_path / "parts" / n) for n in ("shard0", "shard1")]


def test_sharded_exact_search_equals_one_index_over_the_same_rows(tmp_path, identity,
                                                                  export_dir):
  from jaxaudio.search import shards
  from jaxaudio.search.searcher import Searcher
  emb, names = _shards(tmp_path, identity, export_dir)
  top = str(tmp_path / "top")
  assert shards.write(top, _parts(tmp_path)) == {
      "shards": 2, "files": len(names), "rows": len(emb)}
  one, sharded = Searcher(str(tmp_path / "union")), Searcher(top)
  folder = Searcher(str(tmp_path / "parts"))     # a folder of index folders, no list
  assert [s.path for s in folder._shards] == [str(tmp_path / "parts" / n)
                                              for n in ("shard0", "shard1")]
  assert sharded.manifest.live_rows == len(emb) and len(sharded.rows.files) == len(names)
  rng = np.random.default_rng(0)
  queries = [emb[rng.integers(0, len(emb), w)] + 0.05 * rng.standard_normal(
      (w, emb.shape[1])).astype(np.float32) for w in (1, 1, 3, 8)]
  queries += [emb[6 * 10:6 * 11]]      # a whole file: ties at score 1 inside it
  for per_file, k in ((True, 3), (True, 10), (False, 10)):   # few programs to compile
    a, b = one.search(queries, k, per_file), sharded.search(queries, k, per_file)
    assert folder.search(queries, k, per_file) == b
    for ha, hb in zip(a, b):
      assert [(h.file, h.offset, h.end) for h in ha] == [(h.file, h.offset, h.end) for h in hb]
      np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-6)
  assert one.search([queries[-1]], 1)[0][0].file == names[10]


def test_sharded_ivfpq_search_keeps_its_recall_against_exact_search_on_the_union(
    tmp_path, identity, export_dir):
  from jaxaudio.search import ann, shards
  from jaxaudio.search.searcher import Searcher
  emb, names = _shards(tmp_path, identity, export_dir, "ivfpq", union=False)
  top = str(tmp_path / "top")
  shards.write(top, _parts(tmp_path))
  sharded = Searcher(top, use_ann=True)
  exact = Searcher(top)
  assert sharded.manifest.ann["shards"] == 2
  assert sharded.manifest.ann["recall_at_10"] == min(sharded.manifest.ann[
      "recall_at_10_by_shard"]) >= RECALL
  pick = np.random.default_rng(1).choice(len(emb), 100, replace=False)
  truth = flat_top(emb, emb[pick], 11)        # rows of the union, file by file
  row_of = {(n, 0.5 * w): 6 * i + w for i, n in enumerate(names) for w in range(6)}
  found = [[row_of[(h.file, h.offset)] for h in hits]
           for hits in sharded.search([emb[p:p + 1] for p in pick], 11, per_file=False)]
  assert ann.recall_of(np.array(found), truth, pick) >= RECALL
  # per file, the approximate shards agree with exact search on the best file
  q = [emb[p:p + 1] for p in pick[:20]]
  assert [h[0].file for h in sharded.search(q, 5)] == [h[0].file for h in exact.search(q, 5)]


def test_sharded_index_is_served(tmp_path, identity, export_dir):
  """`search serve` builds its Searcher from the path: a sharded index is served as one."""
  from fastapi.testclient import TestClient
  from jaxaudio.search import shards
  from jaxaudio.search.app import create_app
  from jaxaudio.search.searcher import Searcher
  _shards(tmp_path, identity, export_dir, union=False)
  top = str(tmp_path / "top")
  shards.write(top, _parts(tmp_path))
  clip = str(tmp_path / "q.wav")
  sf.write(clip, tone(440, 2.0, seed=9), SR)
  client = TestClient(create_app(top), base_url="http://127.0.0.1:8000")
  with open(clip, "rb") as f:
    r = client.post("/api/query", files={"audio": ("q.wav", f, "audio/wav")},
                    data={"k": "5"})
  assert r.status_code == 200, r.text
  s = Searcher(top)
  want = s.search([s.embed_audio(clip)], 5)[0]
  got = r.json()["results"]
  assert [(g["name"], g["offset"]) for g in got] == [(os.path.basename(h.file), h.offset)
                                                     for h in want]
  info = client.get("/api/index").json()
  assert info["files"] == len(s.rows.files)
  # a commit to one shard alone (a file removed from shard1) reloads the served index
  from jaxaudio.search import store
  one = _parts(tmp_path)[1]
  m = store.read_manifest(one)
  m.files, m.generation = m.files[:-1], m.generation + 1
  store.write_manifest(one, m)
  app_service = client.app.state.service
  app_service._checked = float("-inf")   # pylint: disable=protected-access  # no 0.5 s wait
  assert client.get("/api/index").json()["files"] == len(s.rows.files) - 1


def test_bad_input_gets_one_sentence(tmp_path, identity, export_dir):
  from jaxaudio.runtime.errors import SearchIndexError
  from jaxaudio.search import shards, store
  from jaxaudio.search.searcher import Searcher
  dim = identity["embedding_dim"]
  with pytest.raises(SearchIndexError, match=r"^600 windows are too few to train an IVF-PQ "
                     r"index .* use --ann=hnsw or exact search [^.]*\.$"):
    write_index(str(tmp_path / "small"), identity, export_dir, clustered(600, dim),
                [f"/a/{i}.wav" for i in range(100)], 6, "ivfpq")
  emb = clustered(3000, dim)
  write_index(str(tmp_path / "ok"), identity, export_dir, emb,
              [f"/a/{i:04d}.wav" for i in range(500)], 6, "ivfpq")
  for bad in (0, -3):
    with pytest.raises(SearchIndexError, match=rf"^--nprobe={bad} is not a number of IVF "
                       r"lists to scan; pass a positive number[^.]*\.$"):
      Searcher(str(tmp_path / "ok"), use_ann=True, nprobe=bad)
  # two shards holding one file, and a sharded index opened as a plain one
  write_index(str(tmp_path / "twin"), identity, export_dir, emb[:6], ["/a/0000.wav"], 6)
  with pytest.raises(SearchIndexError, match=r"/a/0000\.wav is indexed in two shards"):
    shards.write(str(tmp_path / "top"), [str(tmp_path / "ok"), str(tmp_path / "twin")])
  shards.write(str(tmp_path / "top"), [str(tmp_path / "ok")])
  with pytest.raises(SearchIndexError, match=r"is a sharded index \(a list of 1 index folders\)"):
    store.read_manifest(str(tmp_path / "top"))
