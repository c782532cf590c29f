"""Tensor parallelism on CPU with gloo, 2 ranks: the results equal a single process's within
float32 rounding for every family, the fingerprint is the same, a run is batch-invariant, and
bad input on any rank stops every rank with one line and status 2 (no hang)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from answerdist.engine.model import weights
from answerdist.engine.model.distributed import Group
from answerdist.engine.model.weights import (
    BlockDigest,
    WeightFile,
    block_count,
    combine_block_digests,
    hash_blocks,
)
from tests import launch, tiny

# Tiny checkpoints of every family that tp=2 can split (heads, key/value heads and the MLP's 96
# columns even): grouped-query attention everywhere, tied and untied heads, an odd vocabulary
# (301: the ranks hold 151 and 150 rows), OLMo's q/k norm over all heads, OLMo 3's windows,
# GPT-NeoX's per-head fused projection, Gemma 2's soft-capping over a split vocabulary, Gemma 3's
# per-head q/k norm, OLMoE's experts (each split as a dense MLP is, under a whole router) and
# Phi-3's fused projections, split within each of their parts.
COMMON = dict(hidden=32, heads=4, kv_heads=2, init=0.1)
PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                 "short_factor": [1.0 + i / 4 for i in range(2)],
                 "long_factor": [2.0 + i / 2 for i in range(2)],
                 "original_max_position_embeddings": 256}
FAMILIES = {
    "llama": dict(arch="llama", rope_scaling=tiny.LLAMA3_ROPE),
    "olmo2": dict(arch="olmo2"),
    "olmo3": dict(arch="olmo3", layers=4, sliding_window=16, rope_scaling=tiny.YARN_ROPE,
                  template=tiny.OLMO3_CHAT_TEMPLATE, add_bos=False),
    "qwen2": dict(arch="qwen2", tied=True, template=tiny.QWEN25_CHAT_TEMPLATE, add_bos=False),
    "qwen3": dict(arch="qwen3", template=tiny.QWEN3_CHAT_TEMPLATE, added_tokens=tiny.THINK_TOKENS,
                  vocab_size=320, add_bos=False),
    "mistral": dict(arch="mistral", sliding_window=16),
    "neox": dict(arch="neox", tied=True),  # per-head fused q/k/v rows, parallel residual
    "gemma2": dict(arch="gemma2", layers=3, sliding_window=16, attn_logit_softcapping=5.0,
                   final_logit_softcapping=8.0),  # caps small enough to bind
    "olmo1": dict(arch="olmo1", clip_qkv=0.25),  # clipping that binds
    "gemma3": dict(arch="gemma3", layers=3, sliding_window=16, sliding_window_pattern=3),
    "olmoe": dict(arch="olmoe", num_experts=6, num_experts_per_tok=2),  # every expert split
    "phi3": dict(arch="phi3", rope_scaling=PHI3_LONGROPE),  # fused [q; k; v] and [gate; up]
}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(a))).max())


# ---------------------------------------------------------------------------------- units


@pytest.mark.parametrize("vocab,size", [(301, 2), (320, 2), (10, 3), (7, 4), (128256, 8)])
def test_vocab_slices_cover_the_vocabulary_once(vocab, size):
    ranges = [Group(r, size, tuple(range(size))).vocab_range(vocab) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == vocab
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    widths = [stop - start for start, stop in ranges]
    assert max(widths) - min(widths) <= 1


@pytest.mark.parametrize("size", [1, 4096, 4096 * 3, 4096 * 3 + 17, 4096 * 5 - 1])
def test_ranks_hashing_disjoint_blocks_get_the_single_process_digest(tmp_path, monkeypatch, size):
    monkeypatch.setattr(weights, "BLOCK_BYTES", 4096)  # small blocks, same code
    monkeypatch.setattr(weights, "READ_BYTES", 1000)  # reads that straddle blocks
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "f"
    path.write_bytes(data)
    whole = BlockDigest()
    for i in range(0, size, 777):  # fed in pieces that ignore the block boundaries
        whole.update(data[i:i + 777])
    n = block_count(size)
    for ranks in (1, 2, 3):
        digests = {}
        for rank in range(ranks):
            digests.update(hash_blocks(path, range(rank, n, ranks), size))
        assert combine_block_digests([digests[b] for b in range(n)], size) == whole.hexdigest()
    data = bytearray(data)
    data[size // 2] ^= 1  # one bit anywhere changes it
    path.write_bytes(data)
    flipped = hash_blocks(path, range(n), size)
    assert combine_block_digests([flipped[b] for b in range(n)], size) != whole.hexdigest()


def test_shards_are_the_slices_of_the_tensor(tmp_path):
    from safetensors.torch import save_file

    tensor = torch.arange(64 * 48, dtype=torch.float32).reshape(64, 48)
    save_file({"w": tensor, "b": torch.ones(3)}, tmp_path / "m.safetensors")
    f = WeightFile(tmp_path / "m.safetensors")
    rows = f.shard("w", 0, 16, 40)
    assert torch.equal(rows, tensor[16:40])
    assert rows.untyped_storage().data_ptr() == f.tensor("w").untyped_storage().data_ptr()  # a view
    cols = f.shard("w", 1, 12, 36)
    assert torch.equal(cols, tensor[:, 12:36]) and cols.is_contiguous()
    assert torch.equal(f.tensor("w"), tensor)  # dropped pages read back the same bytes


# ---------------------------------------------------------------------------------- tp=2 == tp=1


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    for name, kwargs in FAMILIES.items():
        tiny.make_checkpoint(root / "ckpt" / name, **COMMON, **kwargs)
    return root


def sweep_file(root: Path, name: str, tp: int, out: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f'checkpoints = ["ckpt/*"]\ntasks = "all"\nout = "{out}"\ntp = {tp}\n')
    return path


@pytest.fixture(scope="module")
def scored(families):
    """Every family, all 15 tasks: one process and one torchrun launch of 2 ranks with tp=2, side
    by side (each rank has one thread, and neither run's bits depend on the other)."""
    single, parallel = launch.concurrently(
        launch.python_command("sweep", sweep_file(families, "tp1", 1, "tp1")),
        launch.torchrun_command(2, "sweep", sweep_file(families, "tp2", 2, "tp2")))
    assert single.returncode == 0, single.stderr
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    assert f"{len(FAMILIES)} scored, 0 skipped, 0 failed" in parallel.stdout
    return families


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tp2_equals_tp1_within_float32_rounding(scored, family):
    one, two = scored / "tp1" / family, scored / "tp2" / family
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (one, two))
    assert len(m1["tasks"]) == len(m2["tasks"]) == 15
    assert m2["fingerprint"] == m1["fingerprint"]  # every byte hashed, by two ranks
    assert m2["tp"] == 2 and m1["tp"] == 1
    assert m2["run"] == dict(m1["run"], tp=2) and "tp" not in m1["run"]
    worst = 0.0
    for task in m1["tasks"]:
        for file in (f"{task}.parquet", f"variants/{task}.parquet"):
            a, b = pq.read_table(one / file), pq.read_table(two / file)
            numbers = [c for c in ("logprob", "prob", "coverage") if c in a.column_names]
            assert a.drop_columns(numbers).equals(b.drop_columns(numbers)), file
            worst = max(worst, rel_err(a.column("logprob").to_numpy(),
                                       b.column("logprob").to_numpy()))
    print(f"{family}: max |dlogprob| / max(1, |logprob|) tp=2 vs tp=1 = {worst:.3g}")
    assert worst <= 1e-6


