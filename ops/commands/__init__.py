"""The `trunkline` sub-commands for the people on call; each module holds one typer app.

Shared conventions: tables for people, `--json` for scripts, exit code 1 when the operation
failed, 2 for bad input or settings, 3 when Redis or LiveKit cannot be reached. No command
prints a SIP password or its ciphertext.
"""
