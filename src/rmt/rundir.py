"""An output folder belongs to one run: claimed (locked) while a process writes it, never mixed with an older run.

    with claim_folder("runs/x", markers=TRAIN_OUTPUTS, hint="...") as folder:
        ...                                   # write runs/x; another process claiming it now is refused

`claim_folder` makes the folder if needed and takes an exclusive ``fcntl.flock`` on ``FOLDER/.rmt-lock``. The
kernel drops that lock when the process ends, however it ends (a SIGKILLed run leaves no stale lock: the
file stays, the lock does not). A second writer is refused with the holder's pid, which the holder writes into
the lock file once it is in. Then, unless the run continues the folder's own run (``resume``), a folder that
already holds what the command writes (``markers``: file-name patterns) is refused with a line that says what
to do; with ``overwrite`` those entries are first moved aside into ``FOLDER.old-N`` next to it, never deleted.

The lock file is never removed: unlinking a lock file while another process waits to open it lets two
processes hold "the" lock on two different files.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import os
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from rmt.errors import RunFolderError, RunLockedError

LOCK_FILE = ".rmt-lock"


def reason(e: BaseException) -> str:
    """A short description of an OS error ('Read-only file system', 'No space left on device'), else str(e).
    safetensors wraps the OS's message in its own ('IoError(Os { code: 28, ..., message: "No space left on
    device" })'): that message is taken out."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    found = re.search(r'message: "([^"]+)"', str(e))
    return found.group(1) if found else str(e)


@contextmanager
def writing(path: str | Path, what: str) -> Iterator[None]:
    """Turn an OS error (or safetensors' I/O error) while writing `what` under `path` into a RunFolderError
    that names both; anything else passes through."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as e:
        raise RunFolderError(f"{path}: cannot write {what}: {reason(e)}") from None


class RunFolder:
    """A claimed output folder; `release()` (or leaving the `with` block) drops the lock."""

    def __init__(self, path: Path, fd: int, moved_to: Path | None = None):
        self.path = path
        self._fd: int | None = fd
        self.moved_to = moved_to  # where --overwrite put the old run, or None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file drops the flock
            self._fd = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_pid(path: str | Path) -> int | None:
    """The pid written in FOLDER's lock file (meaningful only while the lock is held), or None."""
    try:
        text = (Path(path) / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _lock(path: Path, flag: str) -> int:
    lock = path / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise RunFolderError(f"{flag} {path}: cannot write in the folder ({reason(e)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise RunFolderError(f"{flag} {path}: cannot lock {lock} ({reason(e)})") from None
        pid = holder_pid(path)
        if pid is not None and not _alive(pid):
            pid = None  # the holder has not written its pid yet; the file still names an earlier, ended holder
        who = f"process {pid}" if pid else "another process"
        todo = "wait for it to end, or stop it" + ("" if flag == "--resume" else f", or choose another {flag}")
        raise RunLockedError(f"{flag} {path}: {who} is writing this run folder (it holds {lock}); {todo}",
                             pid) from None
    return fd


def _write_pid(fd: int, path: Path, flag: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        raise RunFolderError(f"{flag} {path}: cannot write in the folder ({reason(e)})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _matches(name: str, markers: Collection[str] | None) -> bool:
    if name == LOCK_FILE:
        return False
    return markers is None or any(fnmatch.fnmatchcase(name, m) for m in markers)


def _move_aside(path: Path, names: list[str]) -> Path:
    """Move FOLDER/name for each name into a new sibling FOLDER.old-N (the first N free) -> that folder."""
    n = 1
    while True:
        aside = path.with_name(f"{path.name}.old-{n}")
        try:
            aside.mkdir()
            break
        except FileExistsError:
            n += 1
        except OSError as e:
            raise RunFolderError(f"--overwrite: cannot create {aside} to move the old run aside ({reason(e)}); "
                                 f"nothing was moved") from None
    for name in names:
        try:
            os.rename(path / name, aside / name)
        except OSError as e:
            raise RunFolderError(f"--overwrite: cannot move {path / name} to {aside} ({reason(e)}); entries moved "
                                 f"so far are in {aside}") from None
    return aside


def claim_folder(path: str | Path, *, markers: Collection[str] | None = None, resume: bool = False,
                 overwrite: bool = False, continues: Callable[[Path], bool] | None = None, flag: str = "--out",
                 hint: str = "") -> RunFolder:
    """Create (if needed) and lock the output folder `path` -> a RunFolder holding its lock.

    markers: name patterns of what the command writes there (None: any entry). A folder holding some is refused
    unless `resume` (the caller continues that run), `continues(path)` says the contents are this run's own
    (e.g. a reproduction of the same plan), or `overwrite` (they are moved to a sibling FOLDER.old-N first).
    flag names the argument in messages; hint is what the user can do, e.g. "continue it with --resume DIR".
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"{flag} {path}: expected a folder, found a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        parent = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise RunFolderError(f"{flag} {path}: cannot create the folder: {parent} is a file, not a folder") from None
    except OSError as e:
        raise RunFolderError(f"{flag} {path}: cannot create the folder ({reason(e)})") from None
    fd = _lock(path, flag)
    folder = RunFolder(path, fd)
    try:
        if not resume:
            found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if _matches(p.name, markers))
            if found and not (continues is not None and continues(path)):
                if not overwrite:
                    shown = ", ".join(found[:5]) + (f", ... ({len(found)} in all)" if len(found) > 5 else "")
                    todo = [s for s in (hint, f"choose a new {flag}") if s]
                    todo.append(f"or pass --overwrite to move the old one aside to {path.name}.old-N (nothing is "
                                "deleted)")
                    raise RunFolderError(f"{flag} {path}: already holds another run ({shown}); {', '.join(todo)}")
                folder.moved_to = _move_aside(path, [f.rstrip("/") for f in found])
        _write_pid(fd, path, flag)  # only now: a refused claim leaves the folder as it was, byte for byte
    except BaseException:
        folder.release()
        raise
    return folder
