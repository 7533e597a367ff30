"""Block analysis: what a mask keeps, tile by tile, without evaluating every pair.

``blockmap`` (tile states, supports and classifiers per primitive; ``intervals`` and
``gridboxes`` for arithmetic and grid masks; ``rng`` for ``random()``) and ``blocktable``
(the per-size tables every backend lowers from); ``sizes`` checks lengths, heads and
working memory before anything is allocated.
"""