def test_tp2_from_the_cli_is_batch_invariant(scored, tmp_path):
    """answerdist.cli.score --tp 2 with tiny forward-pass budgets gives the sweep's bits exactly."""
    run = launch.torchrun(2, "score", scored / "ckpt" / "llama", "--tp", "2", "--tasks",
                          "card,rng_1_100", "--batch-tokens", "64", "--out", tmp_path, "--label",
                          "l")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("card") == 1  # rank 0 alone prints the summary
    for task in ("card", "rng_1_100"):
        for file in (f"{task}.parquet", f"variants/{task}.parquet"):
            a = pq.read_table(tmp_path / "l" / file).column("logprob").to_numpy()
            b = pq.read_table(scored / "tp2" / "llama" / file).column("logprob").to_numpy()
            assert a.tobytes() == b.tobytes(), file


def test_tp2_discovers_and_borrows_answers_as_one_process_does(tmp_path):
    """--discover and --answers-from under --tp 2: every rank samples the same tokens from the
    joined vocabulary, so the discovery equals one process's; the answers borrowed from it are
    read by the first rank and scored split as one process scores them."""
    ckpt = tmp_path / "ckpt"
    tiny.short_reply_checkpoint(ckpt)
    common = ["--tasks", "open_animal", "--out", tmp_path / "out"]
    find = ["--discover", "8", "--max-new-tokens", "4"]
    runs = {"found1": launch.python("score", ckpt, *common, *find, "--label", "found1"),
            "found2": launch.torchrun(2, "score", ckpt, *common, *find, "--tp", "2",
                                      "--label", "found2")}
    runs["one"] = launch.python("score", ckpt, *common, "--answers-from", "found1",
                                "--label", "one")
    runs["two"] = launch.torchrun(2, "score", ckpt, *common, "--answers-from", "found1",
                                  "--tp", "2", "--label", "two")
    for label, run in runs.items():
        assert run.returncode == 0, (label, run.stderr[-3000:])
    assert runs["found2"].stdout.count("replies sampled") == 1  # rank 0 alone says it
    out = tmp_path / "out"
    assert (pq.read_table(out / "found1" / "discovery" / "open_animal.parquet").to_pylist()
            == pq.read_table(out / "found2" / "discovery" / "open_animal.parquet").to_pylist())
    for one, two in (("found1", "found2"), ("one", "two")):
        a, b = (pq.read_table(out / label / "open_animal.parquet") for label in (one, two))
        assert a.column("answer").to_pylist() == b.column("answer").to_pylist()
        assert rel_err(a.column("logprob").to_numpy(), b.column("logprob").to_numpy()) <= 1e-6
    # a rerun: the first rank reads the discovery it wrote back and shares it, nothing changes
    kept = out / "found2" / "discovery" / "open_animal.parquet"
    written = kept.read_bytes()
    again = launch.torchrun(2, "score", ckpt, *common, *find, "--tp", "2",
                            "--label", "found2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert kept.read_bytes() == written
    manifest = json.loads((out / "found2" / "manifest.json").read_text())
    assert manifest["timings"]["skipped_tasks"] == 1


# ---------------------------------------------------------------------------------- bad input


def one_error_line(ranks: list[launch.Rank], *fragments: str) -> str:
    """Every rank exited 2; rank 0 printed one line, the others nothing."""
    assert [r.returncode for r in ranks] == [2] * len(ranks), [r.stderr[-2000:] for r in ranks]
    lines = ranks[0].lines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ranks[0].stderr
    for r in ranks[1:]:
        assert not r.lines(), r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("heads,kv_heads,which",
                         [(3, 3, "num_attention_heads=3"), (4, 1, "num_key_value_heads=1")])
def test_tp_must_divide_the_heads(tmp_path, heads, kv_heads, which):
    ckpt = tmp_path / "ckpt"
    tiny.make_checkpoint(ckpt, arch="llama", hidden=12 * heads, heads=heads, kv_heads=kv_heads)
    argv = [ckpt, "--tp", "2", "--tasks", "coin", "--out", tmp_path / "out"]
    one_error_line(launch.ranks("score", [argv, argv], tmp_path), "--tp 2", which)
    assert not (tmp_path / "out").exists()


def test_world_size_must_be_a_multiple_of_tp(families, tmp_path):
    argv = [families / "ckpt" / "llama", "--tp", "3", "--out", tmp_path / "out"]
    one_error_line(launch.ranks("score", [argv, argv], tmp_path), "world size 2", "--tp 3")
    argv = [families / "ckpt" / "llama", "--tp", "1", "--out", tmp_path / "out"]
    one_error_line(launch.ranks("score", [argv, argv], tmp_path), "2 processes", "--tp 2")
    alone = launch.python("score", families / "ckpt" / "llama", "--tp", "2", "--out",
                          tmp_path / "out")
    assert (alone.returncode == 2 and alone.stderr.count("error:") == 1
            and "torchrun" in alone.stderr)
    assert not (tmp_path / "out").exists()


def broken_copies(src: Path, root: Path) -> dict[str, Path]:
    missing = root / "nowhere"
    corrupt = root / "corrupt"
    shutil.copytree(src, corrupt)
    weights_file = corrupt / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    incomplete = root / "incomplete"
    shutil.copytree(src, incomplete)
    from safetensors.torch import load_file, save_file

    tensors = load_file(incomplete / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, incomplete / "model.safetensors", metadata={"format": "pt"})
    return {"missing": missing, "corrupt": corrupt, "incomplete": incomplete}


@pytest.mark.parametrize("problem,fragment",
                         [("missing", "not found"), ("corrupt", "corrupt or truncated"),
                          ("incomplete", "model.layers.1.mlp.up_proj.weight missing")])
def test_a_checkpoint_broken_on_one_rank_stops_both(families, tmp_path, problem, fragment):
    good = families / "ckpt" / "olmo2"
    bad = broken_copies(good, tmp_path)[problem]
    common = ["--tp", "2", "--tasks", "coin", "--out", tmp_path / "out", "--label", "l",
              "--dist-timeout", "60"]
    started = time.time()
    ranks = launch.ranks("score", [[good, *common], [bad, *common]], tmp_path)
    line = one_error_line(ranks, "rank 1: ", fragment, str(bad))
    assert time.time() - started < 60, line  # agreed at once, never by a timeout
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                    reason="counts threads through Linux's /proc")
@pytest.mark.parametrize("how", ["explicit", "--at-exit"])
def test_shutdown_joins_the_gloo_threads(how):
    """shutdown() leaves no gloo thread running, even with an error's traceback still held, and
    runs at exit for Python callers that never call it: a thread left to interpreter exit aborted
    a rank one run in four (SIGABRT, exit -6)."""
    run = launch.torchrun(2, "tests.shutdown_probe", *([how] if how != "explicit" else []))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(line for line in run.stdout.splitlines() if line.startswith("rank "))
    assert (lines[0].startswith("rank 0: ParallelError, gloo threads")
            and lines[2].startswith("rank 1: EngineError"))
    assert int(lines[0].rsplit(" ", 1)[1]) > 0  # the probe sees the threads it expects to end
    assert (lines[1] == "rank 0: gloo threads after shutdown 0"
            and lines[3] == "rank 1: gloo threads after shutdown 0")


