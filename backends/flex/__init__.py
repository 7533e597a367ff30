"""The FlexAttention backend: the IR as a ``mask_mod`` (:mod:`.mask_mod`), block masks from the
block tables and attention through ``flex_attention`` (:mod:`.block_mask`)."""

from maskc.backends.flex.mask_mod import *  # noqa: F401,F403
from maskc.backends.flex.mask_mod import _runs  # noqa: F401
from maskc.backends.flex.block_mask import *  # noqa: F401,F403
from maskc.backends.flex import block_mask as _bm, mask_mod as _mm

__all__ = _mm.__all__ + _bm.__all__
