"""Load a local Hugging Face checkpoint directory: config, weights, tokenizer, chat template.

Weights are read from memory-mapped safetensors files (engine/weights.py) and assigned straight
into a model built on the meta device, so a float32 checkpoint loaded as float32 on the CPU is
never copied: its tensors are views of the mapped file. Other dtypes or devices convert one
tensor at a time. Every byte of every weight file is hashed as it is read, and the small files
(config, tokenizer, template) whole: `Checkpoint.fingerprint` identifies the exact contents.
Pickle checkpoints (*.bin, *.pt) are refused: unpickling can run arbitrary code.

Under tensor parallelism (`load(..., tp=N)` on every rank of a torchrun launch) each rank reads
only its slices of the tensors and hashes a disjoint share of the files' blocks (engine/tp.py),
so `fingerprint` is the one a single process computes, while each rank reads about 1/tp of the
bytes for its weights and 1/tp for the hash (2/tp in all; on one node the ranks share the page
cache, so the disk is read about once). Every step a rank may fail alone ends in an agreement
(engine/distributed.py): a checkpoint missing or corrupt on one rank stops all of them with the
same error.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import xxhash
from tokenizers import Tokenizer

from engine.chat import ChatTemplate, find_template_text, special_tokens
from engine.config import parse_config, read_json
from engine.distributed import SOLO, Group
from engine.errors import CheckpointError, DeviceError, ParallelError, TokenizerError, WeightsError
from engine.model import ModelArgs, Transformer
from engine.spec import DTYPES, RunSpec, check_setting, device_problem
from engine.weights import (
    BlockDigest,
    WeightFile,
    digest_bytes,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Tensors some checkpoints carry that the model recomputes or shares; never an error.
IGNORED_TENSOR_SUFFIXES = ("rotary_emb.inv_freq",)
# Small files that can change results (config, tokenizer, chat template): hashed whole.
METADATA_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
MAX_METADATA_BYTES = 1 << 30  # the largest tokenizer.json files are tens of MB


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
    group: Group = SOLO  # the ranks the model is split across (engine/tp.py); SOLO: not split

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

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    **template_kwargs) -> str:
        """The chat template applied (thinking disabled unless enable_thinking=True is passed)."""
        if self.chat_template is None:
            raise CheckpointError(
                f"{self.path}: the checkpoint has no chat template; "
                "use --mode base or --chat-template"
            )
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt,
                                         **template_kwargs)


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
        raise CheckpointError(f"{directory}: checkpoint directory not found; "
                              "pass a local Hugging Face model directory")
    check_metadata_files(directory)
    config = Config(read_json(directory / "config.json", "config.json"))
    args = parse_config(config, directory / "config.json")
    tokenizer, tokenizer_config = load_tokenizer(directory)
    if tokenizer.get_vocab_size(with_added_tokens=True) > args.vocab_size:
        raise TokenizerError(
            f"{directory / 'tokenizer.json'}: {tokenizer.get_vocab_size(with_added_tokens=True)} "
            f"tokens but config.json says vocab_size={args.vocab_size}; "
            "the tokenizer belongs to another model"
        )
    special = special_tokens(tokenizer_config)
    found = find_template_text(directory, tokenizer_config)
    template = (ChatTemplate(found[0], found[1], special,
                             special_source=str(directory / "tokenizer_config.json"))
                if found else None)
    return Metadata(directory, config, args, tokenizer, special, template)


def check_metadata_files(directory: Path) -> None:
    """The small files read whole (config, tokenizer, template: what the fingerprint hashes and
    prompts are made of) are the checkpoint's own and small: a link that leaves the directory
    could copy any file into published results, and a huge (sparse) file would never finish.
    The Hugging Face cache's layout is the checkpoint's own: a snapshot's links point into the
    same repository's blobs/."""
    root = directory.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    for path in sorted(directory.iterdir()):
        if path.suffix not in METADATA_SUFFIXES or not path.is_file():
            continue
        real = path.resolve()
        if not (real.is_relative_to(root) or (blobs is not None and real.is_relative_to(blobs))):
            raise CheckpointError(f"{path}: links to {real}, outside the checkpoint; copy the "
                                  "file into the checkpoint directory")
        size = path.stat().st_size
        if size > MAX_METADATA_BYTES:
            raise CheckpointError(f"{path}: {size:,} bytes, more than a config, tokenizer or "
                                  f"template file holds ({MAX_METADATA_BYTES:,}); remove it")


