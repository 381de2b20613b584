"""perch-hoplite's own agile linear classifier on jaxaudio's embeddings and labels: the
reference bench/agile.py compares `learn` with. Runs in a virtual environment of its own
(perch-hoplite pins ml-collections<0.2 and absl-py<2, jaxaudio needs newer ones):

  python3 -m venv /root/hoplite-venv
  /root/hoplite-venv/bin/pip install perch-hoplite tensorflow-cpu
  /root/hoplite-venv/bin/python bench/hoplite_reference.py IN.npz LABELS.json OUT.npz

IN.npz: embeddings [N, D], file_of_row [N], offsets [N], hop (seconds). LABELS.json: a list of
{"row", "label", "positive"}: one verdict on one window (the annotator labels windows).
OUT.npz: logits [N, C] and classes [C].

Each window goes into hoplite's SQLite + USearch database (its in-memory one scans every
annotation for every training example: minutes per classifier at 7,440 windows) with the
span it alone covers, [offset,
offset + hop): jaxaudio's windows overlap by half, and hoplite gives a label to every window
that intersects the labelled span, so a verdict on one window would reach its neighbours
too. A label is that span's middle half. Then hoplite's AgileDataManager and
train_linear_classifier with the agile notebook's settings (learning rate 1e-3, weak-negative
weight 0.05, 128 steps, batch 128 + 128 weak negatives, train ratio 0.9, bce).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile

import numpy as np
from ml_collections import config_dict
from perch_hoplite.agile import classifier, classifier_data
from perch_hoplite.db import datatypes, sqlite_usearch_impl


def main(in_npz: str, labels_json: str, out_npz: str, seed: int = 5) -> None:
  data = np.load(in_npz)
  emb, files, offsets, hop = (data["embeddings"], data["file_of_row"], data["offsets"],
                              float(data["hop"]))
  with open(labels_json) as f:
    labels = json.load(f)
  folder = tempfile.mkdtemp(prefix="hoplite-")
  db = sqlite_usearch_impl.SQLiteUSearchDB.create(
      folder, sqlite_usearch_impl.get_default_usearch_config(emb.shape[1]))
  db.insert_metadata("model_config", config_dict.ConfigDict({"model": "jaxaudio"}))
  recordings = {int(i): db.insert_recording(filename=f"rec{int(i)}") for i in np.unique(files)}
  window_ids = np.array([db.insert_window(recordings[int(files[r])],
                                          [float(offsets[r]), float(offsets[r]) + hop],
                                          emb[r].astype(np.float32))
                         for r in range(len(emb))])
  for lab in labels:
    r = int(lab["row"])
    lo = float(offsets[r]) + 0.25 * hop
    db.insert_annotation(recordings[int(files[r])], [lo, lo + 0.5 * hop], lab["label"],
                         datatypes.LabelType.POSITIVE if lab["positive"]
                         else datatypes.LabelType.NEGATIVE, provenance="bench",
                         handle_duplicates="overwrite")
  db.commit()
  classes = tuple(sorted({lab["label"] for lab in labels}))
  manager = classifier_data.AgileDataManager(
      target_labels=classes, db=db, train_ratio=0.9, min_eval_examples=1, batch_size=128,
      weak_negatives_batch_size=128, rng=np.random.default_rng(seed=seed))
  clf, _ = classifier.train_linear_classifier(manager, learning_rate=1e-3,
                                              weak_neg_weight=0.05, num_train_steps=128)
  del window_ids
  np.savez(out_npz, logits=clf(emb.astype(np.float32)), classes=np.array(clf.classes))
  shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  main(*sys.argv[1:4])
