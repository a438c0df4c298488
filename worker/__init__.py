"""Trunkline's worker: the job contract, store, LiveKit client and provisioning saga.

Importing this package has no side effects; `celery -A worker` loads `worker.celery`.
"""
