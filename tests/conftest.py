"""Test-wide set-up: Triton runs through its interpreter on the CPU unless a GPU run is asked for.

``MASKC_GPU_TESTS=1 python -m pytest`` (on a machine with CUDA) runs the Triton tests with
real compilation on the GPU, plus the tests marked ``gpu``; ``--update-golden`` rewrites the
golden kernel sources in tests/golden/.
"""

import os
import sys

import pytest

GPU_RUN = os.environ.get("MASKC_GPU_TESTS") == "1"
os.environ.setdefault("MASKC_LINT", "1")  # every plan the tests build is linted (pipeline.py)
if not GPU_RUN:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*.py from the current code generator")


def pytest_collection_modifyitems(config, items):
    if GPU_RUN:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run with MASKC_GPU_TESTS=1")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device():
    return "cuda" if GPU_RUN else "cpu"


@pytest.fixture
def default_recursion_limit():
    """Python's default recursion limit (1000) for one test; the previous limit comes back after.

    NOTE: the first torch.compile that reaches inductor on a cold cache raises the limit to
    2000 for the rest of the process (``torch/_inductor/compile_fx.py``), so a test that
    relies on the default passes or fails with the cache and with the tests run before it.
    Tests that check what works (or fails) under the default pin it here.
    """
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield 1000
    finally:
        sys.setrecursionlimit(old)
