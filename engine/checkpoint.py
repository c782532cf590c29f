"""Load a local Hugging Face checkpoint directory: config, weights, tokenizer, chat template.

Weights are read from memory-mapped safetensors files (engine/weights.py) and assigned straight
into a model built on the meta device, so a float32 checkpoint loaded as float32 on the CPU is
never copied: its tensors are views of the mapped file. Other dtypes or devices convert one
tensor at a time. Every byte of every weight file is hashed as it is read, and the small files
(config, tokenizer, template) whole: `Checkpoint.fingerprint` identifies the exact contents.
Pickle checkpoints (*.bin, *.pt) are refused: unpickling can run arbitrary code.

Under tensor parallelism (`load(..., tp=group)`) each rank reads only its slices of the tensors
(`WeightFile.shard`) and hashes a disjoint share of the files' 64 MiB blocks; the ranks exchange
their block digests, so `fingerprint` is the one a single process computes, while each rank
reads about 1/tp of the bytes for its weights and 1/tp for the hash (2/tp in all; on one node the
ranks share the page cache, so the disk is read about once). Every step a rank may fail alone
ends in an agreement (engine/distributed.py): a checkpoint missing or corrupt on one rank stops
all of them with the same error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import xxhash
from tokenizers import Tokenizer

from engine.chat import ChatTemplate, find_template_text, special_tokens
from engine.config import parse_config, read_json
from engine.errors import CheckpointError, DeviceError, ParallelError, TokenizerError, WeightsError
from engine.model import ModelArgs, Transformer
from engine.weights import (
    BlockDigest,
    WeightFile,
    block_count,
    combine_block_digests,
    digest_bytes,
    hash_blocks,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Tensors some checkpoints carry that the model recomputes or shares; never an error.
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)
# Small files that can change results (config, tokenizer, chat template): hashed whole.
METADATA_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")


class Config(dict):
    """The checkpoint's config.json; keys read both as `config["x"]` and `config.x`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Checkpoint:
    path: Path
    config: Config
    args: ModelArgs
    model: Transformer
    tokenizer: Tokenizer
    special_tokens: dict[str, object]
    chat_template: ChatTemplate | None
    dtype: torch.dtype
    device: torch.device
    fingerprint: str  # xxh3-128 over every byte of the weights, config, tokenizer and template
    # {weight file name: {"bytes", "mtime_ns", "digest"}}: lets a sweep see that the files are
    # the ones a label was scored from without reading them again
    weight_files: dict[str, dict] = field(default_factory=dict)

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Causal logits [B, T, vocab] (float32) for token ids [B, T]. For tests and debugging:
        the scorer never builds full logits."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        return self.model(input_ids.to(self.device))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids, with BOS/EOS exactly as the tokenizer's own post-processor adds them."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> str:
        """The chat template applied (thinking disabled unless enable_thinking=True is passed)."""
        if self.chat_template is None:
            raise CheckpointError(
                f"{self.path}: the checkpoint has no chat template; use --mode base or --chat-template"
            )
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)


@dataclass
class Metadata:
    """Everything of a checkpoint but its weights (cheap to read)."""

    path: Path
    config: Config
    args: ModelArgs
    tokenizer: Tokenizer
    special_tokens: dict[str, object]
    chat_template: ChatTemplate | None


def read_metadata(path) -> Metadata:
    """Config, tokenizer and chat template of the checkpoint directory at `path`, validated."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found; pass a local Hugging Face model directory")
    config = Config(read_json(directory / "config.json", "config.json"))
    args = parse_config(config, directory / "config.json")
    tokenizer, tokenizer_config = load_tokenizer(directory)
    if tokenizer.get_vocab_size(with_added_tokens=True) > args.vocab_size:
        raise TokenizerError(
            f"{directory / 'tokenizer.json'}: {tokenizer.get_vocab_size(with_added_tokens=True)} tokens but "
            f"config.json says vocab_size={args.vocab_size}; the tokenizer belongs to another model"
        )
    special = special_tokens(tokenizer_config)
    found = find_template_text(directory, tokenizer_config)
    template = ChatTemplate(found[0], found[1], special) if found else None
    return Metadata(directory, config, args, tokenizer, special, template)


def load(path, dtype="float32", device="cpu", tp=1) -> Checkpoint:
    """Load the checkpoint directory at `path` for inference in `dtype` on `device`.

    tp: split the model across this many ranks of a torchrun launch (each rank calls `load`;
    see engine/distributed.py), or an engine.distributed.Group to split it across."""
    group = tensor_parallel_group(tp, device)
    with group.step("reading the checkpoint's config and tokenizer"):
        meta = read_metadata(path)
        directory, config, args = meta.path, meta.config, meta.args
        check_tensor_parallel(args, group.size, directory / "config.json")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device, config)
    if group.size == 1:
        model, files = load_model(directory, args, torch_dtype, torch_device)
    else:
        model, files = load_model_sharded(directory, args, torch_dtype, torch_device, group)
    digests = {name: f["digest"] for name, f in files.items()}
    ck = Checkpoint(directory, config, model.args, model, meta.tokenizer, meta.special_tokens,
                    meta.chat_template, torch_dtype, torch_device, fingerprint(directory, digests), files)
    if len(set(group.gather_objects(ck.fingerprint, "comparing fingerprints"))) > 1:
        error = ParallelError(f"{directory}: the ranks read different files (config, tokenizer or chat "
                              "template differ between their copies); give every rank the same checkpoint")
        error.reported_by = group.ranks[0]  # every rank of the group sees it
        raise error
    return ck


def tensor_parallel_group(tp, device):
    """The engine.distributed.Group to split a model across: `tp` itself when it is one, else
    this rank's group of a launch set up for tp ranks per group (none to set up for tp=1)."""
    from engine import distributed

    if not isinstance(tp, int):
        return tp
    return distributed.SOLO if tp == 1 else distributed.setup(tp, device).tp


