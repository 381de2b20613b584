"""Exact cosine search in JAX: batched matmuls over the index rows, then top-k.

A call with a few query windows scores every row in one matmul (it is bound by reading the
rows); one with many goes block by block to bound the score intermediate.

Rows are L2-normalised window embeddings, so cosine similarity is a dot product. A query
is a set of windows (a clip); a row's score is its best match over the query's windows,
so a clip that is in the index finds its own windows at score 1. Results are ranked per
file (each file's best window, as a user of query-by-example expects: ten different files,
not ten overlapping windows of one) or per window.

A file's hit is its first window (lowest row, earliest offset) that scores within TIE of
the file's best. Windows that match equally well differ only in how a dot rounded (a
whole-file query finds every window of the file at 1; a stationary sound scores alike
along its length), and that rounding depends on the kernels (XLA's, YNNPACK's, FAISS's):
the earliest of them is an answer every search path and CPU agrees on, and the one a user
wants to listen to. Approximate search (searcher.py) applies the same rule to its candidates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxaudio.models.outputs import pow2

BLOCK = 16384      # index rows per matmul: bounds the [queries, windows, rows] intermediate
MEMORY_BOUND_WINDOWS = 8          # up to this many query windows a call is memory-bound
ONE_PASS_SCORE_BYTES = 256 << 20  # bound on the [windows, rows] scores of a one-pass call
QUERY_BATCH = 64   # queries per program: bounds the [queries, rows] score matrix
TIE = 1e-6         # scores this close are one score: float32 rounding of a cosine is ~1e-7


def pad_queries(queries: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """[B, W, D] windows and [B, W] mask from a list of [W_i, D]. B and W are rounded up to
  powers of two so that repeated searches reuse a handful of compiled programs."""
  width = pow2(max(len(q) for q in queries))
  dim = queries[0].shape[1]
  out = np.zeros((pow2(len(queries)), width, dim), np.float32)
  mask = np.zeros(out.shape[:2], bool)
  for i, q in enumerate(queries):
    out[i, :len(q)], mask[i, :len(q)] = q, True
  return out, mask


def one_pass(query_windows: int, rows: int) -> bool:
  """Whether to score all rows in one matmul instead of block by block. A search with a few
  query windows is a memory-bound pass over the rows, and stepping through the blocks copies
  each one out of the array first, doubling the traffic (1M rows, one window: 80 ms in one
  pass against 230 ms by blocks on a 2-core CPU); with many windows it is compute-bound and
  cache-sized blocks do as well, with a bounded intermediate."""
  return (query_windows <= MEMORY_BOUND_WINDOWS
          and query_windows * rows * 4 <= ONE_PASS_SCORE_BYTES)


def _row_scores(blocks, q, qmask):
  """[B, rows]: max over each query's valid windows of the cosine with every index row."""
  def one(block):
    s = jnp.einsum("bwd,nd->bwn", q, block, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(qmask[:, :, None], s, -jnp.inf).max(axis=1)
  nb, rows, dim = blocks.shape
  if one_pass(q.shape[0] * q.shape[1], nb * rows):
    return one(blocks.reshape(nb * rows, dim))
  out = jax.lax.map(one, blocks)                       # [blocks, B, BLOCK]
  return jnp.moveaxis(out, 0, 1).reshape(q.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("k", "num_files"))
def _top_files(blocks, file_of_row, q, qmask, k, num_files):
  scores = _row_scores(blocks, q, qmask)               # [B, N]; padding rows -> file num_files
  best = jax.ops.segment_max(scores.T, file_of_row, num_segments=num_files + 1)[:num_files]
  top, files = jax.lax.top_k(best.T, k)                # [B, k]
  # the first row of each chosen file that scores within TIE of the file's best
  rows = jnp.arange(scores.shape[1], dtype=jnp.int32)
  at_best = scores >= jnp.concatenate([best, jnp.full((1, best.shape[1]), jnp.inf)]).T[
      :, file_of_row] - TIE
  first = jax.ops.segment_min(jnp.where(at_best, rows, scores.shape[1]).T, file_of_row,
                              num_segments=num_files + 1)[:num_files]     # [F, B]
  return top, files, jnp.take_along_axis(first.T, files, axis=1)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_rows(blocks, valid, q, qmask, k):
  scores = jnp.where(valid, _row_scores(blocks, q, qmask), -jnp.inf)
  top, rows = jax.lax.top_k(scores, k)
  return top, rows


class ExactIndex:
  """Index rows held on the default device, padded to whole blocks."""

  def __init__(self, embeddings: np.ndarray, file_of_row: np.ndarray, num_files: int):
    n, dim = embeddings.shape
    self.num_rows, self.num_files, self.dim = n, num_files, dim
    padded = max(1, -(-n // BLOCK)) * BLOCK
    emb = np.zeros((padded, dim), np.float32)
    emb[:n] = embeddings
    fid = np.full(padded, num_files, np.int32)
    fid[:n] = file_of_row
    self._blocks = jax.device_put(emb.reshape(-1, BLOCK, dim))
    self._file_of_row = jax.device_put(fid)
    self._valid = jax.device_put(np.arange(padded) < n)

  def search(self, queries: list[np.ndarray], k: int, per_file: bool = True
             ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [B, k'], rows [B, k']) best first, k' = min(k, files or rows); per_file keeps
    each file's best window only. Queries go through QUERY_BATCH at a time."""
    if self.num_rows == 0:
      return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int32)
    scores, rows = [], []
    for i in range(0, len(queries), QUERY_BATCH):
      q, mask = pad_queries(queries[i:i + QUERY_BATCH])
      if per_file:
        top, _, row = _top_files(self._blocks, self._file_of_row, q, mask,
                                 k=min(k, self.num_files), num_files=self.num_files)
      else:
        top, row = _top_rows(self._blocks, self._valid, q, mask, k=min(k, self.num_rows))
      n = min(QUERY_BATCH, len(queries) - i)
      scores.append(np.asarray(top)[:n])
      rows.append(np.asarray(row)[:n])
    return np.concatenate(scores), np.concatenate(rows)
