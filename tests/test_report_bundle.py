"""runtime/bundle.py: every report (evaluation, test metrics, sweep, cross-validation,
selection, prepare) is written through write_bundle, atomically."""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from jaxaudio.runtime.bundle import write_bundle  # noqa: E402


def test_bundle_writes_json_markdown_and_figures(tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  data = {"accuracy": 0.5, "per_class": {"a": [1, 2]}, "nan": None}
  written = write_bundle(str(tmp_path / "report"), "evaluation", data, "# Evaluation\n",
                         {"robustness": fig})
  plt.close(fig)
  assert written == {k: str(tmp_path / "report" / n) for k, n in
                     (("json", "evaluation.json"), ("md", "evaluation.md"),
                      ("robustness", "robustness.png"))}
  with open(written["json"]) as f:
    assert json.load(f) == data
  assert open(written["md"]).read() == "# Evaluation\n"
  assert open(written["robustness"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path / "report")) == ["evaluation.json", "evaluation.md",
                                                     "robustness.png"]


def test_a_failed_write_leaves_the_previous_report_whole(tmp_path):
  write_bundle(str(tmp_path), "sweep", {"best": 1}, "old\n")

  class Broken:
    def savefig(self, path, **_):
      with open(path, "wb") as f:
        f.write(b"half")
      raise OSError("disk full")

  with pytest.raises(TypeError):   # not JSON: nothing of the new report is written
    write_bundle(str(tmp_path), "sweep", {"best": object()}, "new\n")
  with pytest.raises(OSError):
    write_bundle(str(tmp_path), "sweep", None, None, {"plot": Broken()})
  assert json.load(open(tmp_path / "sweep.json")) == {"best": 1}
  assert open(tmp_path / "sweep.md").read() == "old\n"
  assert sorted(os.listdir(tmp_path)) == ["sweep.json", "sweep.md"]   # no temporary left
