"""`prepare` on Apache Beam against today's builder, side by side in one run (issue 26 item 4).

  python bench/bench_prepare_beam.py --source=demo --source=folder:/tmp/shift/speakers \
      [--config=configs/folder.py] [--rounds=2]

For each source: `python -m jaxaudio.prepare` as it runs without Beam (data.workers=1, the
in-process featurizer this 2-core machine picks), then on Beam's DirectRunner with 1 and with
2 worker processes (--direct_running_mode=multi_processing), each into its own prepared_dir,
the three in turn for --rounds rounds (the best wall time of each is reported: the machine is
shared). Every Beam build is compared with the plain one: the same array_record files, record
for record in canonical bytes (protobuf writes a record's feature map in an order that varies
from process to process, so even two plain builds differ in raw bytes), and meta.json byte
for byte.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BEAM = {"beam 1 worker": ["--runner=DirectRunner", "--direct_num_workers=1",
                          "--direct_running_mode=multi_processing"],
        "beam 2 workers": ["--runner=DirectRunner", "--direct_num_workers=2",
                           "--direct_running_mode=multi_processing"]}


def canonical(root: str) -> dict[str, object]:
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  out: dict[str, object] = {}
  for path in sorted(glob.glob(os.path.join(root, "tfds", "**", "*.array_record*"),
                               recursive=True)):
    reader = array_record_module.ArrayRecordReader(path)
    out[os.path.relpath(path, root)] = [
        example_pb2.Example.FromString(r).SerializeToString(deterministic=True)
        for r in reader.read_all()]
    reader.close()
  out["meta.json"] = open(os.path.join(root, "meta.json"), "rb").read()
  return out


def prepare(config: str, source: str, where: str, extra: list[str]) -> tuple[float, dict]:
  shutil.rmtree(where, ignore_errors=True)
  cmd = [sys.executable, "-m", "jaxaudio.prepare", f"--config={config}",
         f"--config.data.source={source}", f"--config.data.prepared_dir={where}",
         "--config.data.workers=1", "--quiet", *extra]
  t = time.perf_counter()
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t
  if r.returncode:
    raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
  return wall, json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", action="append", required=True)
  parser.add_argument("--config", default="configs/folder.py")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for source in args.source:
      walls: dict[str, list[float]] = {}
      summary = {}
      for _ in range(args.rounds):
        for name, extra in {"plain (today)": [], **BEAM}.items():
          where = os.path.join(tmp, name.replace(" ", "_"))
          wall, out = prepare(args.config, source, where, extra)
          walls.setdefault(name, []).append(wall)
          summary[name] = (out, canonical(out["prepared"]))
      plain_out, plain_files = summary["plain (today)"]
      files = sum(plain_out["splits"][s]["clips"] for s in plain_out["splits"]) + \
          plain_out["skipped_files"]
      windows = sum(plain_out["splits"][s]["windows"] for s in plain_out["splits"])
      for name, (out, got) in summary.items():
        same = "-" if name.startswith("plain") else (
            "yes" if got == plain_files else "NO")
        rows.append((source, files, windows, name, min(walls[name]), same))
  best = {(r[0], r[3]): r[4] for r in rows}
  print("| source | files | windows | build | best wall s | x plain | x beam 1 worker | "
        "same records and meta.json as plain |\n|---|---:|---:|---|---:|---:|---:|---|")
  for source, files, windows, name, wall, same in rows:
    print(f"| {source} | {files} | {windows} | {name} | {wall:.1f} | "
          f"{best[(source, 'plain (today)')] / wall:.2f} | "
          f"{best[(source, 'beam 1 worker')] / wall:.2f} | {same} |")


if __name__ == "__main__":
  main()
