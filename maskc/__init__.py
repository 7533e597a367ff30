"""maskc: a compiler for attention-mask patterns.

``maskc.compile(source, name=None, **params)`` parses a `.mask` spec and returns a
:class:`Mask`; ``Mask.dense()`` gives the exact boolean mask and ``Mask.attention()`` runs
attention with it. See README.md and docs/language.md for the language.
"""

from maskc.api import Mask, compile, set_dense_limit, dense_limit
from maskc.analysis.sizes import document_ids
from maskc.estimators import alibi_slopes, topk_blocks, topp_blocks, vertical_slash
from maskc.passes.tiles import KernelConfig, Tiles
from maskc.errors import (MaskError, MaskInputError, MaskNameError, MaskParamError,
                     MaskSizeError, MaskSyntaxError, MaskTypeError, MaskValueError)

__all__ = ["compile", "Mask", "MaskError", "MaskSyntaxError", "MaskNameError", "MaskTypeError",
           "MaskValueError", "MaskParamError", "MaskInputError", "MaskSizeError",
           "set_dense_limit", "dense_limit", "document_ids", "KernelConfig", "Tiles",
           "topk_blocks", "topp_blocks", "vertical_slash", "alibi_slopes"]
__version__ = "0.1.0"
