"""Writing files so that a reader never sees half of one, and knowing a file is unchanged.

Torch-free: the results store and the analysis layer both write through here.
"""

from __future__ import annotations

import os
from pathlib import Path

import xxhash


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` all at once: a temporary file beside it, fsync, then rename.

    A crash leaves either the old file or the new one, never a partial one (the temporary
    `.name.tmpPID` is removed by the next writer of the directory, see `remove_stale_temporaries`).
    The file gets the mode a plain open() would give it (0666 less the umask).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(directory: Path) -> None:
    """Delete temporaries left by writers killed mid-write (call it holding the directory's
    lock)."""
    for stale in Path(directory).rglob(".*.tmp*"):
        stale.unlink(missing_ok=True)


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's bytes (results files are small: read whole)."""
    return xxhash.xxh3_128(Path(path).read_bytes()).hexdigest()


def write_output(path: Path, data: str | bytes) -> None:
    """`atomic_write` to a path the user chose (a report, phases.json): parent directories are
    created, text is written as UTF-8, and an OS error becomes one `OutputError` line."""
    from engine.errors import OutputError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as err:
        raise OutputError(f"{path}: cannot write ({err.strerror or err}); "
                          "choose a writable path") from None
