"""`python -m jaxaudio.export`: the same command as `python -m jaxaudio.exported` (both names work)."""

from jaxaudio.exported import main
from jaxaudio.runtime import cli

if __name__ == "__main__":
  cli.run(main)