def load(path, dtype=RunSpec.dtype, device="cpu", tp: int = RunSpec.tp) -> Checkpoint:
    """Load the checkpoint directory at `path` for inference in `dtype` (float32, bfloat16, or
    auto: config.json's) on `device`.

    tp: split the model across this many ranks of a torchrun launch, every rank calling `load`
    (engine/tp.py); the launch's process groups are set up on the first call."""
    check_setting("tp", tp)
    group = SOLO
    if tp > 1:
        from engine import distributed
        from engine import tp as tensor_parallel

        group = distributed.setup(tp, device).tp
    with group.step("reading the checkpoint's config and tokenizer"):
        meta = read_metadata(path)
        directory, config, args = meta.path, meta.config, meta.args
        if group.size > 1:
            tensor_parallel.check_divides(args, group.size, directory / "config.json")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device, config)
    if group.size == 1:
        model, files = load_model(directory, args, torch_dtype, torch_device)
    else:
        model, files = tensor_parallel.load_split(directory, args, torch_dtype, torch_device, group)
    digests = {name: f["digest"] for name, f in files.items()}
    ck = Checkpoint(directory, config, model.args, model, meta.tokenizer, meta.special_tokens,
                    meta.chat_template, torch_dtype, torch_device, fingerprint(directory, digests),
                    files, group)
    if len(set(group.gather_objects(ck.fingerprint, "comparing fingerprints"))) > 1:
        raise ParallelError(f"{directory}: the ranks read different files (config, tokenizer or "
                            "chat template differ between their copies); give every rank the "
                            "same checkpoint", reported_by=group.ranks[0])  # every rank sees it
    return ck


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
    name = str(device) if isinstance(device, torch.device) else device
    problem = device_problem(name)
    if problem:
        raise DeviceError(f"device {problem}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but CUDA is not available here; "
                          "use --device cpu")
    return torch.device(name)


def resolve_dtype(dtype, device: torch.device, config: dict) -> torch.dtype:
    """A dtype name (or "auto": the one config.json saves, float32 if none) as a torch dtype."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    saved = dtype == "auto"
    if saved:
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if dtype not in DTYPES:
        where = "config.json's dtype" if saved else "dtype"
        raise DeviceError(f"{where} {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"bfloat16 is not available on {torch.cuda.get_device_name(device)}; "
                          "use --dtype float32")
    return getattr(torch, dtype)


def load_tokenizer(directory: Path) -> tuple[Tokenizer, dict]:
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer.json not found; "
                             "the engine needs a fast-tokenizer file")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
        raise TokenizerError(f"{path}: cannot read tokenizer ({e}); restore the file") from None
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = (read_json(config_path, "tokenizer_config.json") if config_path.exists()
                        else {})
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
    args = untie_if_the_checkpoint_has_a_head(args, files)
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


_LAYER = re.compile(r"model\.layers\.(\d+)\.")


def check_size_against_files(directory: Path, args: ModelArgs, files: list[WeightFile]) -> None:
    """The config's layer count and embedding shape agree with the weight files' headers, checked
    before anything the config's size is built (10^6 layers in a config must not take minutes
    and gigabytes to refuse)."""
    layers, embedding = set(), None
    for f in files:
        for name in f.names():
            if match := _LAYER.match(name):
                layers.add(int(match.group(1)))
            elif name == "model.embed_tokens.weight":
                embedding = f.shape(name)
    config = directory / "config.json"
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
