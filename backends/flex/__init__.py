"""The FlexAttention backend: the IR as a ``mask_mod`` (:mod:`.mask_mod`), block masks from the
block tables and attention through ``flex_attention`` (:mod:`.block_mask`)."""

from maskc.backends.flex.mask_mod import *  # noqa: F401,F403
from maskc.backends.flex.mask_mod import _runs  # noqa: F401
from maskc.backends.flex.block_mask import *  # noqa: F401,F403
import importlib as _importlib

# NOTE: by module path: the star import above rebinds the name `block_mask` to the function.
_bm = _importlib.import_module("maskc.backends.flex.block_mask")
_mm = _importlib.import_module("maskc.backends.flex.mask_mod")

__all__ = _mm.__all__ + _bm.__all__
