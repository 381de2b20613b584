"""The docs site cannot drift from the code: every config key of base_config() has a row in
docs/reference/config.md with the code's default, every flag of every command has a row in
its section of docs/reference/commands.md, every bench/config/launch/test file and command the
pages name exists, and `mkdocs build --strict` is clean.

The flags are read the way `python -m jaxaudio.X` defines them: one subprocess runs each
command module as __main__ with absl's app.run stubbed out (so flags defined under the
`if __name__ == "__main__"` guard count too), takes the flags that jaxaudio's modules
defined, removes them, forgets jaxaudio's modules and runs the next command. The third-party
libraries stay imported, so all commands cost about one import of the stack.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from jaxaudio.runs.configs import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
CONFIG_PAGE = os.path.join(DOCS, "reference", "config.md")
COMMANDS_PAGE = os.path.join(DOCS, "reference", "commands.md")
# Commands users' scripts call; the tree may add more (found by _commands()), never lose these.
KNOWN_COMMANDS = {"main", "prepare", "convert", "embed", "select", "sweep", "predict",
                  "evaluate", "exported", "search"}

_COLLECT = r"""
import json, runpy, sys
from absl import app, flags

class _Stop(Exception):
  pass

def _no_run(*args, **kwargs):
  raise _Stop()

app.run = _no_run   # cli.run ends in app.run: the flags are defined by then
FLAGS = flags.FLAGS
out = {}
for cmd in sys.argv[1:]:
  for name in [m for m in sys.modules if m == "jaxaudio" or m.startswith("jaxaudio.")]:
    del sys.modules[name]
  try:
    runpy.run_module("jaxaudio." + cmd, run_name="__main__", alter_sys=True)
  except _Stop:
    pass
  found = {}
  for module, defined in FLAGS.flags_by_module_dict().items():
    # the command's own flags (its file, as __main__) and those jaxaudio's helpers define
    if module.startswith("jaxaudio") or module == "__main__" or module.endswith(".py"):
      for flag in defined:
        # a config flag's default is the file it loads (its value is the loaded config)
        default = flag.default_unparsed if hasattr(flag, "default_unparsed") else flag.default
        try:
          json.dumps(default)
        except TypeError:
          default = str(default)
        found[flag.name] = default
  out[cmd] = found
  for name in found:
    delattr(FLAGS, name)
print("FLAGS-JSON " + json.dumps(out))
"""


def _commands() -> list[str]:
  """`python -m jaxaudio.X` entries in the tree: top-level modules with a __main__ guard and
  packages with a __main__.py."""
  found = set()
  for path in glob.glob(os.path.join(ROOT, "jaxaudio", "*.py")):
    with open(path, encoding="utf-8") as f:
      if re.search(r"^if __name__ == ['\"]__main__['\"]:", f.read(), re.M):
        found.add(os.path.basename(path)[:-3])
  for path in glob.glob(os.path.join(ROOT, "jaxaudio", "*", "__main__.py")):
    found.add(os.path.basename(os.path.dirname(path)))
  return sorted(found)


@pytest.fixture(scope="module")
def procs():
  """Start the flag collection and the site build at once; each test waits for its own."""
  site = tempfile.TemporaryDirectory()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  flags_proc = subprocess.Popen([sys.executable, "-c", _COLLECT, *_commands()], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
  env_docs = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  build = subprocess.Popen([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            site.name, "--config-file", os.path.join(ROOT, "mkdocs.yml")],
                           cwd=ROOT, env=env_docs, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  yield {"flags": flags_proc, "build": build}
  for p in (flags_proc, build):
    if p.poll() is None:
      p.kill()
    p.communicate()
  site.cleanup()


def _cells(line: str) -> list[str]:
  """A markdown table row's cells; a `|` inside a code span does not split."""
  cells, cur, in_code = [], "", False
  for ch in line.strip().strip("|"):
    if ch == "`":
      in_code = not in_code
    if ch == "|" and not in_code:
      cells.append(cur.strip())
      cur = ""
    else:
      cur += ch
  cells.append(cur.strip())
  return cells


