"""Hypothesis profiles for the worker's unit tests.

The normal run keeps each test's own settings and Hypothesis's defaults. `make mutants` sets
TRUNKLINE_HYPOTHESIS_PROFILE=mutants: every mutant must then meet the same examples as the
clean run, or a mutant "killed" once could survive the next time (a flaky score).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("mutants", derandomize=True, database=None, deadline=None)
settings.load_profile(os.environ.get("TRUNKLINE_HYPOTHESIS_PROFILE", "default"))
