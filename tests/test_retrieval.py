"""Retrieval metrics against sklearn's per-query definitions."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from jaxaudio.evaluation import retrieval


def reference(emb, rel, k_list=(1, 5, 10)):
  emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  sim = emb @ emb.T
  n = len(emb)
  out = {"mAP": [], "nDCG@10": []}
  out.update({f"P@{k}": [] for k in k_list})
  out.update({f"R@{k}": [] for k in k_list})
  for i in range(n):
    others = np.arange(n) != i
    y, s = rel[i, others].astype(int), sim[i, others]
    if y.sum() == 0:
      continue
    out["mAP"].append(average_precision_score(y, s))
    out["nDCG@10"].append(ndcg_score(y[None], s[None], k=10))
    top = np.argsort(-s)
    for k in k_list:
      out[f"P@{k}"].append(y[top[:k]].sum() / k)
      out[f"R@{k}"].append(y[top[:k]].sum() / y.sum())
  return {k: float(np.mean(v)) for k, v in out.items()}, len(out["mAP"])


@pytest.mark.parametrize("multi_label", [False, True])
def test_scores_match_sklearn(multi_label):
  rng = np.random.default_rng(3)
  n, c = 57, 5
  if multi_label:
    labels = (rng.random((n, c)) < 0.25).astype(np.uint8)
    labels[0] = 0                                   # a query with nothing relevant
    rel = (labels @ labels.T) > 0
  else:
    labels = rng.integers(0, c, n)
    labels[0] = c + 3                               # a class of one: no relevant clip
    rel = labels[:, None] == labels[None, :]
  centers = rng.normal(size=(c + 4, 16))
  lab_idx = labels.argmax(1) if multi_label else labels
  emb = centers[lab_idx] + rng.normal(scale=1.5, size=(n, 16))
  ours = retrieval.retrieval_scores(emb, labels, chunk=20)   # several query chunks
  ref, queries = reference(emb, rel)
  assert ours["num_queries"] == queries == n - 1 - (0 if not multi_label else
                                                    int((labels[1:].sum(1) == 0).sum()))
  for key, value in ref.items():
    assert ours[key] == pytest.approx(value, abs=1e-12), key
  assert 0.2 < ours["mAP"] < 0.95   # neither trivial nor random


def test_clip_embeddings_average_normalised_windows():
  win = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  clips, emb = retrieval.clip_embeddings(win, np.array([7, 7, 2]))
  assert list(clips) == [2, 7]
  np.testing.assert_allclose(emb[0], [2 ** -0.5, 2 ** -0.5])
  np.testing.assert_allclose(emb[1], [2 ** -0.5, 2 ** -0.5])   # (1,0)+(0,1), not (3,1)
