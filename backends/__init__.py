"""maskc's backends, one module per target: ``reference`` (NumPy, the specification)."""

# NOTE: this folder is installed as ``maskc.backends`` (pyproject's package-dir). With the
# checkout's root on sys.path (``python -m pytest`` puts the working directory there) it would
# also import as a top-level ``backends``: a second copy of every backend module, whose classes
# are not maskc's (a ``backends.triton.KernelConfig`` is no ``maskc.backends.triton`` one).
if __name__ != "maskc.backends":
    raise ImportError(f"this folder is the package maskc.backends; import it by that name, not "
                      f"as {__name__!r}")
