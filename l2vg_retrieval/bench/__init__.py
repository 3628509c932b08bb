"""Benchmark harnesses behind ``l2vg bench``: BRIGHT-style reasoning retrieval, an
MTEB-style suite, speed, and the report that turns their JSON results into docs.

Nothing here is imported by ``import l2vg_retrieval``: the harnesses pull in optional
packages (rank-bm25, mteb, matplotlib) only when they run.
"""
