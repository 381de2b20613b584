"""A report as files, written the one way every command writes one: NAME.json (the numbers),
NAME.md (the same for a reader) and its figures as PNG, side by side in one folder.

Each file is written to a temporary name and renamed into place, so a reader (a browser, a
notebook, a second process) never sees half a report, and a run killed while it writes leaves
the previous report whole. Figures are matplotlib figures, saved but not closed: the caller
may still hand them to TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping


def _replace_with(path: str, write) -> str:
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_text(path: str, text: str) -> str:
  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  return _replace_with(path, write)


def write_bundle(out_dir: str, name: str | None, data: Any = None, markdown: str | None = None,
                 figures: Mapping[str, Any] | None = None, *, indent: int = 2,
                 dpi: float | None = None) -> dict[str, str]:
  """Write DIR/NAME.json (`data`), DIR/NAME.md (`markdown`) and DIR/F.png for each figure F;
  returns {"json"|"md"|F: path} of what was written."""
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  if data is not None:
    written["json"] = write_text(os.path.join(out_dir, f"{name}.json"),
                                 json.dumps(data, indent=indent))
  if markdown is not None:
    written["md"] = write_text(os.path.join(out_dir, f"{name}.md"), markdown)
  for fig_name, fig in (figures or {}).items():
    written[fig_name] = _replace_with(
        os.path.join(out_dir, f"{fig_name}.png"),
        lambda tmp, fig=fig: fig.savefig(tmp, format="png", **({"dpi": dpi} if dpi else {})))
  return written
