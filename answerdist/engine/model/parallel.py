"""Tensor parallelism: one checkpoint split across the ranks of a group (`--tp N` under torchrun).

The model. `SplitTransformer` is answerdist/engine/model/transformer.py's Transformer with some
modules swapped for this rank's part of them: each rank holds n_heads / N query heads and the
n_kv_heads / N key/value groups they read (contiguous heads share contiguous groups), so q/k/v and
the MLP's gate/up are split by output (column parallel) and o_proj and down_proj by input (row
parallel: the partial outputs are summed across ranks, then the bias added once). A mixture of
experts (OLMoE) keeps its router whole and splits every expert so; the experts' partial outputs are
summed across ranks once per layer. The embedding holds a
contiguous slice of the vocabulary (each rank looks up the ids it holds; the lookups are
summed), and so does the LM head, whose partial log-sum-exps are merged in rank order. OLMo's
q/k norm over the whole projection sums the ranks' partial sums of squares. Each split
parameter carries `tp_shard = (dim, ranges)`: the slices of the checkpoint's tensor it holds
(one, or one per part of a fused projection such as Phi-3's [q; k; v]), which is what
loading reads. Every sum across ranks is `Group.reduce`, in rank order
and in float32 (answerdist/engine/model/distributed.py), so a rerun gives the same bits.

Loading (answerdist/engine/model/loading.py, `load_split`) reads only this rank's slices; a
run across the group is answerdist/engine/run/job.py's one run path, with a group of N.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from answerdist.engine.model.transformer import ModelArgs, MoE, RMSNorm, Transformer
from answerdist.errors import ParallelError

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
        samples the same tokens (answerdist/engine/scoring/sampler.py)."""
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