def test_a_hung_rank_times_the_other_out(families, tmp_path):
    """Rank 1 frozen mid-run (SIGSTOP): rank 0 gives up after --dist-timeout with one line."""
    argv = [families / "ckpt" / "llama", "--tp", "2", "--tasks", "all", "--out", tmp_path / "out",
            "--label", "l", "--dist-timeout", "5"]
    procs = launch.start_ranks("score", [argv, argv], tmp_path)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "out" / "l").exists() and time.time() < deadline:  # loaded, scoring
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped = time.time()
        procs[0].wait(timeout=120)
        waited = time.time() - stopped
    finally:
        procs[1].send_signal(signal.SIGKILL)
    ranks = launch.finish_ranks(procs, tmp_path)
    assert ranks[0].returncode == 2, ranks[0].stderr[-2000:]
    lines = ranks[0].lines()
    assert (len(lines) == 1 and "did not answer within 5 s" in lines[0]
            and "rank(s) 1" in lines[0]), lines
    assert waited < 60
    manifest = tmp_path / "out" / "l" / "manifest.json"
    if manifest.exists():  # what finished before the hang is complete and valid
        from answerdist.engine.results.store import ResultsStore

        store = ResultsStore(tmp_path / "out", "l")
        assert all(store.problem(name) is None for name in store.tasks)
