"""Writing files so that a reader never sees half of one, and knowing a file is unchanged.

Torch-free: the results store and the analysis layer both write through here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import xxhash

from answerdist.errors import OutputError

TEMPORARY = ".answerdist-tmp-"  # in every temporary's name, and in no name a user would choose
_TEMPORARY_NAME = re.compile(r"\..+" + re.escape(TEMPORARY) + r"\d+")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` all at once: a temporary file beside it, fsync, then rename.

    A crash leaves either the old file or the new one, never a partial one (the temporary
    `.NAME.answerdist-tmp-PID` is removed by the next writer of the directory, see
    `remove_stale_temporaries`). The temporary is created afresh, never through a link that
    happens to have its name. The file gets the mode a plain open() would give it (0666 less
    the umask).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMPORARY}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(*directories: Path) -> None:
    """Delete the temporaries that writers killed mid-write left in `directories` (call it
    holding their lock): only names `atomic_write` makes, only plain files, no subdirectories."""
    for directory in directories:
        if not Path(directory).is_dir():
            continue
        for stale in Path(directory).iterdir():
            if _TEMPORARY_NAME.fullmatch(stale.name) and stale.is_file() and not stale.is_symlink():
                stale.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes (results files are small: read whole)."""
    return xxhash.xxh3_128(Path(path).read_bytes()).hexdigest()


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
