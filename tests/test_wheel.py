"""The built wheel installs and works outside the checkout.

Builds the wheel from a copy of the project's sources (so the checkout gets no build/
folder and concurrent runs do not race), checks its contents, installs it with
``--no-deps`` into a fresh venv that sees the running interpreter's numpy/lark/networkx
(its site-packages, through a ``.pth`` file; no network needed), and runs ``import maskc``
and the ``maskc`` console script from a directory outside the checkout with a clean
environment.
Marked ``slow`` but runs by default (pytest's addopts do not deselect it).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

import maskc

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LONGFORMER = EXAMPLES / "longformer.mask"

pytestmark = pytest.mark.slow


def clean_env(**extra) -> dict[str, str]:
    """The environment without anything that could put the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA", "PIP_", "MASKC_"))
           and k not in ("__PYVENV_LAUNCHER__",)}
    env.update(PYTHONNOUSERSITE="1", PYTHONIOENCODING="utf-8", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INDEX="1", PIP_NO_INPUT="1")
    env.update(extra)
    return env


def sh(args, cwd, timeout=180, env=None, check=True):
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env or clean_env(),
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {res.returncode}\n"
                             f"--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}")
    return res


def copy_sources(dest: pathlib.Path) -> None:
    """The files the wheel is built from (pyproject maps backends/ and grammar/ into maskc)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("maskc", "backends", "grammar"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)


def build_wheel(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """``python -m build --wheel --no-isolation``, or ``pip wheel`` if ``build`` is unusable."""
    env = clean_env()
    res = None
    if importlib.util.find_spec("build") is not None:
        res = sh([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out,
                  src], cwd=src, env=env, check=False)
    if res is None or res.returncode != 0:
        res = sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--wheel-dir", out, src], cwd=src, env=env, check=False)
    wheels = sorted(out.glob("maskc-*.whl"))
    assert res.returncode == 0 and len(wheels) == 1, (res.stdout[-4000:], res.stderr[-4000:])
    return wheels[0]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    copy_sources(src)
    return build_wheel(src, base / "dist")


def running_site_dirs() -> list[str]:
    """The site-packages folders this interpreter imports from (a venv's, the base's, the user's)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return dirs


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
    """A fresh venv, seeing the running interpreter's packages, with only the wheel installed."""
    path = tmp_path_factory.mktemp("venv") / "env"
    sh([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    # NOTE: not --system-site-packages: from inside a venv that shows the *base* interpreter's
    # packages (where lark etc. may be missing), not the ones this suite runs with. A .pth in
    # the venv's own site-packages adds this interpreter's site folders after it (their .pth
    # files processed too, as --system-site-packages would), so the wheel comes first.
    purelib = sh([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                 cwd=path.parent).stdout.strip()
    pathlib.Path(purelib, "_maskc_test_outer_site.pth").write_text(
        f"import site; list(map(site.addsitedir, {running_site_dirs()!r}))\n")
    # This interpreter's pip (visible through that .pth) installs into the venv; with
    # --ignore-installed it neither skips the wheel because of a maskc already installed
    # system-wide (e.g. an editable checkout) nor tries to uninstall that one.
    sh([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
        "--no-compile", wheel], cwd=path.parent)
    return path


def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next((zf.read(n).decode() for n in names
                             if n.endswith(".dist-info/entry_points.txt")), "")
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert "maskc/grammar/mask.lark" in names
    assert "maskc/backends/reference.py" in names
    assert "maskc/__init__.py" in names and "maskc/cli.py" in names
    # every module of the checkout is in the wheel, under the name the wheel maps it to
    want = {f"maskc/{p.relative_to(ROOT / 'maskc').as_posix()}"
            for p in (ROOT / "maskc").rglob("*.py") if "__pycache__" not in p.parts}
    want |= {f"maskc/backends/{p.relative_to(ROOT / 'backends').as_posix()}"
             for p in (ROOT / "backends").rglob("*.py") if "__pycache__" not in p.parts}
    want |= {f"maskc/grammar/{p.name}" for p in (ROOT / "grammar").glob("*.lark")}
    missing = sorted(want - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    # nothing from the checkout layout leaks in as a top-level package
    assert not any(n.startswith(("backends/", "grammar/", "tests/")) for n in names)
    lines = [line.strip() for line in entry_points.splitlines()]
    assert "[console_scripts]" in lines
    assert any(line.replace(" ", "") == "maskc=maskc.cli:main" for line in lines), entry_points
    assert "Name: maskc" in metadata and "Requires-Dist: lark" in metadata


def test_import_from_venv(venv, tmp_path):
    expected = int(maskc.compile(LONGFORMER, name="longformer", w=4).dense(16).sum())
    code = ("import maskc, maskc.backends.reference as r, maskc.frontend.parser as p\n"
            "print(maskc.__file__)\n"
            "print(r.__file__)\n"
            "print(p.grammar_path())\n"
            f"m = maskc.compile({str(LONGFORMER)!r}, name='longformer', w=4)\n"
            "print(m.dense(16).sum())\n")
    res = sh([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 4, res.stdout
    venv_real = venv.resolve()
    for line in lines[:3]:
        path = pathlib.Path(line).resolve()
        assert venv_real in path.parents, f"{line} is not inside the venv {venv_real}"
        assert ROOT not in path.parents, f"{line} comes from the checkout"
    assert int(lines[3]) == expected
    # w = 4, g = [0]: a band of radius 4 plus row 0 and column 0, at 16 tokens
    band = sum(min(15, i + 4) - max(0, i - 4) + 1 for i in range(16))
    assert expected == band + 2 * (16 - 5)


def test_console_script_show(venv, tmp_path):
    exe = venv / "bin" / "maskc"
    assert exe.exists()
    res = sh([exe, "show", LONGFORMER, "--q-len", 256], cwd=tmp_path)
    out = res.stdout
    assert out.startswith("mask longformer: ")
    assert "q_len 256, kv_len 256, heads 1" in out
    assert "density" in out and "tiles of 4 x 4:" in out and "plan for mask longformer" in out
    assert any(ch in out for ch in ("█", "▒"))
    assert res.stderr == ""


DRIVER = """
import contextlib, io, sys
from maskc.cli import main
for argv in ({show!r}, {check!r}):
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
for name, mod in sorted(sys.modules.items()):
    if name == "maskc" or name.startswith("maskc."):
        print(name, getattr(mod, "__file__", None))
"""


def test_every_module_comes_from_the_wheel(venv, tmp_path):
    """`show` and `check` import only modules the wheel installed.

    The editable install of maskc this suite runs from (a dev checkout or CI) is visible
    through the venv's .pth, and its import hook would quietly supply any subpackage the
    wheel forgot; this catches that.
    """
    files = [str(f) for f in sorted(EXAMPLES.glob("*.mask"))]
    code = DRIVER.format(show=["show", str(LONGFORMER), "--q-len", "256"],
                         check=["check", *files])
    res = sh([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    venv_real = venv.resolve()
    loaded = [line.split(" ", 1) for line in res.stdout.strip().splitlines()]
    assert any(name == "maskc.cli" for name, _ in loaded)
    outside = [(name, f) for name, f in loaded
               if f == "None" or venv_real not in pathlib.Path(f).resolve().parents]
    assert not outside, f"maskc modules loaded from outside the installed wheel: {outside}"


def test_console_script_check(venv, tmp_path):
    exe = venv / "bin" / "maskc"
    files = sorted(EXAMPLES.glob("*.mask"))
    res = sh([exe, "check", *files], cwd=tmp_path)
    assert res.stdout.count(": ok, ") == len(files)
    for f in files:
        assert f"{f}: ok, " in res.stdout
    bad = tmp_path / "bad.mask"
    bad.write_text("mask a = causal & window(-1)\n")
    res = sh([exe, "check", bad], cwd=tmp_path, check=False)
    assert res.returncode == 1
    assert f"{bad}:1:26: error: " in res.stderr and "Traceback" not in res.stderr
