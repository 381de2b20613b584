"""Query-by-example retrieval quality over labelled clips.

Each clip queries all the others by cosine similarity of L2-normalised clip embeddings; a
result is relevant when it shares a label with the query (multi-label: any label). Queries
without any relevant clip are left out of every average. Reported: mAP, precision@k and
recall@k for k = 1, 5, 10, and nDCG@10 with binary gains (sklearn's definitions for a
ranking without ties: average_precision_score and ndcg_score per query).
"""

from __future__ import annotations

import numpy as np

from jaxaudio.models.outputs import l2_normalise

KS = (1, 5, 10)


def clip_embeddings(window_embeddings: np.ndarray, clip_ids: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """(clip ids sorted, L2-normalised mean of each clip's L2-normalised window embeddings)."""
  clips, inverse = np.unique(clip_ids, return_inverse=True)
  summed = np.zeros((len(clips), window_embeddings.shape[-1]))
  np.add.at(summed, inverse, l2_normalise(np.asarray(window_embeddings, np.float64)))
  return clips, l2_normalise(summed)


def _relevance(labels: np.ndarray) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim == 1:
    return labels[:, None] == labels[None, :]
  hot = labels.astype(bool).astype(np.float32)
  return (hot @ hot.T) > 0


def retrieval_scores(embeddings: np.ndarray, labels: np.ndarray, ks=KS, ndcg_k: int = 10,
                     chunk: int = 1024) -> dict[str, float]:
  """mAP, P@k, R@k, nDCG@ndcg_k and the number of queries (see module docstring)."""
  emb = l2_normalise(np.asarray(embeddings, np.float64))
  n = len(emb)
  rel_all = _relevance(labels)
  sums = {"mAP": 0.0, f"nDCG@{ndcg_k}": 0.0}
  sums.update({f"P@{k}": 0.0 for k in ks})
  sums.update({f"R@{k}": 0.0 for k in ks})
  discounts = 1.0 / np.log2(np.arange(2, n + 1))
  queries = 0
  for start in range(0, n, chunk):
    idx = np.arange(start, min(start + chunk, n))
    sim = emb[idx] @ emb.T
    sim[np.arange(len(idx)), idx] = -np.inf          # a clip does not retrieve itself
    order = np.argsort(-sim, axis=1, kind="stable")[:, :n - 1]
    rel = np.take_along_axis(rel_all[idx], order, axis=1).astype(np.float64)
    total = rel.sum(1)
    has = total > 0
    rel, total = rel[has], total[has]
    queries += int(has.sum())
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, n)
    sums["mAP"] += float(np.sum((hits / ranks * rel).sum(1) / total))
    for k in ks:
      kk = min(k, n - 1)
      sums[f"P@{k}"] += float(np.sum(hits[:, kk - 1] / k))
      sums[f"R@{k}"] += float(np.sum(hits[:, kk - 1] / total))
    kk = min(ndcg_k, n - 1)
    dcg = (rel[:, :kk] * discounts[:kk]).sum(1)
    ideal = np.array([discounts[:int(min(t, kk))].sum() for t in total])
    sums[f"nDCG@{ndcg_k}"] += float(np.sum(dcg / ideal))
  out = {k: (v / queries if queries else 0.0) for k, v in sums.items()}
  out["num_queries"] = queries
  return out
