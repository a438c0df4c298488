"""Redis keys the benchmark itself writes in its database (besides Trunkline's own)."""

from __future__ import annotations

# Marks the database as the benchmark's: a database with other keys is never flushed.
MARKER_KEY = "trunkline-bench:owner"
# Held (with a short expiry, renewed) while a run uses the database: one run at a time.
LIVE_KEY = "trunkline-bench:live"
LIVE_SECONDS = 20
# bench.probe writes each job's milliseconds inside LiveKit calls here (job id -> ms).
PROBE_KEY = "trunkline-bench:livekit-ms"
# bench.noop's no-op task (the Celery floor phase), and the stream it appends each task's id
# to (one XADD, like a job's one terminal event).
NOOP_TASK = "trunkline.bench.noop"
NOOP_STREAM = "trunkline-bench:noop"
