"""The Triton backend: generated FlashAttention-2-style kernels (forward and backward).

:mod:`.codegen` writes the module of kernels for a mask from :mod:`.template` and
:mod:`.render`; :mod:`.cache` stores it in a content-hashed file; :mod:`.launch` runs a
plan's kernels with torch autograd; :mod:`.aot` compiles them for a GPU without one.
"""

from maskc.backends.triton.cache import _MODULES, cache_dir, load_module, write_source  # noqa: F401
from maskc.backends.triton.codegen import generate  # noqa: F401
from maskc.backends.triton.launch import *  # noqa: F401,F403
from maskc.backends.triton.launch import _FITTED  # noqa: F401
