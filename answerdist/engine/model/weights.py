"""Safetensors weight files: memory-mapped, validated, and hashed as they are read.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each tensor
name to its dtype, shape and byte range, then the raw little-endian data. Reading it ourselves
(rather than through the `safetensors` package) lets the loader hash every byte of every weight
file in the same pass that reads it: each tensor's bytes are hashed just before they become a
tensor, while they are hot in cache, so the checkpoint fingerprint covers the whole file at no
extra I/O (the bytes are hashed through read(2) into a small reused buffer, which fills the page
cache that the mapping then reads from, without mapping pages the model never touches). On the
CPU, tensors stay zero-copy views of a private (copy-on-write) mapping.

The digest of a file is xxh3-128 over fixed 64 MiB blocks, then over the blocks' digests, so that
it does not depend on how the file was read: the ranks of a tensor-parallel run each hash a
disjoint set of blocks (`hash_blocks`) and combine the digests they exchange
(`combine_block_digests`) into the digest one process computes with `BlockDigest`. They read
their own slices of the tensors through the mapping (`WeightFile.shard`).
"""

from __future__ import annotations

import json
import mmap
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from answerdist.errors import WeightsError

BLOCK_BYTES = 64 << 20
READ_BYTES = 16 << 20  # the hashing read buffer
MAX_HEADER_BYTES = 100 << 20  # the format's own limit
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def block_count(size: int) -> int:
    """How many digest blocks a file of `size` bytes has (an empty file has one, empty)."""
    return max(1, -(-size // BLOCK_BYTES))


def combine_block_digests(digests: list[bytes], size: int) -> str:
    """A file's digest from its blocks' digests in order and its size."""
    h = xxhash.xxh3_128()
    for digest in digests:
        h.update(digest)
    h.update(size.to_bytes(8, "little"))
    return h.hexdigest()


def hash_blocks(path: Path, blocks, size: int) -> dict[int, bytes]:
    """{block index: xxh3-128 digest} of some of a file's 64 MiB blocks, read with pread into a
    small reused buffer (through the page cache, never mapped into this process)."""
    scratch = mmap.mmap(-1, READ_BYTES)
    buffer = memoryview(scratch)
    out = {}
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            for b in blocks:
                h = xxhash.xxh3_128()
                pos, end = b * BLOCK_BYTES, min((b + 1) * BLOCK_BYTES, size)
                while pos < end:
                    n = os.preadv(fd, [buffer[:min(len(buffer), end - pos)]], pos)
                    if not n:
                        raise WeightsError(f"{path}: corrupt or truncated safetensors file "
                                           "(the file shrank while it was read); download or "
                                           "convert it again")
                    h.update(buffer[:n])
                    pos += n
                out[b] = h.digest()
        finally:
            os.close(fd)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weight file ({e.strerror or e}); "
                           "check it") from None
    finally:
        buffer.release()
        scratch.close()
    return out


class BlockDigest:
    """xxh3-128 of a byte stream fed in order: digests of 64 MiB blocks, then of those."""

    def __init__(self):
        self._blocks: list[bytes] = []
        self._block = xxhash.xxh3_128()
        self._filled = 0
        self.size = 0

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), BLOCK_BYTES - self._filled)
            self._block.update(view[:take])
            view = view[take:]
            self._filled += take
            self.size += take
            if self._filled == BLOCK_BYTES:
                self._close_block()

    def _close_block(self) -> None:
        self._blocks.append(self._block.digest())
        self._block = xxhash.xxh3_128()
        self._filled = 0

    def hexdigest(self) -> str:
        last = [self._block.digest()] if self._filled or not self.size else []
        return combine_block_digests(self._blocks + last, self.size)


