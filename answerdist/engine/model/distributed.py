"""Tensor and data parallelism on torch.distributed, for processes launched by torchrun.

Layout. `torchrun` starts WORLD_SIZE processes (ranks). With `--tp T` they form WORLD_SIZE / T
tensor-parallel groups of T consecutive ranks (group g holds ranks g*T .. g*T + T - 1, so a group
stays on one node when T divides the processes per node). A group holds one checkpoint split
across its ranks (answerdist/engine/model/parallel.py: attention heads, MLP, vocabulary); the groups
are data parallel: in `answerdist sweep` each group is a worker claiming one checkpoint at a time
(answerdist/engine/run/ledger.py).
Tensors travel on NCCL between GPUs and on gloo on the CPU; control messages (agreements, plans, the
sweep's summary) always travel on gloo.

Failing together. Every collective has a timeout (`--dist-timeout`, default 30 minutes), so a rank
that dies or hangs makes the others fail instead of waiting forever. Work a rank may fail alone
(reading its files, validating input, writing results) runs inside `Group.step`: leaving it, every
rank of the group learns whether any rank failed, and if one did they all raise (the failing rank
its own error, the others a `ParallelError` naming it), so all of them stop at the same point
with no collective left unmatched; the group's first rank alone prints such an agreed error
(`reports`).

Determinism. A sum across ranks (row-parallel layers, the vocabulary-parallel embedding, the mean
square of OLMo's q/k norm) gathers every rank's partial and adds them in rank order, in float32:
the result has the same bits on every rank and does not depend on the backend's reduction
algorithm or on the message size, so a tensor-parallel run stays batch-invariant on the CPU. The
price: an all-gather receives (T - 1) partials per rank where a ring all-reduce moves
2 (T - 1) / T of one, the same at T = 2 and 3.5 times more at T = 8 (scoring is compute-bound
and moves one hidden state per layer, so this is cheap next to reading the weights).
"""

from __future__ import annotations

import atexit
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from answerdist.engine.settings import RunSpec
from answerdist.errors import EngineError, ParallelError

DEFAULT_TIMEOUT_S = RunSpec.dist_timeout
# The sweep's final summary waits for the slowest group's last checkpoint, not for a hung rank
# (those time out inside their own group): hours are normal there.
SUMMARY_TIMEOUT = timedelta(days=7)


