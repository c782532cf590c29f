"""Reading a checkpoint's weights into the model: the whole model in one process
(`load_model`), or one rank's slices of it under tensor parallelism (`load_split`).

Weights are read from memory-mapped safetensors files (answerdist/engine/model/weights.py) and
assigned straight into a model built on the meta device, so a float32 checkpoint loaded as
float32 on the CPU is never copied. Every byte of every weight file is hashed as it is read; a
rank of a split model hashes a disjoint share of the files' 64 MiB blocks, and the ranks
exchange their block digests, so the digests are the ones a single process computes. Whether the
head is tied to the embeddings is decided once, here (`tied_head`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import torch

from answerdist.engine.model.config import read_json
from answerdist.engine.model.distributed import SOLO, Group
from answerdist.engine.model.parallel import SplitTransformer
from answerdist.engine.model.transformer import ModelArgs, Transformer
from answerdist.engine.model.weights import (
    BlockDigest,
    WeightFile,
    block_count,
    combine_block_digests,
    hash_blocks,
)
from answerdist.errors import CheckpointError, WeightsError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Tensors some checkpoints carry that the model recomputes or shares; never an error.
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_files(directory: Path) -> dict[str, Path] | list[Path]:
    """The safetensors files to read: {tensor name: file} from a shard index, or [file]."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, "model.safetensors.index.json").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no 'weight_map'; restore the index file")
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / "model.safetensors"
    if single.exists():
        return [single]
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory / pickles[0]}: pickle checkpoints are refused because loading them can "
            "run arbitrary code; convert the weights to safetensors (model.safetensors)"
        )
    raise WeightsError(f"{directory}: no model.safetensors or model.safetensors.index.json found")


def load_model(directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device
               ) -> tuple[Transformer, dict[str, dict]]:
    """Build the model on the meta device and assign the checkpoint's tensors into it.
    Returns the model and each weight file's size, modification time and digest."""
    files = [WeightFile(path, args.family.engine_name) for path in weight_paths(directory)]
    check_size_against_files(directory, args, files)
    holder = {name: f for f in files for name in f.names()}
    args = replace(args, tie_embeddings=tied_head(args, holder,
                                                  head_equals_embeddings(args, holder)))
    with torch.device("meta"):
        model = Transformer(args)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state, digests = {}, {}
    for f in files:
        check_names_and_shapes(f, expected, args.family.ignored_tensors)
        digest = BlockDigest()
        for name, tensor in f.load(digest, expected, dtype, device):
            state[name] = tensor
        digests[f.path.name] = file_record(f, digest.hexdigest())
    check_complete(directory, expected, state)
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_rope(device)  # rotary buffers are not in checkpoints: built on the meta device
    return model.eval().requires_grad_(False), digests


def file_record(f: WeightFile, digest: str) -> dict:
    return {"bytes": f.stat.st_size, "mtime_ns": f.stat.st_mtime_ns, "digest": digest}


def weight_paths(directory: Path) -> list[Path]:
    files = weight_files(directory)
    paths = sorted(set(files.values())) if isinstance(files, dict) else files
    for path in paths:
        if not path.is_file():
            raise WeightsError(f"{path}: weight shard listed in the index is missing; restore it")
    return paths


def head_equals_embeddings(args: ModelArgs, holder: dict[str, WeightFile], rows=None
                           ) -> bool | None:
    """Whether the checkpoint's own `lm_head.weight` equals its embeddings (on the rows `rows`,
    a rank's shard spec, when split); None where the config does not tie them or there is no
    head to compare."""
    if not args.tie_embeddings or "lm_head.weight" not in holder:
        return None
    if "model.embed_tokens.weight" not in holder:
        return False
    read = lambda name: (read_shard(holder[name], name, rows) if rows
                         else holder[name].tensor(name))
    return torch.equal(read("lm_head.weight"), read("model.embed_tokens.weight"))


def tied_head(args: ModelArgs, holder: dict[str, WeightFile], same: bool | None,
              group: Group = SOLO) -> bool:
    """The one decision whether the head is the embeddings: `tie_word_embeddings: true` beside a
    distinct `lm_head.weight` uses that head, as transformers 5.x does, and says so (a head equal
    to the embeddings changes nothing). `same` is `head_equals_embeddings` on this process's
    rows; the ranks of a split model vote."""
    if same is None:
        return args.tie_embeddings
    tied = all(group.gather_objects(same, "comparing the head with the embeddings"))
    if not tied and group.lead:
        warn_own_head(holder["lm_head.weight"].path)
    return tied


