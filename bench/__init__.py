"""Trunkline's benchmark: the whole pipeline against the same LiveKit calls made directly.

Run from the repository root::

    python -m bench --jobs 1000 --concurrency 4 --json bench-result.json

See bench/README.md for what each figure means and a recorded run.
"""
