"""User-facing errors: each carries one sentence saying what is wrong, where, and the fix."""


class JaxAudioError(Exception):
  """Base class for errors that are the user's to fix; CLIs print them without a traceback."""


class CheckpointError(JaxAudioError):
  """A weights file is missing, unreadable, unsafe, or belongs to another architecture."""


class AudioError(JaxAudioError):
  """An audio file cannot be decoded or holds no usable signal."""


class SpecMismatchError(JaxAudioError):
  """Data or weights were made with a different FrontendSpec than the model expects."""


class UnknownModelError(JaxAudioError):
  """A model name that the registry does not know."""


class DataError(JaxAudioError):
  """A dataset that cannot be trained on as given (empty class, empty split, unseen label)."""


class ConfigError(JaxAudioError):
  """A config key that is unknown, missing or has a bad value."""


class SearchIndexError(JaxAudioError):
  """A search index that is missing, damaged, or made by another model or frontend."""
