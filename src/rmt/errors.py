"""The project's own error types: what the `rmt` command line reports as one line instead of a traceback.

`rmt.cli.main` is the one place that turns them into ``rmt <command>: error: <message>`` on stderr and exit
status 2 (what `argparse` uses for bad arguments). Anything else that escapes a command is a bug and keeps
its traceback. A message names the input (file, argument or folder), what was expected and what was found.

    RMTError                 base class
      UsageError             a bad command-line argument (value out of range, empty prompt, flags that clash)
      RunFolderError         an output folder that cannot be used: it holds another run, it is a file,
                             it cannot be created or written (read-only, disk full)
        RunLockedError       another live process is writing the folder (names its pid)

`rmt.model.ConfigError` is one of them too (and a ValueError, as it always was); the command line reports them
all the same way (see `rmt.cli.REPORTED`).
"""

from __future__ import annotations


class RMTError(Exception):
    """An error in the input or environment of a command, with a message meant for the user."""


class UsageError(RMTError):
    """A command-line argument that cannot be used as given."""


class RunFolderError(RMTError):
    """An output folder that cannot be used or written."""


class RunLockedError(RunFolderError):
    """Another live process holds the folder's lock."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid
