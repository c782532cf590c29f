"""Tensor parallelism: one checkpoint split across the ranks of a group (`--tp N` under torchrun).

The model. `SplitTransformer` is engine/model.py's Transformer with some modules swapped for
this rank's part of them: each rank holds n_heads / N query heads and the n_kv_heads / N
key/value groups they read (contiguous heads share contiguous groups), so q/k/v and the MLP's
gate/up are split by output (column parallel) and o_proj and down_proj by input (row parallel:
the partial outputs are summed across ranks, then the bias added once). A mixture of experts
(OLMoE) keeps its router whole and splits every expert so; the experts' partial outputs are
summed across ranks once per layer. The embedding holds a
contiguous slice of the vocabulary (each rank looks up the ids it holds; the lookups are
summed), and so does the LM head, whose partial log-sum-exps are merged in rank order. OLMo's
q/k norm over the whole projection sums the ranks' partial sums of squares. Each split
parameter carries `tp_shard = (dim, ranges)`: the slices of the checkpoint's tensor it holds
(one, or one per part of a fused projection such as Phi-3's [q; k; v]), which is what
`load_split` reads. Every sum across ranks is `Group.reduce`, in rank order
and in float32 (engine/distributed.py), so a rerun gives the same bits.

Loading. Each rank reads only its slices of the tensors and hashes a disjoint share of the
files' 64 MiB blocks; the ranks exchange their block digests, so the fingerprint is the one a
single process computes (engine/checkpoint.py, engine/weights.py).

Scoring. `score_split` runs engine/api.py's steps on every rank of the group in lockstep: the
forward passes meet in the model's collectives, and every step a rank may fail alone (checking
the output, preparing the prompts, scoring a task, writing it) ends in an agreement
(`Group.step`), so that a failure on one rank stops them all at the same point. The group's
first rank alone holds the results store.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import engine
from engine.api import ScoreResult, Scoring
from engine.checkpoint import (
    Checkpoint,
    check_complete,
    check_names_and_shapes,
    check_size_against_files,
    file_record,
    warn_own_head,
    weight_paths,
)
from engine.errors import ParallelError
from engine.model import ModelArgs, MoE, RMSNorm, Transformer
from engine.results import check_writable
from engine.spec import RunSpec
from engine.weights import WeightFile, block_count, combine_block_digests, hash_blocks

# ---------------------------------------------------------------------------------------------
# The split model


def shard(param: nn.Parameter, dim: int, start: int, stop: int) -> nn.Parameter:
    """Mark `param` as the [start, stop) slice along `dim` of the checkpoint's tensor."""
    return shard_ranges(param, dim, ((start, stop),))


def shard_ranges(param: nn.Parameter, dim: int, ranges) -> nn.Parameter:
    """Mark `param` as the slices `ranges` ([start, stop) pairs) along `dim` of the
    checkpoint's tensor, joined in order."""
    param.tp_shard = (dim, tuple(ranges))
    return param


def column_parallel(layer: nn.Linear, group) -> nn.Linear:
    """This rank's rows of the weight (and bias): its share of the outputs."""
    return fused_column_parallel(layer, (layer.out_features,), group)


def fused_column_parallel(layer: nn.Linear, parts: tuple[int, ...], group) -> nn.Linear:
    """This rank's share of each of the outputs a fused Linear stacks (Phi-3's [q; k; v] and
    [gate; up]: `parts` their sizes, in order), joined in that order."""
    ranges, offset = [], 0
    for size in parts:
        start, stop = group.split(size)
        ranges.append((offset + start, offset + stop))
        offset += size
    assert offset == layer.out_features, (parts, layer.out_features)
    part = nn.Linear(layer.in_features, sum(b - a for a, b in ranges),
                     bias=layer.bias is not None)
    shard_ranges(part.weight, 0, ranges)
    if part.bias is not None:
        shard_ranges(part.bias, 0, ranges)
    return part


class RowParallelLinear(nn.Linear):
    """This rank's columns of a Linear; the partial products are summed across ranks, then the
    (whole, replicated) bias is added once."""

    def __init__(self, layer: nn.Linear, group):
        start, stop = group.split(layer.in_features)
        super().__init__(stop - start, layer.out_features, bias=layer.bias is not None)
        shard(self.weight, 1, start, stop)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.group.reduce(F.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


def row_shard(layer: nn.Linear, group) -> nn.Linear:
    """This rank's columns of a bias-free Linear, its partial product left for the caller to
    sum across ranks (SplitMoE sums once over all the experts)."""
    assert layer.bias is None, "a bias would be added once per rank"
    start, stop = group.split(layer.in_features)
    part = nn.Linear(stop - start, layer.out_features, bias=False)
    shard(part.weight, 1, start, stop)
    return part


class SplitMoE(MoE):
    """OLMoE's routed MLP on one rank. The router is whole, so every rank routes every token
    alike (its input is the same on every rank); each expert is split as a dense MLP is (gate
    and up by output, down by input), and the router-weighted sum of the experts' partial
    products is this rank's part of the output, summed across ranks once per layer."""

    def __init__(self, args: ModelArgs, group):
        super().__init__(args)
        for expert in self.experts:
            expert.gate_proj = column_parallel(expert.gate_proj, group)
            expert.up_proj = column_parallel(expert.up_proj, group)
            expert.down_proj = row_shard(expert.down_proj, group)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.reduce(super().forward(x))


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows [start, stop) of the embedding: ids it holds are looked up, the others
    give zeros, and the sum across ranks is each id's row (exactly: one rank holds it)."""

    def __init__(self, vocab_size: int, dim: int, group):
        start, stop = group.vocab_range(vocab_size)
        super().__init__(stop - start, dim)
        shard(self.weight, 0, start, stop)
        self.start, self.group = start, group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        inside = (local >= 0) & (local < self.num_embeddings)
        x = F.embedding(local.clamp(0, self.num_embeddings - 1), self.weight)
        return self.group.reduce(x.masked_fill(~inside[..., None], 0))


class SplitRMSNorm(RMSNorm):
    """RMSNorm over a dimension split across ranks (OLMo's q/k norm): this rank holds its slice
    of the weight, and the mean square sums the ranks' partial sums of squares."""

    def __init__(self, norm: RMSNorm, group):
        super().__init__(norm.dim, norm.eps, norm.weight_in_float32)
        start, stop = group.split(norm.dim)
        self.weight = shard(nn.Parameter(torch.ones(stop - start)), 0, start, stop)
        self.group = group

    def mean_square(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.reduce(x.pow(2).sum(-1, keepdim=True)) / self.dim


class SplitTransformer(Transformer):
    """This rank's part of the model (the module doc). Build it on the meta device: the whole
    model is built first and its modules then swapped for their parts."""

    def __init__(self, args: ModelArgs, group):
        super().__init__(args)
        self.group = group
        for layer in self.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            split = [(attention, "o_proj")]
            if isinstance(mlp, MoE):
                layer.mlp = SplitMoE(args, group)
            else:
                split.append((mlp, "down_proj"))
            # every projection into heads or MLP columns is split by output (q/k/v, or GPT-NeoX's
            # per-head fused rows, whose contiguous slices are whole heads), o/down by input;
            # Phi-3's fused [q; k; v] and [gate; up] by output within each part
            fused = {"qkv_proj": (attention.q_size, attention.kv_size, attention.kv_size)}
            if getattr(mlp, "kind", None) == "fused_gated":
                fused["gate_up_proj"] = (args.intermediate_size,) * 2
            if args.family.qkv != "fused":
                fused.pop("qkv_proj")
            for module, row in split:
                for name, linear in list(module.named_children()):
                    if not isinstance(linear, nn.Linear):
                        continue
                    if name == row:
                        linear = RowParallelLinear(linear, group)
                    elif name in fused:
                        linear = fused_column_parallel(linear, fused[name], group)
                    else:
                        linear = column_parallel(linear, group)
                    setattr(module, name, linear)
            attention.q_size //= group.size  # what `project` splits a fused projection's rows by
            attention.kv_size //= group.size
            if args.family.qk_norm == "full":
                attention.q_norm = SplitRMSNorm(attention.q_norm, group)
                attention.k_norm = SplitRMSNorm(attention.k_norm, group)
        self.model.embed_tokens = VocabParallelEmbedding(args.vocab_size, args.dim, group)
        self.vocab_range = group.vocab_range(args.vocab_size)  # this rank's slice of the head
        if not args.tie_embeddings:
            start, stop = self.vocab_range
            self.lm_head = nn.Linear(args.dim, stop - start, bias=False)
            shard(self.lm_head.weight, 0, start, stop)

    def head_statistics(self, hidden: torch.Tensor, targets: torch.Tensor, boundary: torch.Tensor):
        """The LM head's statistics over the whole vocabulary, on every rank. Each rank runs the
        kernel on its slice (targets outside it become padding, -inf); the partial log-sum-exps
        are merged in rank order, and each target's logit comes from the one rank that holds it
        (the others give -inf, so a max picks it exactly)."""
        start, stop = self.vocab_range
        local = torch.where((targets >= start) & (targets < stop), targets - start, -1)
        lse, target_logits, boundary_lse = super().head_statistics(hidden, local,
                                                                   boundary[start:stop])
        parts = self.group.gather(torch.cat([lse[:, None], boundary_lse[:, None], target_logits],
                                            dim=1))
        merged_targets = parts[0][:, 2:]
        for part in parts[1:]:
            merged_targets = torch.maximum(merged_targets, part[:, 2:])
        return (_logsumexp_in_order([p[:, 0] for p in parts]), merged_targets,
                _logsumexp_in_order([p[:, 1] for p in parts]))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The whole vocabulary's logits, on every rank."""
        return self.join_vocabulary(super().forward(input_ids))

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The whole vocabulary's next-token logits, the same on every rank, so that every rank
        samples the same tokens (engine/sampler.py)."""
        return self.join_vocabulary(super().next_token_logits(hidden))

    def join_vocabulary(self, logits: torch.Tensor) -> torch.Tensor:
        """Every rank's slice of the vocabulary, joined. The slices differ by at most one row:
        pad to the widest, gather, trim, join."""
        part, extra = divmod(self.args.vocab_size, self.group.size)
        width = part + (extra > 0)
        parts = self.group.gather(F.pad(logits, (0, width - logits.shape[-1])))
        return torch.cat([p[..., :part + (r < extra)] for r, p in enumerate(parts)], dim=-1)


def _logsumexp_in_order(parts: list[torch.Tensor]) -> torch.Tensor:
    """log(sum exp) of per-rank log-sum-exps, summed in rank order; -inf when all are -inf."""
    top = parts[0]
    for part in parts[1:]:
        top = torch.maximum(top, part)
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.zeros_like(top)
    for part in parts:
        total += torch.exp(part - shift)
    return shift + torch.log(total)


def check_divides(args: ModelArgs, tp: int, config_path: Path) -> None:
    """Split the model across tp ranks only where the family's blocks are split (its record
    says why not otherwise) and whole heads and MLP columns fall to each."""
    if args.family.tensor_parallel is not None:
        raise ParallelError(f"{config_path}: --tp is not supported for {args.arch}: "
                            f"{args.family.tensor_parallel}; run it with --tp 1")
    for key, n in (("num_attention_heads", args.n_heads), ("num_key_value_heads", args.n_kv_heads),
                   ("intermediate_size", args.intermediate_size)):
        if n % tp:
            raise ParallelError(
                f"{config_path}: --tp {tp} does not divide {key}={n} (heads {args.n_heads}, "
                f"key/value heads {args.n_kv_heads}, intermediate size {args.intermediate_size}); "
                "choose a --tp that divides all three")


# ---------------------------------------------------------------------------------------------
# Loading a rank's part


def read_shard(f: WeightFile, name: str, spec) -> torch.Tensor:
    """The slices `spec` = (dim, ranges) of one tensor, joined along dim."""
    dim, ranges = spec
    parts = [f.shard(name, dim, start, stop) for start, stop in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def load_split(directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device, group
               ) -> tuple[SplitTransformer, dict[str, dict]]:
    """`engine.checkpoint.load_model` for one rank of a tensor-parallel group: its slices of the
    tensors, and its share of the files' blocks hashed; the digests are exchanged and combined
    on every rank."""
    with group.step("opening the weight files"):
        files = [WeightFile(path, args.family.engine_name) for path in weight_paths(directory)]
        check_size_against_files(directory, args, files)
        holder = {name: f for f in files for name in f.names()}
        has_head = "lm_head.weight" in holder
        # A head is checked and planned even when the config ties it (see below).
        with_head = replace(args, tie_embeddings=args.tie_embeddings and not has_head)
        with torch.device("meta"):
            expected = {name: tuple(t.shape)
                        for name, t in Transformer(with_head).state_dict().items()}
            plan_model = SplitTransformer(with_head, group)
        for f in files:
            check_names_and_shapes(f, expected, args.family.ignored_tensors)
        plan = {name: getattr(p, "tp_shard", None) for name, p in plan_model.named_parameters()}
        check_complete(directory, plan, holder)
    with group.step("reading this rank's slices of the weights"):
        state = {}
        for name, spec in plan.items():
            f = holder[name]
            tensor = read_shard(f, name, spec) if spec else f.tensor(name)
            state[name] = tensor.to(device=device, dtype=dtype)
        same_head = None
        if args.tie_embeddings and has_head:  # compare this rank's rows only; all ranks vote
            spec = plan["model.embed_tokens.weight"]
            same_head = torch.equal(
                read_shard(holder["lm_head.weight"], "lm_head.weight", spec),
                read_shard(holder["model.embed_tokens.weight"], "model.embed_tokens.weight", spec))
        blocks = [(f.path.name, b) for f in files for b in range(block_count(f.stat.st_size))]
        mine = {}
        for f in files:
            share = [b for i, (name, b) in enumerate(blocks)
                     if name == f.path.name and i % group.size == group.rank]
            mine[f.path.name] = hash_blocks(f.path, share, f.stat.st_size)
    shared = group.gather_objects((mine, same_head), "exchanging block digests")
    records = {}
    for f in files:
        digest = {b: d for blocks_of_rank, _ in shared
                  for b, d in blocks_of_rank[f.path.name].items()}
        records[f.path.name] = file_record(f, combine_block_digests(
            [digest[b] for b in range(block_count(f.stat.st_size))], f.stat.st_size))
    tied = args.tie_embeddings and (not has_head or all(same for _, same in shared))
    if args.tie_embeddings and not tied and group.lead:
        warn_own_head(holder["lm_head.weight"].path)
    if tied:
        state.pop("lm_head.weight", None)
    args = replace(args, tie_embeddings=tied)
    with torch.device("meta"):
        model = SplitTransformer(args, group)
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_rope(device)
    return model.eval().requires_grad_(False), records


# ---------------------------------------------------------------------------------------------
# Scoring across the group


def score_split(checkpoint, spec: RunSpec) -> ScoreResult:
    """engine.api.run_spec for a checkpoint split across this rank's group: every rank of the
    group calls it with the same settings."""
    from engine import distributed

    group = (checkpoint.group if isinstance(checkpoint, Checkpoint)
             else distributed.setup(spec.tp, spec.device, spec.dist_timeout).tp)
    started = time.perf_counter()
    with group.step("checking the output"):
        if spec.out is not None and group.lead:
            check_writable(spec.out, spec.label)
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else engine.load(
        checkpoint, dtype=spec.dtype, device=spec.device, tp=spec.tp)
    with group.step("preparing the prompts"):
        job = SplitScoring(ck, spec, started, group)
    if spec.out is None:  # every rank has every score: each keeps its own tables
        return job.into(job.store())
    return job.into(LeadStore(group, job.store() if group.lead else None, job.resolved.label))


class SplitScoring(Scoring):
    """A Scoring whose every task is scored by all the ranks together, and shown by the first."""

    def __init__(self, ck, spec: RunSpec, started: float, group):
        self.group = group  # before Scoring's own steps, which discover and borrow answers
        super().__init__(ck, spec, started)

    def borrowed(self, task) -> dict[str, list[dict]]:
        """The first rank reads the labels' discovered answers (it alone holds the results,
        which other nodes may not see) and shares them."""
        with self.group.step(f"reading the answers of {task.name} to borrow"):
            rows = super().borrowed(task) if self.group.lead else None
        return self.group.broadcast(rows, "sharing the borrowed answers")

    def kept_discovery(self, task):
        """Read by the first rank, which alone holds the results, and shared."""
        with self.group.step(f"reading the kept discovery of {task.name}"):
            kept = super().kept_discovery(task) if self.group.lead else None
        return self.group.broadcast(kept, "sharing the kept discovery")

    def score(self, task, bar):
        with self.group.step(f"scoring {task.name}"):
            return super().score(task, bar)

    def progress_bar(self, todo, shown: bool = True):
        return super().progress_bar(todo, shown and self.group.lead)


class LeadStore:
    """A results store held by the group's first rank alone and called by every rank in step:
    its decisions (the tasks to score, the manifest) are shared with the others."""

    def __init__(self, group, store, label: str):
        self.group, self.store, self.label = group, store, label  # store: None off the lead

    @contextmanager
    def session(self):
        with ExitStack() as held:
            with self.group.step(f"locking the results of {self.label}"):
                if self.store is not None:
                    held.enter_context(self.store.session())
            yield self

    def plan(self, tasks, overwrite: bool, prompts: dict) -> list:
        with self.group.step("planning"):
            names = ([t.name for t in self.store.plan(tasks, overwrite, prompts)]
                     if self.store else None)
        names = self.group.broadcast(names, "sharing the plan")
        return [t for t in tasks if t.name in names]

    def write(self, scores) -> None:
        with self.group.step(f"writing {scores.task.name}"):
            if self.store is not None:
                self.store.write(scores)

    def finish(self, fields: dict, tasks) -> ScoreResult:
        with self.group.step("writing the manifest"):
            result = self.store.finish(fields, tasks) if self.store is not None else None
        manifest = self.group.broadcast(result.manifest if result else None, "sharing the manifest")
        return result if result is not None else ScoreResult(self.label, manifest)
