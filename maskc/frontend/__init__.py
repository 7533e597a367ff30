"""The front end: source text to checked IR.

``parser`` (the Lark grammar, syntax tree in :mod:`~maskc.frontend.syntax`) -> ``check``
(names, types, parameters, macros; :mod:`~maskc.frontend.primitives` and
:mod:`~maskc.frontend.predicates` lower calls and ``where`` to IR; values in
:mod:`~maskc.frontend.values`).
"""