def digest_bytes(data: bytes) -> str:
    """The digest of a small file's bytes (config, tokenizer, template)."""
    digest = BlockDigest()
    digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class WeightFile:
    """One safetensors file, mapped and validated; `tensors()` reads and hashes it in order.

    rename: the engine's name of a tensor from the file's (a family whose checkpoints name
    their tensors otherwise: answerdist/engine/model/families.py); every method takes and gives the
    engine's."""

    def __init__(self, path: Path, rename=None):
        self.path = Path(path)
        self.rename = rename or (lambda name: name)
        try:
            with open(self.path, "rb") as f:
                self.stat = os.fstat(f.fileno())
                size = self.stat.st_size
                if size < 8:
                    raise self._corrupt(f"{size} bytes, shorter than the 8-byte header length")
                self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot read weight file ({e.strerror or e}); "
                               "check it") from None
        self.entries = self._parse_header(size)
        self._by_name = {e.name: e for e in self.entries}

    def _corrupt(self, problem: str) -> WeightsError:
        return WeightsError(f"{self.path}: corrupt or truncated safetensors file ({problem}); "
                            "download or convert it again")

    def _parse_header(self, size: int) -> list[TensorEntry]:
        header_len = int.from_bytes(self.map[:8], "little")  # (mmap slices are copies: small ones)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise self._corrupt(f"header length {header_len} does not fit the file of {size} bytes")
        try:
            header = json.loads(bytes(self.map[8:8 + header_len]))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._corrupt(f"header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise self._corrupt("header is not a JSON object")
        base = 8 + header_len
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            entries.append(self._entry(self.rename(name), info, base, size))
        entries.sort(key=lambda e: e.start)
        for a, b in zip(entries, entries[1:], strict=False):
            if b.start < a.end:
                raise self._corrupt(f"tensors {a.name!r} and {b.name!r} overlap")
        return entries

    def _entry(self, name: str, info, base: int, size: int) -> TensorEntry:
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            start, end = (base + int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise self._corrupt(f"bad header entry for {name!r}: {str(info)[:80]}") from None
        numel = 1
        for n in shape:
            numel *= n
        if min(shape, default=0) < 0 or not base <= start <= end <= size:
            raise self._corrupt(f"tensor {name!r} lies outside the file")
        if end - start != numel * dtype.itemsize:
            raise self._corrupt(f"tensor {name!r} holds {end - start} bytes, its shape needs "
                                f"{numel * dtype.itemsize}")
        return TensorEntry(name, dtype, shape, start, end)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry_named(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entry_named(name).dtype

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor as a CPU view, unhashed (for a look before the hashed pass)."""
        return self._view(self._entry_named(name))

    def _entry_named(self, name: str) -> TensorEntry:
        return self._by_name[name]

    def shard(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """The [start, stop) slice along `dim` of one tensor, reading only its bytes (unhashed).

        Rows (dim 0) are a view of the mapping: only their pages are ever read. Columns are
        copied, and the tensor's pages are then dropped from this process's mapping, so that a
        rank's resident memory holds its slice and not the whole tensor."""
        e = self._entry_named(name)
        view = self._view(e).narrow(dim, start, stop - start)
        if view.is_contiguous():
            return view
        copy = view.contiguous()
        self._drop_pages(e)
        return copy

    def _drop_pages(self, e: TensorEntry) -> None:
        """Unmap the pages that lie wholly inside a tensor's bytes. The mapping is private and
        never written, so a later access reads the same bytes back from the file."""
        page = mmap.PAGESIZE
        first, last = -(-e.start // page) * page, e.end // page * page
        if last > first and hasattr(mmap, "MADV_DONTNEED"):
            self.map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def tensors(self, digest: BlockDigest | None = None):
        """(name, CPU tensor view) in file order; every byte of the file goes through `digest`
        just before the tensor it belongs to is handed out (the header first, the tail last)."""
        if digest is None:
            for e in self.entries:
                yield e.name, self._view(e)
            return
        yield from self.load(digest, {e.name for e in self.entries}, None, torch.device("cpu"))

    def load(self, digest: BlockDigest, wanted, dtype: torch.dtype | None, device: torch.device):
        """(name, tensor in `dtype` on `device`) for the `wanted` tensors, in file order, with
        every byte of the file hashed into `digest` by the time the iteration ends.

        When every wanted tensor is already in `dtype` on the CPU, they are zero-copy views of
        the mapping, and the bytes are hashed through read(2) (in file order, each tensor's
        before it is handed out): that fills the page cache the views read from later without
        mapping pages the model may never touch (embedding rows it never looks up). When
        tensors are converted or moved, every byte is read through the mapping anyway: a thread
        hashes the mapping front to back while this one converts, so the hash rides on the same
        reads (it also reads ahead for the conversion) and costs no second pass."""
        entries = [e for e in self.entries if e.name in wanted]
        if device.type == "cpu" and all(dtype in (None, e.dtype) for e in entries):
            yield from self._views_hashed_by_reads(entries, digest)
            return
        failure = []

        def hash_all():
            try:
                view = memoryview(self.map)
                for start in range(0, len(view), BLOCK_BYTES):
                    digest.update(view[start:start + BLOCK_BYTES])
            except BaseException as e:  # reported by the loading thread
                failure.append(e)

        hasher = threading.Thread(target=hash_all, name=f"hash {self.path.name}", daemon=True)
        hasher.start()
        try:
            for e in entries:
                yield e.name, self._view(e).to(device=device, dtype=dtype)
        finally:
            hasher.join()
        if failure:
            raise failure[0]

    def _views_hashed_by_reads(self, entries: list[TensorEntry], digest: BlockDigest):
        # An anonymous mapping, not a bytearray: unmapped when done, so it leaves no RSS behind.
        scratch = mmap.mmap(-1, READ_BYTES)
        buffer = memoryview(scratch)
        try:
            with open(self.path, "rb", buffering=0) as f:
                for e in entries:
                    self._hash_until(f, e.end, digest, buffer)
                    yield e.name, self._view(e)
                self._hash_until(f, len(self.map), digest, buffer)
        finally:
            buffer.release()
            scratch.close()

    def _hash_until(self, f, end: int, digest: BlockDigest, buffer: memoryview) -> None:
        """Feed the file's bytes from where `f` stands up to `end` into `digest`."""
        while (pos := f.tell()) < end:
            n = f.readinto(buffer[:min(len(buffer), end - pos)])
            if not n:
                raise self._corrupt("the file shrank while it was read")
            digest.update(buffer[:n])

    def _view(self, e: TensorEntry) -> torch.Tensor:
        if e.start == e.end:
            return torch.empty(e.shape, dtype=e.dtype)
        with warnings.catch_warnings():  # the private mapping is writable in effect
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self.map, dtype=e.dtype,
                                    count=(e.end - e.start) // e.dtype.itemsize, offset=e.start)
        return flat.view(e.shape)
