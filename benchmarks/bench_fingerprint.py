"""What the checkpoint fingerprint costs at load: every weight byte hashed (xxh3) as it is read.

    python -m benchmarks.bench_fingerprint [--gb 1.0] [--repeats 5]

Writes a random Llama-architecture checkpoint of about `--gb` GB (bfloat16 safetensors, with the
tiny test tokenizer), then times `answerdist.load(..., dtype="float32")` (which reads and converts
every byte) with the hashing on and with it replaced by a no-op, alternating, and prints the
medians and the ratio; for scale, the same reads and conversions by the safetensors package.
With `--cold` (needs root), the page cache is dropped before every load, so the time includes
reading the file from disk. A developer tool: transformers is not needed, but the tokenizer
comes from tests/tiny.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import answerdist
from answerdist.engine.model import weights


def write_checkpoint(directory: Path, gb: float) -> int:
    """A Llama config sized to about `gb` GB of bfloat16 weights; returns the parameter count."""
    from tests import tiny

    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((gb * 1e9 / 2 - 2 * vocab * hidden) / per_layer))
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": 16, "num_key_value_heads": 16,
              "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config))
    tiny.write_tokenizer(directory)
    g = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
             "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state |= {p + f"self_attn.{n}_proj.weight": (hidden, hidden) for n in "qkvo"}
        state |= {p + "mlp.gate_proj.weight": (inter, hidden),
                  p + "mlp.up_proj.weight": (inter, hidden),
                  p + "mlp.down_proj.weight": (hidden, inter),
                  p + "input_layernorm.weight": (hidden,),
                  p + "post_attention_layernorm.weight": (hidden,)}
    tensors = {k: (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
               for k, shape in state.items()}
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return sum(t.numel() for t in tensors.values())


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def time_load(directory: Path, cold: bool) -> float:
    if cold:
        drop_caches()
    start = time.perf_counter()
    answerdist.load(directory, dtype="float32", device="cpu")
    return time.perf_counter() - start


def time_safetensors(directory: Path, cold: bool) -> float:
    """The same weights read and converted by the safetensors package (for scale)."""
    from safetensors import safe_open

    if cold:
        drop_caches()
    start = time.perf_counter()
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        state = {name: f.get_tensor(name).to(torch.float32) for name in f.keys()}
    del state
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cold", action="store_true",
                   help="drop the page cache before every load (root)")
    args = p.parse_args(argv)
    if args.cold and not drop_caches():
        raise SystemExit("--cold needs write access to /proc/sys/vm/drop_caches (root)")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        params = write_checkpoint(directory, args.gb)
        size = (directory / "model.safetensors").stat().st_size
        hashed, plain, reference = [], [], []
        update = weights.BlockDigest.update
        time_load(directory, False)  # warm-up: imports, first allocations
        for _ in range(args.repeats):
            hashed.append(time_load(directory, args.cold))
            weights.BlockDigest.update = lambda self, data: None
            try:
                plain.append(time_load(directory, args.cold))
            finally:
                weights.BlockDigest.update = update
            reference.append(time_safetensors(directory, args.cold))
    h, n = statistics.median(hashed), statistics.median(plain)
    print(f"checkpoint: {params / 1e6:.0f}M bf16 parameters, {size / 1e9:.2f} GB, "
          f"loaded as float32 on CPU, {'cold' if args.cold else 'warm'} page cache, "
          f"median of {args.repeats}")
    print(f"load with fingerprint   {h:7.3f} s   (runs: {', '.join(f'{x:.3f}' for x in hashed)})")
    print(f"load without hashing    {n:7.3f} s   (runs: {', '.join(f'{x:.3f}' for x in plain)})")
    print(f"safetensors load_file   {statistics.median(reference):7.3f} s   "
          "(the same reads and conversions by the safetensors package, no fingerprint)")
    print(f"fingerprint cost: {100 * (h - n) / n:+.1f}% of load time")


if __name__ == "__main__":
    main()
