"""Operator tooling: the `trunkline` command and the local stack script (ops/stack.sh)."""