class Group:
    """Ranks that work in lockstep: one tensor-parallel group, or the whole world for control.

    `rank` and `size` are this process's place in the group, `ranks` the global ranks in it. A
    group of one needs no process group: every method is then local and free."""

    def __init__(self, rank: int = 0, size: int = 1, ranks: tuple[int, ...] = (0,), data=None,
                 control=None, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.rank, self.size, self.ranks = rank, size, tuple(ranks)
        self.data, self.control = data, control  # tensors (NCCL or gloo), objects (gloo)
        self.timeout_s = timeout_s

    @property
    def lead(self) -> bool:
        """The group's first rank: it writes results and prints agreed errors."""
        return self.rank == 0

    @property
    def global_rank(self) -> int:
        return self.ranks[self.rank]

    def split(self, n: int) -> tuple[int, int]:
        """This rank's [start, stop) of n items split evenly (n must divide by the size)."""
        if n % self.size:
            raise ValueError(f"{n} items do not split evenly across {self.size} ranks")
        part = n // self.size
        return self.rank * part, (self.rank + 1) * part

    def vocab_range(self, vocab_size: int) -> tuple[int, int]:
        """This rank's [start, stop) of the vocabulary: contiguous ranges whose sizes differ by
        at most one (the first vocab_size % size ranks hold one more)."""
        part, extra = divmod(vocab_size, self.size)
        start = self.rank * part + min(self.rank, extra)
        return start, start + part + (self.rank < extra)

    # -- tensors -------------------------------------------------------------------------------

    def gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's x (same shape everywhere), in rank order."""
        if self.size == 1:
            return [x]
        parts = [torch.empty_like(x) for _ in range(self.size)]
        with self._collective("exchanging activations"):
            dist.all_gather(parts, x.contiguous(), group=self.data)
        return parts

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of x over the ranks, added in rank order in float32 (see the module doc)."""
        if self.size == 1:
            return x
        parts = self.gather(x)
        total = parts[0].float()  # a gather buffer: adding into it in place is fine
        for part in parts[1:]:
            total += part.float()
        return total.to(x.dtype)

    # -- Python objects (control) --------------------------------------------------------------

    def gather_objects(self, obj, what: str) -> list:
        """Every rank's picklable obj, in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        with self._collective(what):
            dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast(self, obj, what: str):
        """The group's first rank's obj, on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        with self._collective(what):
            dist.broadcast_object_list(box, src=self.ranks[0], group=self.control)
        return box[0]

    @contextmanager
    def step(self, what: str):
        """Run a block any rank may fail alone; leaving it, all ranks fail if one did.

        The failing rank re-raises its own exception; the others raise a ParallelError with the
        first failing rank's message. Both are marked as reported by the group's first rank."""
        if self.size == 1:
            yield
            return
        try:
            yield
        except Exception as e:
            try:
                self.gather_objects(_describe(e, self.global_rank), what)
            except ParallelError:
                raise e from None  # the others are gone or hung: say what failed here
            if isinstance(e, EngineError):
                e.reported_by = self.ranks[0]
            raise
        failures = self.gather_objects(None, what)
        failed = [(r, message) for r, message in zip(self.ranks, failures, strict=True) if message]
        if failed:
            rank, message = failed[0]
            raise ParallelError(f"rank {rank}: {message}", reported_by=self.ranks[0])

    @contextmanager
    def _collective(self, what: str):
        try:
            yield
        except RuntimeError as e:  # gloo and NCCL: a timeout, or a peer whose process ended
            others = [r for r in self.ranks if r != self.global_rank]
            detail = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
            raise ParallelError(
                f"rank {self.global_rank}, {what}: rank(s) {', '.join(map(str, others))} failed "
                f"or did not answer within {self.timeout_s:g} s ({detail}); see their output, or "
                "raise --dist-timeout if they are only slow") from None


def _describe(error: Exception, rank: int) -> str:
    if isinstance(error, EngineError):
        return str(error)
    return f"{type(error).__name__}: {error} (a bug: see rank {rank}'s traceback)"


def everywhere(error: EngineError) -> EngineError:
    """Mark an error every rank meets alike (same input, same check): rank 0 alone prints it."""
    error.reported_by = 0
    return error


def reports(error: BaseException) -> bool:
    """Whether this process prints `error`: an error all ranks agreed on is printed by its
    group's first rank only; any other error by whoever meets it."""
    return getattr(error, "reported_by", None) in (None, layout_rank())


SOLO = Group()


@dataclass
class Layout:
    """This process's place in the launch."""

    rank: int
    world: int
    tp: Group  # this rank's tensor-parallel group (a group of one when tp == 1)
    world_group: Group  # every rank: control messages only
    summary_group: Group  # every rank, patient: the sweep's final summary
    dp_rank: int  # which tensor-parallel group this rank belongs to
    dp_size: int  # how many there are


_layout: Layout | None = None


def layout_rank() -> int:
    return _layout.rank if _layout is not None else int(os.environ.get("RANK", "0"))


def setup(tp: int, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Layout:
    """This process's `Layout`, creating the process groups on the first call.

    Reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a
    process started without torchrun is a world of one. NCCL carries tensors when `device` is
    CUDA (each rank on GPU LOCAL_RANK), gloo otherwise. tp, device and timeout_s are RunSpec
    settings, checked there. Raises ParallelError (one line) when the world size is not a
    multiple of tp, or when called again with another tp."""
    global _layout
    if _layout is not None:
        if _layout.tp.size != tp:
            raise ParallelError(f"this process is already set up for --tp {_layout.tp.size}, "
                                f"not {tp}")
        return _layout
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1 and tp > 1:
        raise ParallelError(f"--tp {tp} needs {tp} processes: launch with torchrun "
                            f"--nproc-per-node {tp} (e.g. torchrun --nproc-per-node 2 -m "
                            "answerdist.cli.score CHECKPOINT --tp 2)")
    if world % tp:
        raise everywhere(ParallelError(
            f"world size {world} (torchrun --nnodes x --nproc-per-node) is not a multiple of "
            f"--tp {tp}; launch a multiple of {tp} processes or choose a --tp that divides "
            f"{world}"))
    if world == 1:
        _layout = Layout(0, 1, SOLO, SOLO, SOLO, 0, 1)
        return _layout
    timeout_s = float(timeout_s)
    timeout = timedelta(seconds=timeout_s)
    cuda = _wants_cuda(device)
    try:
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    except (RuntimeError, ValueError) as e:
        raise ParallelError(f"rank {rank}: cannot join the torchrun rendezvous ({e}); launch with "
                            "torchrun, or without it and without WORLD_SIZE set") from None
    everyone = tuple(range(world))
    control = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD
    patient = dist.new_group(backend="gloo", timeout=SUMMARY_TIMEOUT)
    mine = SOLO
    for g in range(world // tp):  # every rank creates every group, in the same order
        ranks = tuple(range(g * tp, (g + 1) * tp))
        if tp == 1:
            group = Group(0, 1, ranks, timeout_s=timeout_s) if rank in ranks else None
        else:
            data = dist.new_group(list(ranks), timeout=timeout)
            objects = dist.new_group(list(ranks), backend="gloo", timeout=timeout) if cuda else data
            group = (Group(ranks.index(rank), tp, ranks, data, objects, timeout_s) if rank in ranks
                     else None)
        mine = group or mine
    _layout = Layout(rank, world, mine, Group(rank, world, everyone, None, control, timeout_s),
                     Group(rank, world, everyone, None, patient, SUMMARY_TIMEOUT.total_seconds()),
                     rank // tp, world // tp)
    atexit.register(shutdown)  # for Python callers (score_checkpoint(tp=...)) that never call it
    return _layout


def _wants_cuda(device) -> bool:
    name = str(device)
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def shutdown() -> None:
    """Tear the process groups down and wait for their threads: at the end of a CLI run, and at
    interpreter exit for Python callers (atexit handlers run before finalisation begins).

    A gloo process group's worker threads stop only when its last Python reference goes, and
    `destroy_process_group` drops only torch's own. Left alive to interpreter exit, a worker that
    is still letting go of the last collective's tensors needs the GIL after finalisation began
    and aborts the process (SIGABRT, "terminate called without an active exception"): a rank that
    printed its error and returned at once exited -6 about one run in four. So every reference
    this module handed out is cut here, and a collection frees those held by tracebacks, while
    the interpreter still runs: the groups' destructors then join their threads."""
    global _layout
    if _layout is not None:
        for group in (_layout.tp, _layout.world_group, _layout.summary_group):
            group.data = group.control = None
    _layout = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
