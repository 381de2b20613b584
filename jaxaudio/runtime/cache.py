"""Where jaxaudio caches downloaded weights and prepared data (JAXAUDIO_CACHE or the user cache)."""

from __future__ import annotations
import os


def cache_dir() -> str:
  """$JAXAUDIO_CACHE, else the user's cache directory (e.g. ~/.cache/jaxaudio)."""
  env = os.environ.get("JAXAUDIO_CACHE")
  if env:
    return os.path.abspath(env)
  import platformdirs  # pylint: disable=import-outside-toplevel
  return platformdirs.user_cache_dir("jaxaudio")