def check_tensor_parallel(args: ModelArgs, tp: int, config_path: Path) -> None:
    """Split the model across tp ranks only where whole heads and MLP columns fall to each."""
    for key, n in (("num_attention_heads", args.n_heads), ("num_key_value_heads", args.n_kv_heads),
                   ("intermediate_size", args.intermediate_size)):
        if n % tp:
            raise ParallelError(
                f"{config_path}: --tp {tp} does not divide {key}={n} (heads {args.n_heads}, key/value "
                f"heads {args.n_kv_heads}, intermediate size {args.intermediate_size}); choose a --tp "
                "that divides all three")


def fingerprint(directory: Path, weight_digests: dict[str, str]) -> str:
    """One hash of everything that determines results: the weight files' digests (computed as
    they were read) and the whole bytes of every small metadata file of the directory."""
    h = xxhash.xxh3_128()
    for name in sorted(weight_digests):
        h.update(f"{name}\0{weight_digests[name]}\0".encode())
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in METADATA_SUFFIXES:
            h.update(f"{path.name}\0{digest_bytes(path.read_bytes())}\0".encode())
    return h.hexdigest()


def resolve_device(device) -> torch.device:
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    if torch_device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {device!r} is not supported; use auto, cpu or cuda")
    return torch_device


def resolve_dtype(dtype, device: torch.device, config: dict) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    if dtype == "auto":
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"bfloat16 is not available on {torch.cuda.get_device_name(device)}; use --dtype float32")
    return DTYPES[dtype]


def load_tokenizer(directory: Path) -> tuple[Tokenizer, dict]:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer.json not found; the engine needs a fast-tokenizer file")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
        raise TokenizerError(f"{path}: cannot read tokenizer ({e}); restore the file") from None
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = read_json(config_path, "tokenizer_config.json") if config_path.exists() else {}
    return tokenizer, tokenizer_config


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
            f"{directory / pickles[0]}: pickle checkpoints are refused because loading them can run "
            "arbitrary code; convert the weights to safetensors (model.safetensors)"
        )
    raise WeightsError(f"{directory}: no model.safetensors or model.safetensors.index.json found")


def load_model(directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device
               ) -> tuple[Transformer, dict[str, dict]]:
    """Build the model on the meta device and assign the checkpoint's tensors into it.
    Returns the model and each weight file's size, modification time and digest."""
    files = [WeightFile(path) for path in weight_paths(directory)]
    args = untie_if_the_checkpoint_has_a_head(args, files)
    with torch.device("meta"):
        model = Transformer(args)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state, digests = {}, {}
    for f in files:
        check_names_and_shapes(f, expected)
        digest = BlockDigest()
        for name, tensor in f.load(digest, expected, dtype, device):
            state[name] = tensor
        digests[f.path.name] = file_record(f, digest.hexdigest())
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise WeightsError(f"{directory}: tensor {shown} missing from the checkpoint; the weights are incomplete")
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_rope(device)  # rotary buffers are not in checkpoints: built on the meta device
    return model.eval().requires_grad_(False), digests


def file_record(f: WeightFile, digest: str) -> dict:
    return {"bytes": f.stat.st_size, "mtime_ns": f.stat.st_mtime_ns, "digest": digest}