_LAYER = re.compile(r"model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"model\.layers\.\d+\.mlp\.experts\.(\d+)\.")


def check_size_against_files(directory: Path, args: ModelArgs, files: list[WeightFile]) -> None:
    """The config's layer count, expert count and embedding shape agree with the weight files'
    headers, checked before anything the config's size is built (10^6 layers or 10^5 experts in
    a config must not take minutes and gigabytes to refuse)."""
    layers, experts, embedding = set(), set(), None
    for f in files:
        for name in f.names():
            if match := _LAYER.match(name):
                layers.add(int(match.group(1)))
                if expert := _EXPERT.match(name):
                    experts.add(int(expert.group(1)))
            elif name == "model.embed_tokens.weight":
                embedding = f.shape(name)
    config = directory / "config.json"
    if args.n_experts and (len(experts) != args.n_experts
                           or (experts and max(experts) != args.n_experts - 1)):
        raise WeightsError(f"{config}: num_experts={args.n_experts}, but the weight files hold "
                           f"{len(experts)} experts per layer; config.json does not describe "
                           "them")
    if len(layers) != args.n_layers or (layers and max(layers) != args.n_layers - 1):
        found = f"layers 0 to {max(layers)}" if layers else "no layers"
        raise WeightsError(f"{config}: num_hidden_layers={args.n_layers}, but the weight files "
                           f"hold {found} ({len(layers)}); config.json does not describe them")
    if embedding is not None and embedding != (args.vocab_size, args.dim):
        raise WeightsError(f"{config}: vocab_size={args.vocab_size} and hidden_size={args.dim}, "
                           f"but model.embed_tokens.weight has shape {list(embedding)}; "
                           "config.json does not describe the weights")


def check_complete(directory: Path, needed, found) -> None:
    """Every tensor the model needs is in the checkpoint's files."""
    missing = sorted(set(needed) - set(found))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more"
                                          if len(missing) > 3 else "")
        raise WeightsError(f"{directory}: tensor {shown} missing from the checkpoint; "
                           "the weights are incomplete")


def warn_own_head(path: Path) -> None:
    print(f"warning: {path}: config.json ties the embeddings, but the checkpoint has its own "
          "lm_head.weight; using it, as transformers does", file=sys.stderr)


def check_names_and_shapes(f: WeightFile, expected: dict, ignored: tuple[str, ...] = ()) -> None:
    """Every tensor of the file is one the config implies, with the shape it implies, and holds
    floating-point numbers (an integer dtype would be cast into garbage weights)."""
    ignored = IGNORED_TENSOR_SUFFIXES + ignored  # buffers some checkpoints store: not weights
    for name in f.names():
        if name.endswith(ignored):
            continue
        stored = f.dtype(name)
        if not stored.is_floating_point:
            raise WeightsError(
                f"{f.path}: tensor {name!r} is stored as {str(stored).removeprefix('torch.')}, "
                "not floating point; the file is not a checkpoint of weights (re-export it)")
        if name not in expected:
            if name == "lm_head.weight":  # tied head
                continue
            raise WeightsError(
                f"{f.path}: unexpected tensor {name!r}; config.json does not describe this "
                "checkpoint's architecture"
            )
        shape = f.shape(name)
        if shape != expected[name]:
            raise WeightsError(
                f"{f.path}: tensor {name!r} has shape {list(shape)} but config.json implies "
                f"{list(expected[name])}"
            )



def read_shard(f: WeightFile, name: str, spec) -> torch.Tensor:
    """The slices `spec` = (dim, ranges) of one tensor, joined along dim."""
    dim, ranges = spec
    parts = [f.shard(name, dim, start, stop) for start, stop in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def load_split(directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device, group
               ) -> tuple[SplitTransformer, dict[str, dict]]:
    """`load_model` for one rank of a tensor-parallel group: its slices of the
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
        same_head = head_equals_embeddings(args, holder, plan["model.embed_tokens.weight"])
        blocks = [(f.path.name, b) for f in files for b in range(block_count(f.stat.st_size))]
        mine = {}
        for f in files:
            share = [b for i, (name, b) in enumerate(blocks)
                     if name == f.path.name and i % group.size == group.rank]
            mine[f.path.name] = hash_blocks(f.path, share, f.stat.st_size)
    shared = group.gather_objects(mine, "exchanging block digests")
    records = {}
    for f in files:
        digest = {b: d for blocks_of_rank in shared
                  for b, d in blocks_of_rank[f.path.name].items()}
        records[f.path.name] = file_record(f, combine_block_digests(
            [digest[b] for b in range(block_count(f.stat.st_size))], f.stat.st_size))
    tied = tied_head(args, holder, same_head, group)
    if tied:
        state.pop("lm_head.weight", None)
    args = replace(args, tie_embeddings=tied)
    with torch.device("meta"):
        model = SplitTransformer(args, group)
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_rope(device)
    return model.eval().requires_grad_(False), records


