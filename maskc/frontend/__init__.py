"""The front end: source text to checked IR.

``parser`` (the Lark grammar, syntax tree in :mod:`~maskc.frontend.syntax`) -> ``check``
(names, types, parameters, macros; :mod:`~maskc.frontend.primitives` and
:mod:`~maskc.frontend.predicates` lower calls and ``where`` to IR; values in
:mod:`~maskc.frontend.values`). :func:`check_all` (:mod:`~maskc.frontend.report`) lists every
error of a file, for ``maskc check``.
"""


def __getattr__(name: str):
    # NOTE: lazy, so importing the parser alone does not load the checker and the IR passes
    if name == "check_all":
        from maskc.frontend.report import check_all
        return check_all
    raise AttributeError(f"module 'maskc.frontend' has no attribute {name!r}")
