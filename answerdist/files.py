"""Files the user names: outputs written so that a reader never sees half of one (or, staged,
none of a set until all are written), and inputs read through one bounded reader.

Torch-free: the analysis layer writes and reads through here; the results store has its own
door below its root (answerdist/engine/results/guard.py).
"""

from __future__ import annotations

import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

from answerdist.errors import OutputError

TEMPORARY = ".answerdist-tmp-"  # in every temporary's name, and in no name a user would choose


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}")


def _write_temporary(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file beside `path`, fsynced; its path. The temporary is created
    afresh, never through a link that happens to have its name, with the mode a plain open()
    would give it (0666 less the umask)."""
    tmp = _temporary_name(path)
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` all at once: a temporary file beside it, fsync, then rename.

    A crash leaves either the old file or the new one, never a partial one (a killed writer's
    temporary `.NAME.answerdist-tmp-PID` stays beside it; in the results store the next writer
    of the label removes it, answerdist/engine/results/guard.py).
    """
    path = Path(path)
    tmp = _write_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Files a user gives are read whole; past this size they are refused unread (a sparse 1 TB
# file, a wrong path). The largest real one is a tokenizer.json of some 30 MB.
MAX_FILE_BYTES = 256 * 2**20
MAX_FILE_BYTES_ENV = "ANSWERDIST_MAX_FILE_BYTES"


class FileRefused(OSError):
    """A user's file refused unread: not a regular file, or over the size limit. An OSError, so
    that every reader words it as it words a missing or unreadable file (its message names no
    path: the reader's line does)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.strerror = reason  # the readers that quote err.strerror quote the reason


def max_file_bytes() -> int:
    """The size limit on files read as input: ANSWERDIST_MAX_FILE_BYTES, else 256 MiB."""
    value = os.environ.get(MAX_FILE_BYTES_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_FILE_BYTES


def read_user_file(path) -> bytes:
    """The bytes of a file a user gave (a task, prompt, sweep, series, config, template,
    tokenizer or trainer_state file): the one door every such read goes through. What is not a
    regular file (a FIFO, a device, a directory) is refused without blocking, a file over
    `max_file_bytes()` without reading it, and never more than that is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else "a directory"
                    if stat.S_ISDIR(info.st_mode) else "a device or socket")
            raise FileRefused(f"not a regular file ({kind}); give a file")
        limit = max_file_bytes()
        too_big = (f"over the {limit:,}-byte limit on files read as input; set "
                   f"{MAX_FILE_BYTES_ENV} to raise it")
        if info.st_size > limit:
            raise FileRefused(too_big)
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:  # grew past the limit while read
            raise FileRefused(too_big)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_user_text(path) -> str:
    """`read_user_file` decoded as UTF-8 (a UnicodeDecodeError when it is not)."""
    return read_user_file(path).decode("utf-8")


class Staging:
    """Outputs published together or not at all (`staged()`): each file and directory is first
    made as a temporary beside its final path, and moved into place only once all are made."""

    def __init__(self):
        self._files: list[tuple[Path, Path]] = []  # (temporary, final)
        self._directories: list[tuple[Path, Path]] = []
        self._created: list[Path] = []  # parent directories made here, removed on failure

    def _parent(self, path: Path) -> None:
        missing = [p for p in reversed(path.parents) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._created += missing

    def file(self, path, data: str | bytes) -> None:
        """Stage `data` (text as UTF-8) for `path`."""
        path = Path(path)
        self._parent(path)
        self._files.append((_write_temporary(
            path, data.encode("utf-8") if isinstance(data, str) else data), path))

    def directory(self, path) -> Path:
        """A new temporary sibling of directory `path` to fill; its files (not subdirectories)
        land in `path` on publication, beside whatever `path` already holds."""
        path = Path(path)
        self._parent(path)
        tmp = _temporary_name(path)
        shutil.rmtree(tmp, ignore_errors=True)  # a dead run's, whose pid this one reuses
        tmp.mkdir()
        self._directories.append((tmp, path))
        return tmp

    def publish(self) -> None:
        for tmp, final in self._directories:
            final.mkdir(exist_ok=True)
            for entry in sorted(tmp.iterdir()):
                os.replace(entry, final / entry.name)
            tmp.rmdir()
        for tmp, final in self._files:
            os.replace(tmp, final)

    def discard(self) -> None:
        for tmp, _ in self._directories:
            shutil.rmtree(tmp, ignore_errors=True)
        for tmp, _ in self._files:
            tmp.unlink(missing_ok=True)
        for directory in reversed(self._created):
            try:
                directory.rmdir()
            except OSError:
                pass  # not empty (another writer's) or already gone


@contextmanager
def staged():
    """`with staged() as stage:` stage.file(...) and stage.directory(...) outputs; when the
    block ends they are all moved into place, and when it raises none is, and no temporary
    or directory made for them is left. An OS error becomes one `OutputError` line.

    Moving into place is renames within each destination's own file system, so a failure
    (a full disk, an unwritable or odd path) happens while staging, before anything moves."""
    stage = Staging()
    try:
        yield stage
        stage.publish()
    except OSError as err:
        stage.discard()
        where = f"{err.filename}: " if err.filename else ""
        raise OutputError(f"{where}cannot write ({err.strerror or err}); choose a writable "
                          "path") from None
    except BaseException:
        stage.discard()
        raise


def write_output(path: Path, data: str | bytes) -> None:
    """`atomic_write` to a path the user chose (a report, phases.json): parent directories are
    created, text is written as UTF-8, and an OS error becomes one `OutputError` line."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err}); "
                          "choose a writable path") from None
