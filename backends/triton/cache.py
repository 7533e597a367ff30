"""The file cache of generated modules: content-hashed files that Triton's ``@jit`` can read
(``$MASKC_CACHE_DIR`` or ``~/.cache/maskc``), imported once per process."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path

from maskc import ir
from maskc.errors import MaskError

__all__ = ["cache_dir", "write_source", "load_module", "load"]

_MODULES: dict[str, object] = {}
# NOTE: imports run under this lock so that two threads never execute one module twice (nor
# see a half-executed one in sys.modules); files are written outside it (atomic rename).
_IMPORT_LOCK = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("MASKC_CACHE_DIR") or Path.home() / ".cache" / "maskc")


def write_source(src: str, name: str) -> Path:
    """Write ``src`` to its content-hashed file (atomically: safe for concurrent writers)."""
    digest = hashlib.sha256(src.encode()).hexdigest()[:16]
    folder = cache_dir()
    path = folder / f"maskc_{name}_{digest}.py"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(src)
            os.replace(tmp, path)
    except OSError as err:
        raise MaskError(f"cannot write the generated kernel to {folder} ({err.strerror or err}); "
                        "set MASKC_CACHE_DIR to a writable directory") from None
    return path


def load_module(mdef: ir.MaskDef):
    """The imported generated module for ``mdef`` (imported once per process)."""
    from maskc.backends.triton.codegen import generate
    return load(generate(mdef)[0], mdef.name)


def load(src: str, name: str):
    """The module of ``src``: written to its file, imported once per process (thread-safe)."""
    path = write_source(src, name)
    key = str(path)
    module = _MODULES.get(key)
    if module is not None:
        return module
    with _IMPORT_LOCK:
        if key not in _MODULES:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            _MODULES[key] = module
    return _MODULES[key]


