"""The one door to the files under a results root: every open, write, rename and delete of the
store goes through `StoreFiles`.

Each path is reached from the root's own descriptor, one component at a time, with O_NOFOLLOW
at every step (`os.open(name, ..., dir_fd=parent)`): a label directory, a `variants/` or
`discovery/` subdirectory, a results file, the lock or a temporary that is a symbolic link is
refused with one line, never followed, so nothing outside the root is read, written or deleted
whatever links are planted inside it. The root itself is the user's choice (`--out`) and may be
a link. Torch-free: the analysis reads results through here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

import xxhash

from answerdist.engine.results.schema import MANIFEST
from answerdist.files import TEMPORARY

_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_STALE = re.compile(r"\..+" + re.escape(TEMPORARY) + r"\d+")


def digest(data: bytes) -> str:
    """xxh3-128 of a results file's bytes, as the manifest records it."""
    return xxhash.xxh3_128(data).hexdigest()


class LinkRefused(OSError):
    """A component under the store's root is a symbolic link (or not what it must be)."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"{path}: {what}; the results store follows no link under its root")
        self.strerror = str(self)


class StoreFiles:
    """Files under `root/label` (or `root` itself when label is None), named by paths relative
    to it ("manifest.json", "variants/coin.parquet", ".lock")."""

    def __init__(self, root: Path, label: str | None = None):
        self.root = Path(root)
        self.label = label
        self.directory = self.root / label if label else self.root

    # -- directories ---------------------------------------------------------------------------

    @contextmanager
    def _dir(self, parts: tuple[str, ...], create: bool):
        """A descriptor of directory `parts` below the label directory, walked without
        following a link; created on the way when `create`."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            where = self.root
            for name in ((self.label,) if self.label else ()) + parts:
                where = where / name
                if create:
                    try:
                        os.mkdir(name, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(name, _DIRECTORY, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LinkRefused(where, "is a symbolic link or not a directory") from None
                    raise
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _split(rel: str) -> tuple[tuple[str, ...], str]:
        *parts, name = rel.split("/")
        return tuple(parts), name

    # -- files ---------------------------------------------------------------------------------

    def read(self, rel: str) -> bytes:
        """A file's bytes (FileNotFoundError when it is absent; LinkRefused when it or a
        directory on its way is a link, or it is not a regular file)."""
        parts, name = self._split(rel)
        with self._dir(parts, create=False) as d:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=d)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise LinkRefused(self.directory / rel, "is a symbolic link") from None
                raise
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise LinkRefused(self.directory / rel, "is not a regular file")
                chunks = []
                while chunk := os.read(fd, 1 << 22):
                    chunks.append(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)

    def exists(self, rel: str) -> bool:
        """Whether `rel` is there as a regular file reached without a link."""
        try:
            self.read_stat(rel)
        except OSError:
            return False
        return True

    def read_stat(self, rel: str) -> os.stat_result:
        parts, name = self._split(rel)
        with self._dir(parts, create=False) as d:
            info = os.stat(name, dir_fd=d, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise LinkRefused(self.directory / rel, "is a symbolic link or not a regular file")
        return info

    def write(self, rel: str, data: bytes) -> None:
        """`data` to `rel` all at once: a temporary beside it (created afresh, never through a
        link), fsync, then a rename in the same directory, which replaces a link planted at the
        name rather than writing through it."""
        parts, name = self._split(rel)
        with self._dir(parts, create=True) as d:
            tmp = f".{name}{TEMPORARY}{os.getpid()}"
            try:
                os.unlink(tmp, dir_fd=d)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666, dir_fd=d)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=d)
                except OSError:
                    pass
                raise

    def open_lock(self, name: str) -> int:
        """The lock file `name` of the directory, opened read-write (created if absent) without
        following a link; refused unless a regular file."""
        with self._dir((), create=True) as d:
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC, 0o666, dir_fd=d)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise LinkRefused(self.directory / name, "is a symbolic link") from None
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LinkRefused(self.directory / name, "is not a plain file")
        return fd

    def remove(self, rel: str) -> None:
        """Delete the file `rel` if it is there (a link is deleted as a link)."""
        parts, name = self._split(rel)
        try:
            with self._dir(parts, create=False) as d:
                os.unlink(name, dir_fd=d)
        except FileNotFoundError:
            pass

    def remove_stale_temporaries(self, *subdirectories: str) -> None:
        """Delete the temporaries killed writers left (only names `write` makes, only regular
        files) in the label directory and its `subdirectories` that exist."""
        for sub in ("", *subdirectories):
            try:
                with self._dir(tuple(p for p in sub.split("/") if p), create=False) as d:
                    for entry in os.scandir(d):
                        if _STALE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                            os.unlink(entry.name, dir_fd=d)
            except FileNotFoundError:
                continue

    def remove_directory(self) -> None:
        """Delete the label directory and what is in it, links as links (a failed first run
        leaves nothing)."""
        with StoreFiles(self.root)._dir((), create=False) as d:
            shutil.rmtree(self.label, dir_fd=d, ignore_errors=True)

    def labels(self) -> list[str]:
        """The label directories of the root (not links) that hold a manifest file."""
        with self._dir((), create=False) as d:
            names = [e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
        return sorted(n for n in names if StoreFiles(self.directory, n).exists(MANIFEST))

