"""Runs a measured function in a new Python process, so every run starts from the same state.

In one process, runs after the first inherit the memory, thread pools and compiled
functions the earlier ones left behind: a cached frozen phase extracted its features in
10.2 s as a process's first run and in 11.9-12.0 s after other runs, which favoured
whichever setting went first (benchmarks/frozen_phase_cache.py, 2026-11-24).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing


def run(function, *args):
    """function(*args) in a freshly spawned process, its (picklable) result returned.

    function must be importable by name (a module-level function of a benchmark script
    works: spawn imports the script again as __mp_main__ with the parent's sys.path and
    working directory). An exception in the child is raised here.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(function, *args).result()
