"""A bounded run of the fuzz harness (tests/fuzz.py) as part of the suite: every kind, a fixed seed.

The long run is by hand: ``python -m tests.fuzz --cases 100000 --jobs 2`` (bench/README.md).
Here a few hundred cases per kind (fewer for the Triton and size kinds) run in two sandboxed
worker processes, about a minute on 2 cores, and every failure class must be zero.
"""

import fuzz

# NOTE: cases per kind; the backends kind runs three backends (Triton's interpreter among
# them) per case and the size probes evaluate masks of up to 2**28 elements, so both are few.
COUNTS = {"spec": 600, "mutate": 300, "api": 200, "cli": 80, "backends": 25, "blocks": 200,
          "sizes": 12}
SEED = 11


def test_split_covers_every_kind_and_the_total():
    counts = fuzz.split_cases(100_000)
    assert set(counts) == set(fuzz.KINDS) and sum(counts.values()) == 100_000
    assert min(counts.values()) >= 1


def test_cases_are_deterministic():
    for kind in fuzz.KINDS:
        assert fuzz.make_case(kind, SEED, 3)[0] == fuzz.make_case(kind, SEED, 3)[0]


def test_fuzz_finds_no_failures():
    summary = fuzz.run(COUNTS, jobs=2, seed=SEED)
    print(summary.table())
    assert sum(r["cases"] for r in summary.rows.values()) == sum(COUNTS.values())
    assert summary.n_failures == 0, summary.report()
