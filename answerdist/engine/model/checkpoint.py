"""Load a local Hugging Face checkpoint directory: config, weights, tokenizer, chat template.

Weights are read from memory-mapped safetensors files (answerdist/engine/model/weights.py) and
assigned straight into a model built on the meta device, so a float32 checkpoint loaded as float32
on the CPU is never copied: its tensors are views of the mapped file. Other dtypes or devices
convert one tensor at a time. Every byte of every weight file is hashed as it is read, and the small
files (config, tokenizer, template) whole: `Checkpoint.fingerprint` identifies the exact contents.
Pickle checkpoints (*.bin, *.pt) are refused: unpickling can run arbitrary code.

Under tensor parallelism (`load(..., tp=N)` on every rank of a torchrun launch) each rank reads
only its slices of the tensors and hashes a disjoint share of the files' blocks
(answerdist/engine/model/parallel.py), so `fingerprint` is the one a single process computes, while
each rank reads about 1/tp of the bytes for its weights and 1/tp for the hash (2/tp in all; on one
node the ranks share the page cache, so the disk is read about once). Every step a rank may fail
alone ends in an agreement (answerdist/engine/model/distributed.py): a checkpoint missing or corrupt
on one rank stops all of them with the same error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xxhash
from tokenizers import Tokenizer

from answerdist.engine.model import distributed
from answerdist.engine.model.config import parse_config, read_json
from answerdist.engine.model.distributed import SOLO, Group
from answerdist.engine.model.loading import load_model, load_split
from answerdist.engine.model.parallel import check_divides
from answerdist.engine.model.transformer import ModelArgs, Transformer
from answerdist.engine.model.weights import digest_bytes
from answerdist.engine.settings import DTYPES, RunSpec, check_setting, device_problem, shown
from answerdist.engine.text.chat import ChatTemplate, find_template_text, special_tokens
from answerdist.errors import CheckpointError, DeviceError, ParallelError, TokenizerError
from answerdist.files import read_user_file, read_user_text

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
    # the ranks the model is split across (answerdist/engine/model/parallel.py); SOLO: not split
    group: Group = SOLO

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
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise CheckpointError(f"checkpoint {shown(path)}: expected the path of a local Hugging "
                              "Face model directory (or a loaded answerdist.Checkpoint)")
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


def generation_eos_ids(directory: Path) -> tuple[int, ...]:
    """generation_config.json's `eos_token_id`, an int or a list of ints, as transformers'
    generate stops at them; () when the file or the key is absent."""
    path = Path(directory) / "generation_config.json"
    if not path.is_file():
        return ()
    value = read_json(path, "generation_config.json").get("eos_token_id")
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise CheckpointError(f"{path}: eos_token_id must be a token id or a list of them, got "
                              f"{shown(value)}; restore the file from the original checkpoint")
    return tuple(values)


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


def load(path, dtype=RunSpec.dtype, device=RunSpec.device, tp: int = RunSpec.tp) -> Checkpoint:
    """Load the checkpoint directory at `path` for inference in `dtype` (float32, bfloat16, or
    auto: config.json's) on `device` (auto: CUDA when there is one, as a run's setting is).

    tp: split the model across this many ranks of a torchrun launch, every rank calling `load`
    (answerdist/engine/model/parallel.py); the launch's process groups are set up on the first
    call."""
    check_setting("tp", tp)
    group = SOLO
    if tp > 1:
        group = distributed.setup(tp, device).tp
    with group.step("reading the checkpoint's config and tokenizer"):
        meta = read_metadata(path)
        directory, config, args = meta.path, meta.config, meta.args
        if group.size > 1:
            check_divides(args, group.size, directory / "config.json")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device, config)
    if group.size == 1:
        model, files = load_model(directory, args, torch_dtype, torch_device)
    else:
        model, files = load_split(directory, args, torch_dtype, torch_device, group)
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
            try:
                data = read_user_file(path)
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
            h.update(f"{path.name}\0{digest_bytes(data)}\0".encode())
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
    if not path.exists():
        raise TokenizerError(f"{path}: tokenizer.json not found; "
                             "the engine needs a fast-tokenizer file")
    try:
        tokenizer = Tokenizer.from_str(read_user_text(path))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
        raise TokenizerError(f"{path}: cannot read tokenizer ({e}); restore the file") from None
    config_path = directory / "tokenizer_config.json"
    tokenizer_config = (read_json(config_path, "tokenizer_config.json") if config_path.exists()
                        else {})
    return tokenizer, tokenizer_config