def load_model_sharded(directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device, group
                       ) -> tuple[Transformer, dict[str, dict]]:
    """`load_model` for one rank of a tensor-parallel group: its slices of the tensors, and its
    share of the files' blocks hashed; the digests are exchanged and combined on every rank."""
    with group.step("opening the weight files"):
        files = [WeightFile(path) for path in weight_paths(directory)]
        holder = {name: f for f in files for name in f.names()}
        has_head = "lm_head.weight" in holder
        # A head is checked and planned even when the config ties it (see below).
        with_head = replace(args, tie_embeddings=args.tie_embeddings and not has_head)
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in Transformer(with_head).state_dict().items()}
            plan_model = Transformer(with_head, group)
        for f in files:
            check_names_and_shapes(f, expected)
        plan = {name: getattr(p, "tp_shard", None) for name, p in plan_model.named_parameters()}
        missing = sorted(set(plan) - set(holder))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise WeightsError(f"{directory}: tensor {shown} missing from the checkpoint; the weights are incomplete")
    with group.step("reading this rank's slices of the weights"):
        state = {}
        for name, spec in plan.items():
            f = holder[name]
            tensor = f.shard(name, *spec) if spec else f.tensor(name)
            state[name] = tensor.to(device=device, dtype=dtype)
        same_head = None
        if args.tie_embeddings and has_head:  # compare this rank's rows only; all ranks vote
            dim, start, stop = plan["model.embed_tokens.weight"]
            same_head = torch.equal(holder["lm_head.weight"].shard("lm_head.weight", dim, start, stop),
                                    holder["model.embed_tokens.weight"].shard("model.embed_tokens.weight",
                                                                              dim, start, stop))
        blocks = [(f.path.name, b) for f in files for b in range(block_count(f.stat.st_size))]
        mine = {}
        for f in files:
            share = [b for i, (name, b) in enumerate(blocks) if name == f.path.name and i % group.size == group.rank]
            mine[f.path.name] = hash_blocks(f.path, share, f.stat.st_size)
    shared = group.gather_objects((mine, same_head), "exchanging block digests")
    records = {}
    for f in files:
        digest = {b: d for blocks_of_rank, _ in shared for b, d in blocks_of_rank[f.path.name].items()}
        records[f.path.name] = file_record(f, combine_block_digests(
            [digest[b] for b in range(block_count(f.stat.st_size))], f.stat.st_size))
    tied = args.tie_embeddings and (not has_head or all(same for _, same in shared))
    if args.tie_embeddings and not tied and group.lead:
        warn_own_head(holder["lm_head.weight"].path)
    if tied:
        state.pop("lm_head.weight", None)
    args = replace(args, tie_embeddings=tied)
    with torch.device("meta"):
        model = Transformer(args, group)
    model.load_state_dict(state, assign=True, strict=True)
    model.reset_rope(device)
    return model.eval().requires_grad_(False), records


def weight_paths(directory: Path) -> list[Path]:
    files = weight_files(directory)
    paths = sorted(set(files.values())) if isinstance(files, dict) else files
    for path in paths:
        if not path.is_file():
            raise WeightsError(f"{path}: weight shard listed in the index is missing; restore it")
    return paths


def untie_if_the_checkpoint_has_a_head(args: ModelArgs, files: list[WeightFile]) -> ModelArgs:
    """`tie_word_embeddings: true` beside a distinct `lm_head.weight`: use that head, as
    transformers 5.x does, and say so (a head equal to the embeddings changes nothing)."""
    holder = {name: f for f in files for name in f.names()}
    if not args.tie_embeddings or "lm_head.weight" not in holder:
        return args
    head = holder["lm_head.weight"].tensor("lm_head.weight")
    embed_file = holder.get("model.embed_tokens.weight")
    if embed_file is not None and torch.equal(head, embed_file.tensor("model.embed_tokens.weight")):
        return args
    warn_own_head(holder["lm_head.weight"].path)
    return replace(args, tie_embeddings=False)


def warn_own_head(path: Path) -> None:
    print(f"warning: {path}: config.json ties the embeddings, but the checkpoint has its own "
          "lm_head.weight; using it, as transformers does", file=sys.stderr)


def check_names_and_shapes(f: WeightFile, expected: dict) -> None:
    """Every tensor of the file is one the config implies, with the shape it implies."""
    for name in f.names():
        if name not in expected:
            if name.endswith(IGNORED_TENSOR_SUFFIXES) or name == "lm_head.weight":  # tied head
                continue
            raise WeightsError(
                f"{f.path}: unexpected tensor {name!r}; config.json does not describe this checkpoint's architecture"
            )
        shape = f.shape(name)
        if shape != expected[name]:
            raise WeightsError(
                f"{f.path}: tensor {name!r} has shape {list(shape)} but config.json implies {list(expected[name])}"
            )
