"""The IR stage: the node types (:mod:`maskc.ir.nodes`, re-exported here), ``verify``,
``pretty``, the rewrite driver and the simplifier.

``from maskc import ir`` gives the nodes as ``ir.Window``, ``ir.And``, ...; the passes over
the IR live in the submodules (``maskc.ir.simplify``, ``maskc.ir.verify``, ...).
"""

from maskc.ir.nodes import *  # noqa: F401,F403
from maskc.ir.nodes import __all__  # noqa: F401
