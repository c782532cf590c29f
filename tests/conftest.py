"""Shared test set-up: the Triton interpreter, and the tiny checkpoints and tokenizers.

TRITON_INTERPRET=1 only works when it is set before anything imports triton
(kernels/interpreter.py). pytest imports this file before any test module, so on a machine
without CUDA every kernel test runs interpreted, in this process; natively where CUDA is.
"""

from answerdist.kernels.interpreter import interpret_without_cuda

KERNELS_RUN = interpret_without_cuda()  # before any test module can import triton

import shutil  # noqa: E402

import pytest  # noqa: E402

from tests import tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads_unchanged():
    """Fail a test that leaves torch's thread count changed: CPU results' bits can depend on it,
    and tests compare results scored in this process with results scored in subprocesses."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        found = torch.get_num_threads()
        torch.set_num_threads(threads)
        pytest.fail(f"the test left torch.get_num_threads() at {found} (was {threads})")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(**kwargs)`: the directory of a random checkpoint written by transformers
    (`tests.tiny.make_checkpoint` arguments), built once per session for each set of arguments.
    Shared: tests that change files copy it first (`copy_checkpoint`)."""
    built = {}

    def make(**kwargs):
        key = repr(sorted(kwargs.items()))
        if key not in built:
            directory = tmp_path_factory.mktemp("ckpt")
            tiny.make_checkpoint(directory, **kwargs)
            built[key] = directory  # only once complete
        return built[key]

    return make


@pytest.fixture
def copy_checkpoint(tmp_path):
    """`copy_checkpoint(directory)`: a private copy to damage or edit."""
    def copy(directory, name="copy"):
        return shutil.copytree(directory, tmp_path / name)

    return copy


@pytest.fixture(scope="session")
def bpe():
    """The byte-level BPE trainer of the tiny checkpoints (`tests.tiny.train_tokenizer`)."""
    return tiny.train_tokenizer