def _rows(text: str) -> list[list[str]]:
  return [_cells(line) for line in text.splitlines()
          if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|$", line.strip())]


def _code(cell: str) -> str | None:
  """The text of a cell that is exactly one code span, else None."""
  m = re.fullmatch(r"`([^`]*)`", cell)
  return m.group(1) if m else None


def _same(doc: str, value) -> bool:
  """A documented default (a Python literal, or the bare text of a string) against the code's."""
  def norm(v):
    if isinstance(v, (list, tuple)):
      return tuple(norm(x) for x in v)
    if isinstance(v, dict):
      return {k: norm(x) for k, x in v.items()}
    return v
  try:
    parsed = ast.literal_eval(doc)
  except (ValueError, SyntaxError):
    return isinstance(value, str) and doc == value
  # the same value and the same type (0 documents an int, 0.0 a float, False a bool)
  return norm(parsed) == norm(value) and type(norm(parsed)) is type(norm(value))


def _leaves(cfg, prefix=""):
  """(dotted key, value) of every leaf of a ConfigDict, and of every section, as plain data."""
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if hasattr(value, "to_dict"):
      yield name, value.to_dict(), False
      yield from _leaves(value, f"{name}.")
    else:
      yield name, value, True


def test_every_config_key_is_documented_with_its_default():
  with open(CONFIG_PAGE, encoding="utf-8") as f:
    rows = {_code(r[0]): r for r in _rows(f.read()) if _code(r[0]) and len(r) >= 3}
  everything = {name: (value, leaf) for name, value, leaf in _leaves(base_config())}
  missing, wrong = [], []
  for name, (value, leaf) in everything.items():
    if not leaf:
      continue
    # a leaf is documented by its own row, or by a row of its section whose default is the
    # section's whole value (a mapping such as train.group_lr_mult)
    owners = [p for p in (".".join(name.split(".")[:i]) for i in range(name.count(".") + 1, 0, -1))
              if p in rows]
    if not owners:
      missing.append(name)
  for key, row in rows.items():
    if key not in everything:
      wrong.append(f"{key}: no such config key in base_config()")
      continue
    default = _code(row[1])
    if default is None:
      wrong.append(f"{key}: the default cell must be one code span, got {row[1]!r}")
    elif not _same(default, everything[key][0]):
      wrong.append(f"{key}: documented default {default} but base_config() has "
                   f"{everything[key][0]!r}")
  assert not missing, f"config keys without a row in {CONFIG_PAGE}: {missing}"
  assert not wrong, "\n".join(wrong)


def _sections(text: str) -> dict[str, str]:
  """`## python -m jaxaudio.X` sections of the commands page."""
  parts = re.split(r"^## ", text, flags=re.M)
  out = {}
  for part in parts[1:]:
    m = re.match(r"python -m jaxaudio\.(\w+)\s*\n", part)
    if m:
      out[m.group(1)] = part
  return out


def test_every_command_flag_is_documented(procs):
  commands = _commands()
  assert KNOWN_COMMANDS <= set(commands), f"commands lost: {KNOWN_COMMANDS - set(commands)}"
  try:
    stdout, stderr = procs["flags"].communicate(timeout=240)
  except subprocess.TimeoutExpired:
    procs["flags"].kill()
    raise
  line = next((l for l in stdout.splitlines() if l.startswith("FLAGS-JSON ")), None)
  assert procs["flags"].returncode == 0 and line, f"collecting flags failed:\n{stderr[-4000:]}"
  defined = json.loads(line[len("FLAGS-JSON "):])
  with open(COMMANDS_PAGE, encoding="utf-8") as f:
    sections = _sections(f.read())
  problems = []
  for cmd in commands:
    if cmd not in sections:
      problems.append(f"{cmd}: no '## python -m jaxaudio.{cmd}' section")
      continue
    rows = {}
    for r in _rows(sections[cmd]):
      m = re.fullmatch(r"`--(\w+)`", r[0])
      if m:
        rows[m.group(1)] = r
    for name, default in sorted(defined[cmd].items()):
      if name not in rows:
        problems.append(f"{cmd}: --{name} is not documented")
      elif len(rows[name]) > 1 and _code(rows[name][1]) is not None \
          and not _same(_code(rows[name][1]), default):
        problems.append(f"{cmd}: --{name} documented default {rows[name][1]} but the code "
                        f"has {default!r}")
    for name in sorted(set(rows) - set(defined[cmd])):
      problems.append(f"{cmd}: --{name} is documented but the command does not define it")
  for cmd in sorted(set(sections) - set(commands)):
    problems.append(f"{cmd}: documented, but there is no python -m jaxaudio.{cmd}")
  assert not problems, "\n".join(problems)


def test_site_builds_strict(procs):
  try:
    out, _ = procs["build"].communicate(timeout=240)
  except subprocess.TimeoutExpired:
    procs["build"].kill()
    raise
  assert procs["build"].returncode == 0, f"mkdocs build --strict failed:\n{out[-4000:]}"


def test_files_the_docs_name_exist():
  """Every bench script, config, launch script and test the docs point at is in the tree,
  and every `python -m jaxaudio.X` they show is a command."""
  commands = set(_commands())
  missing = []
  for path in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True):
    with open(path, encoding="utf-8") as f:
      text = f.read()
    for name in sorted(set(re.findall(r"\b((?:bench|configs|launch|tests)/[\w/.-]+\.(?:py|sh|md))",
                                      text))):
      if not os.path.exists(os.path.join(ROOT, name)):
        missing.append(f"{os.path.relpath(path, ROOT)}: {name}")
    for cmd in sorted(set(re.findall(r"python -m jaxaudio\.([a-z_]+)\b", text))):
      if cmd not in commands:
        missing.append(f"{os.path.relpath(path, ROOT)}: python -m jaxaudio.{cmd}")
  assert not missing, "the docs name what the tree does not have:\n" + "\n".join(missing)


def test_readme_stays_a_front_page():
  """README.md is the front page (at most ~150 lines; the rest belongs in docs/), keeps the one
  test command .ci/run reads, and its links into docs/ point at pages that exist."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  assert len(text.splitlines()) <= 150, "README.md grew past 150 lines; move detail to docs/"
  block = re.search(r"<!-- test-command -->\n(.*?)<!-- /test-command -->", text, re.S)
  assert block, "README.md lost its <!-- test-command --> markers (.ci/run reads them)"
  lines = [l for l in block.group(1).splitlines() if l.strip() and not l.startswith("```")]
  assert len(lines) == 1, f"exactly one test command between the markers, got {lines}"
  broken = [link for link in re.findall(r"\]\((docs/[^)#\s]+)", text)
            if not os.path.isfile(os.path.join(ROOT, link))]
  assert not broken, f"README.md links to missing docs pages: {broken}"
