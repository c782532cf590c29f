"""The package installs beside transformers and Hugging Face's `kernels` without touching them.

Up to 0.2 this project installed top-level packages named `kernels`, `engine`, `analysis` and
`lab`; transformers 5.x depends on Hugging Face's `kernels`, so a regular install wrote over its
files and, from the repository root, our folder shadowed it. Everything now lives under
`answerdist/`. These tests build the wheel, install it into a fresh venv next to transformers
and `kernels` (versions from constraints.txt, torch the CPU build), and check that both work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
# A clean environment for the fresh venv: nothing of this checkout on its path.
CLEAN = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(cmd, cwd, env=CLEAN, timeout=900) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=timeout)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, ROOT], cwd=out)
    (found,) = out.glob("answerdist-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel, transformers and Hugging Face's kernels."""
    directory = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", directory], cwd=directory.parent)
    # --no-compile: no bytecode for torch's thousands of files (half the install's time)
    pip = [directory / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile"]
    run([*pip, "torch==2.13.0"], cwd=directory.parent)  # the CPU build, as make setup installs
    run([*pip, "-c", ROOT / "constraints.txt", wheel, "transformers", "kernels"],
        cwd=directory.parent)
    return directory


def test_the_wheel_installs_answerdist_alone_at_top_level(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["answerdist"]
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"answerdist"}
    assert any(n.startswith("answerdist/engine/tasks/") and n.endswith(".toml") for n in names)


def test_pip_check_is_clean_beside_transformers_and_kernels(venv):
    result = run([venv / "bin" / "python", "-m", "pip", "check"], cwd=venv.parent)
    assert "No broken requirements" in result.stdout


def test_no_file_belongs_to_two_distributions(venv):
    code = ("import importlib.metadata as m, json\n"
            "owners = {}\n"
            "for d in m.distributions():\n"
            "    for f in d.files or ():\n"
            "        if '__pycache__' not in f.parts and not f.parts[0].endswith('.dist-info'):\n"
            "            owners.setdefault(str(f), []).append(d.metadata['Name'])\n"
            "print(json.dumps({f: o for f, o in owners.items() if len(set(o)) > 1}))\n")
    shared = json.loads(run([venv / "bin" / "python", "-c", code], cwd=venv.parent).stdout)
    assert shared == {}


def test_hugging_face_kernels_still_works_after_importing_answerdist(venv, tmp_path):
    code = ("import answerdist, answerdist.engine.run.api, answerdist.kernels\n"
            "from answerdist import analysis\n"
            "import kernels, transformers\n"
            "assert kernels.CUDAProperties and 'site-packages' in kernels.__file__\n"
            "assert answerdist.kernels.KernelUnsupportedError\n"
            "print(answerdist.__version__, kernels.__file__)\n")
    out = run([venv / "bin" / "python", "-c", code], cwd=tmp_path).stdout
    assert out.startswith(__import__("answerdist").__version__)
    script = run([venv / "bin" / "answerdist", "tasks", "coin"], cwd=tmp_path).stdout
    assert "coin" in script


def test_transformers_builds_a_model_from_the_repository_root(tmp_path):
    """Where pytest runs, `import kernels` is Hugging Face's, and from_pretrained works."""
    tiny.make_checkpoint(tmp_path / "ck", arch="llama", hidden=32, heads=2, kv_heads=2, init=0.1)
    code = ("import kernels, sys, torch, transformers\n"
            "assert kernels.CUDAProperties\n"
            f"model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ck')!r})\n"
            "print(type(model).__name__, model(torch.tensor([[1, 2, 3]])).logits.shape)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = run([sys.executable, "-c", code], cwd=ROOT, env=env).stdout
    assert out.startswith("LlamaForCausalLM")
