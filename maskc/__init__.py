"""maskc: a compiler for attention-mask patterns.

``maskc.compile(source, name=None, **params)`` parses a `.mask` spec and returns a
:class:`Mask`; ``Mask.dense()`` gives the exact boolean mask and ``Mask.attention()`` runs
attention with it. See README.md and LANGUAGE.md for the language.
"""

from pathlib import Path as _Path

# NOTE: the wheel installs backends/ inside this package (maskc.backends); in a source
# checkout it sits beside maskc/, so make it importable under the same name.
if not (_Path(__file__).parent / "backends").is_dir():
    __path__.append(str(_Path(__file__).resolve().parent.parent))  # noqa: F821

from .api import Mask, compile, set_dense_limit, dense_limit  # noqa: E402
from .sizes import document_ids  # noqa: E402
from .errors import (MaskError, MaskInputError, MaskNameError, MaskParamError,  # noqa: E402
                     MaskSizeError, MaskSyntaxError, MaskTypeError, MaskValueError)

__all__ = ["compile", "Mask", "MaskError", "MaskSyntaxError", "MaskNameError", "MaskTypeError",
           "MaskValueError", "MaskParamError", "MaskInputError", "MaskSizeError",
           "set_dense_limit", "dense_limit", "document_ids"]
__version__ = "0.1.0"
