"""Labels from search: (file, start, end, class, positive or negative, who, when, from what),
kept beside the index in a real database.

SQLite in the index folder by default (PATH/labels.sqlite, WAL journal, so readers never
block the writer and several labelling processes lose nothing), or any SQLAlchemy URL
(postgresql://... for a team). Labels are keyed by file path and time, never by embedding row:
they survive re-indexing with another model, a changed hop, and files added or removed.
A label is one row; the same (file, start, end, class) labelled again replaces its verdict
(the newest answer wins, the history stays in `created`/`who` of the row that holds it).
"""

from __future__ import annotations

import dataclasses
import getpass
import math
import os
import time
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from jaxaudio.runtime.errors import JaxAudioError

DB_FILE = "labels.sqlite"
_BUSY_MS = 30_000   # a writer waits this long for another's transaction before giving up

_META = sa.MetaData()
LABELS = sa.Table(
    "labels", _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("file", sa.Text, nullable=False),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("positive", sa.Boolean, nullable=False),
    sa.Column("who", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.UniqueConstraint("file", "start", "end", "label", name="one_verdict_per_span"),
    sa.Index("labels_by_label", "label"),
    sa.Index("labels_by_file", "file"),
)


_DIALECT_INSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class LabelError(JaxAudioError):
  """A label that cannot be stored as given (bad span, unknown file, empty class)."""


@dataclasses.dataclass(frozen=True)
class Label:
  """One verdict on a span of one file."""

  file: str
  start: float
  end: float
  label: str
  positive: bool
  who: str = ""
  created: float = 0.0
  source: str = ""      # the query or ranking it came from, e.g. "rank dog top"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _url(where: str) -> str:
  """An SQLAlchemy URL: as given, or the SQLite file of an index folder."""
  if "://" in where:
    return where
  return f"sqlite:///{os.path.join(os.path.abspath(where), DB_FILE)}"


def check_class(name: str) -> str:
  name = (name or "").strip()
  if not name or any(ch in name for ch in ",;\t\n"):
    raise LabelError(f"class {name!r} is not a class name; give a non-empty name without "
                     "commas, semicolons, tabs or newlines.")
  return name


class LabelStore:
  """The labels of one index (or of a team's database shared by several indexes)."""

  def __init__(self, where: str):
    """`where`: the index folder (its labels.sqlite) or an SQLAlchemy database URL."""
    self.url = _url(where)
    kwargs: dict[str, Any] = {}
    if self.url.startswith("sqlite"):
      kwargs["connect_args"] = {"timeout": _BUSY_MS / 1000}
    try:
      self.engine = sa.create_engine(self.url, **kwargs)
      if self.engine.dialect.name == "sqlite":
        sa.event.listen(self.engine, "connect", _sqlite_pragmas)
      if self.engine.dialect.name not in _DIALECT_INSERT:
        raise LabelError(f"{_safe(self.url)}: labels live in SQLite or PostgreSQL, not "
                         f"{self.engine.dialect.name}; pass a postgresql:// URL or an index "
                         "folder.")
      _create_tables(self.engine)
    except sa.exc.SQLAlchemyError as err:
      raise LabelError(f"cannot open the label database {_safe(self.url)} "
                       f"({type(err).__name__}: {str(err).splitlines()[0]}); pass an index "
                       "folder or a reachable postgresql://USER@HOST/DB as --labels.") from err

  def add(self, labels: Iterable[Label], durations: dict[str, float] | None = None
          ) -> list[Label]:
    """Store labels in one transaction (all or nothing); returns them as stored. With
    `durations` ({file: seconds}, the index's files), a label of an unknown file or past its
    end is refused before anything is written."""
    rows = []
    now = time.time()
    who = _user()
    for lab in labels:
      lab = dataclasses.replace(lab, label=check_class(lab.label), who=lab.who or who,
                                created=lab.created or now, file=lab.file)
      _check_span(lab, durations)
      rows.append(lab)
    if not rows:
      return []
    # An upsert, so two writers labelling the same span at once cannot collide on the
    # unique key: the later verdict replaces the earlier one.
    insert = _DIALECT_INSERT[self.engine.dialect.name](LABELS)
    upsert = insert.on_conflict_do_update(
        index_elements=["file", "start", "end", "label"],
        set_={k: insert.excluded[k] for k in ("positive", "who", "created", "source")})
    with self.engine.begin() as conn:
      conn.execute(upsert, [lab.to_dict() for lab in rows])
    return rows

  def remove(self, file: str, start: float, end: float, label: str) -> int:
    """Delete the verdict on one span and class; returns how many rows went (0 or 1)."""
    with self.engine.begin() as conn:
      return conn.execute(LABELS.delete().where(
          (LABELS.c.file == file) & (LABELS.c.start == float(start))
          & (LABELS.c.end == float(end)) & (LABELS.c.label == label))).rowcount

  def all(self, labels: Iterable[str] | None = None) -> list[Label]:
    """Every label (of the given classes), ordered by file, start, class."""
    query = sa.select(LABELS).order_by(LABELS.c.file, LABELS.c.start, LABELS.c.label)
    wanted = list(labels) if labels is not None else None
    if wanted is not None:
      query = query.where(LABELS.c.label.in_(wanted))
    with self.engine.connect() as conn:
      return [Label(r.file, r.start, r.end, r.label, bool(r.positive), r.who, r.created,
                    r.source) for r in conn.execute(query)]

  def counts(self) -> dict[str, dict[str, int]]:
    """{class: {"positive": n, "negative": m}}."""
    query = sa.select(LABELS.c.label, LABELS.c.positive, sa.func.count()).group_by(
        LABELS.c.label, LABELS.c.positive)
    out: dict[str, dict[str, int]] = {}
    with self.engine.connect() as conn:
      for label, positive, n in conn.execute(query):
        out.setdefault(label, {"positive": 0, "negative": 0})[
            "positive" if positive else "negative"] = int(n)
    return dict(sorted(out.items()))

  def close(self) -> None:
    self.engine.dispose()


def _create_tables(engine) -> None:
  """The schema, once: a second process creating it at the same moment is no error."""
  try:
    _META.create_all(engine, checkfirst=True)
  except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as err:
    if "already exists" not in str(err) and "duplicate" not in str(err).lower():
      raise
    _META.create_all(engine, checkfirst=True)   # the other one made them: nothing to do


def _sqlite_pragmas(dbapi_conn, _record) -> None:
  cur = dbapi_conn.cursor()
  cur.execute("PRAGMA journal_mode=WAL")
  cur.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
  cur.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at each checkpoint
  cur.close()


def _check_span(lab: Label, durations: dict[str, float] | None) -> None:
  if not (math.isfinite(lab.start) and math.isfinite(lab.end) and 0 <= lab.start < lab.end):
    raise LabelError(f"{lab.file}: start={lab.start} end={lab.end} is not a span; pass "
                     "0 <= start < end in seconds.")
  if durations is None:
    return
  seconds = durations.get(lab.file)
  if seconds is None:
    raise LabelError(f"{lab.file} is not in the index; label files the index holds (take "
                     "paths from query or rank results).")
  if lab.start >= seconds or lab.end > seconds + 1e-3:
    raise LabelError(f"{lab.file}: the span {lab.start:g}-{lab.end:g} s lies past the file's "
                     f"end at {seconds:.3f} s; give a span inside the file.")


def _user() -> str:
  try:
    return getpass.getuser()
  except (KeyError, OSError):
    return "unknown"


def _safe(url: str) -> str:
  try:
    return sa.engine.make_url(url).render_as_string(hide_password=True)
  except sa.exc.ArgumentError:
    return url
