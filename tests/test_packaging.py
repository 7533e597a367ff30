"""Packaging: every module of maskc loads once, under the one name the install gives it; the
checkout's other folders are not subpackages of maskc; every CLI command works without the
``test`` extra (hypothesis).

Each check that depends on what a process has imported runs in a fresh interpreter, started in
the checkout's root so that the root is on ``sys.path`` (as ``python -m pytest`` puts it).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

import maskc

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def python(code: str, *args, env: dict | None = None, cwd=ROOT, timeout=300):
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                         env=os.environ if env is None else env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


ONE_NAME = """
import importlib, os, pkgutil, sys
import maskc, maskc.backends
names = [m.name for m in pkgutil.walk_packages(maskc.__path__, "maskc.")]
names += [m.name for m in pkgutil.walk_packages(maskc.backends.__path__, "maskc.backends.")]
for name in names:
    importlib.import_module(name)
import maskc.backends.triton as a
import maskc.backends.triton.launch
assert a.KernelConfig is maskc.backends.triton.launch.KernelConfig is maskc.KernelConfig
top = sorted(n for n in sys.modules if n.partition(".")[0] in ("backends", "grammar", "tests"))
assert not top, top
roots = tuple(os.path.dirname(os.path.realpath(m.__file__)) + os.sep
              for m in (maskc, maskc.backends))
files = {}
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f and os.path.realpath(f).startswith(roots):  # maskc's own files, by module name
        files.setdefault(os.path.realpath(f), []).append(name)
loaded = {n for v in files.values() for n in v}
assert set(names) <= loaded, sorted(set(names) - loaded)
twice = {f: n for f, n in files.items() if len(n) > 1}
assert not twice, twice
try:
    import backends
except ImportError as err:
    print("refused:", err)
else:
    raise AssertionError("the checkout's backends/ imports as a top-level package")
print(len(names), "modules")
"""


def test_each_module_loads_once_under_one_name():
    res = python(ONE_NAME)
    assert "refused: " in res.stdout and "maskc.backends" in res.stdout
    assert int(res.stdout.split()[-2]) > 20  # it did walk the packages


def test_nothing_here_imported_a_second_copy():
    # what the suite has imported so far (whatever ran before): maskc's names only
    assert not [n for n in sys.modules if n.partition(".")[0] in ("backends", "grammar")]
    from maskc.backends import triton
    from maskc.backends.triton import launch
    assert triton.KernelConfig is launch.KernelConfig is maskc.KernelConfig


@pytest.mark.parametrize("name", ["maskc.tests", "maskc.bench", "maskc.examples",
                                  "maskc.backends.backends", "maskc.grammar.grammar"])
def test_checkout_folders_are_not_subpackages_of_maskc(name):
    with pytest.raises(ImportError):
        importlib.import_module(name)


# A driver that runs maskc's CLI in a process where hypothesis cannot be imported (as when
# the `test` extra is not installed), whatever this environment has.
NO_HYPOTHESIS = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "hypothesis":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Refuse())
try:
    import hypothesis
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("hypothesis was not refused")
from maskc.cli import main
code = main(sys.argv[1:])
assert "hypothesis" not in sys.modules
sys.exit(code)
"""


def without_hypothesis(*argv, interpret: bool = True, tmp_path=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    if tmp_path is not None:
        env["MASKC_CACHE_DIR"] = str(tmp_path / "cache")
    return python(NO_HYPOTHESIS, *argv, env=env, cwd=tmp_path or ROOT, timeout=600)


def test_check_and_show_without_hypothesis(tmp_path):
    files = sorted(EXAMPLES.glob("*.mask"))
    res = without_hypothesis("check", *files, tmp_path=tmp_path)
    assert res.stdout.count(": ok, ") == len(files)
    res = without_hypothesis("show", EXAMPLES / "longformer.mask", "--q-len", 256,
                             tmp_path=tmp_path)
    assert res.stdout.startswith("mask longformer: ")
    res = without_hypothesis("show", EXAMPLES / "mistral.mask", "--q-len", 512, "--target",
                             "triton", tmp_path=tmp_path)
    assert "plan for mask mistral" in res.stdout


def test_compile_and_test_without_hypothesis(tmp_path):
    out = tmp_path / "kernel.py"
    without_hypothesis("compile", EXAMPLES / "mistral.mask", "-o", out, tmp_path=tmp_path)
    assert "@triton.jit" in out.read_text()
    res = without_hypothesis("test", EXAMPLES / "mistral.mask", "--q-len", 16, "--heads", 1,
                             tmp_path=tmp_path)
    assert "0 failed" in res.stdout


def test_compile_for_a_gpu_arch_without_hypothesis(tmp_path):
    # Triton's real compiler (TRITON_INTERPRET unset) down to sm_90, with no GPU here; the
    # launches it compiles are recorded with runtime inputs from maskc.testing
    res = without_hypothesis("compile", EXAMPLES / "mistral.mask", "--arch", "sm_90",
                             interpret=False, tmp_path=tmp_path)
    kernels = {line.split()[0] for line in res.stdout.splitlines()[1:] if line.strip()}
    assert {"fwd_mistral", "bwd_dq_mistral", "bwd_dkdv_mistral"} <= kernels, res.stdout
