"""A small voice agent on LiveKit's agent framework (livekit-agents), for the end-to-end calls.

No speech or language model: dispatched into a call's room under its agent name, it joins,
publishes a steady 440 Hz tone as its microphone, listens to the caller's audio and SIP DTMF,
and writes what it observed, one JSON object per line, to the report file. Pressing ``#`` on
the phone makes it hang up (it removes the SIP participant from the room, as an agent ends a
call). It is how a person can call a provisioned number locally, too.

Run it (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET from ``ops/stack.sh env``)::

    TRUNKLINE_AGENT_NAME=e2e-agent TRUNKLINE_AGENT_REPORT=/tmp/agent.jsonl \\
        python -m livekit.agents start tests/e2e/agent.py

Report lines (every one has ``event``, ``agent``, ``room`` and ``t``, a Unix time):

* ``job`` - the framework handed this worker a job for ``room``;
* ``joined`` - connected to the room as ``identity``;
* ``published`` - its tone track ``track`` is published;
* ``participant`` / ``left`` - a remote participant joined or left (``identity``, ``kind``,
  ``attributes``);
* ``audio`` - one second of a subscribed audio track from ``identity``: ``rms`` (0..1 of full
  scale) and ``peak_hz``, the strongest frequency;
* ``dtmf`` - a SIP DTMF ``digit`` (and ``code``) from ``identity``;
* ``hangup`` - it removed ``identity`` from the room after ``#``;
* ``ended`` - the job is over.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Final

import numpy as np
from livekit import api, rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobExecutorType

TONE_HZ: Final = 440.0
TONE_LEVEL: Final = 0.3  # of full scale: clearly audible, far from clipping
SAMPLE_RATE: Final = 48_000
FRAME_MS: Final = 20
ANALYSIS_RATE: Final = 16_000
HANGUP_DIGIT: Final = "#"

AGENT_NAME: Final = os.environ.get("TRUNKLINE_AGENT_NAME", "trunkline-test-agent")
REPORT_PATH: Final = Path(os.environ.get("TRUNKLINE_AGENT_REPORT", "agent-report.jsonl"))
_report_lock = threading.Lock()


def report(event: str, room: str, **fields: Any) -> None:
    """Append one observation to the report file (jobs may run in threads at once)."""
    line = json.dumps({"event": event, "agent": AGENT_NAME, "room": room, "t": time.time(),
                       **fields}, sort_keys=True)
    with _report_lock, REPORT_PATH.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


def analyse(samples: np.ndarray[Any, np.dtype[np.int16]]) -> tuple[float, float]:
    """RMS (0..1 of full scale) and the strongest frequency of one second of 16 kHz audio."""
    signal = samples.astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(signal * signal)))
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    spectrum[0] = 0.0
    peak_hz = float(np.argmax(spectrum)) * ANALYSIS_RATE / len(signal)
    return rms, peak_hz


async def play_tone(source: rtc.AudioSource) -> None:
    """Feed the tone forever; capture_frame paces it in real time (its queue fills)."""
    per_frame = SAMPLE_RATE * FRAME_MS // 1000
    phase = 0
    while True:
        t = (np.arange(per_frame) + phase) / SAMPLE_RATE
        wave = (TONE_LEVEL * 32767 * np.sin(2 * math.pi * TONE_HZ * t)).astype(np.int16)
        phase += per_frame
        frame = rtc.AudioFrame(wave.tobytes(), SAMPLE_RATE, 1, per_frame)
        await source.capture_frame(frame)


async def listen(track: rtc.Track, room: str, identity: str) -> None:
    """Report each second of ``identity``'s audio as its level and strongest frequency."""
    stream = rtc.AudioStream(track, sample_rate=ANALYSIS_RATE, num_channels=1)
    pending: list[np.ndarray[Any, np.dtype[np.int16]]] = []
    have = 0
    try:
        async for event in stream:
            chunk = np.frombuffer(bytes(event.frame.data), dtype=np.int16)
            pending.append(chunk)
            have += len(chunk)
            if have >= ANALYSIS_RATE:
                second = np.concatenate(pending)[:ANALYSIS_RATE]
                pending, have = [], 0
                rms, peak_hz = analyse(second)
                report("audio", room, identity=identity, rms=round(rms, 4),
                       peak_hz=round(peak_hz, 1))
    finally:
        await stream.aclose()


def describe(participant: rtc.RemoteParticipant) -> dict[str, Any]:
    return {"identity": participant.identity,
            "kind": rtc.ParticipantKind.Name(participant.kind),
            "attributes": dict(participant.attributes)}


server = AgentServer(
    # Jobs run as threads of the worker: one process per agent is enough for tests.
    job_executor_type=JobExecutorType.THREAD,
    num_idle_processes=1,
    # A loaded test machine must not make the worker refuse its calls.
    load_fnc=lambda: 0.0,
    load_threshold=1.0,
    # Its health server: loopback only, any free port (two agents run side by side).
    host="127.0.0.1",
    port=0,
)


@server.rtc_session(agent_name=AGENT_NAME)
async def entrypoint(ctx: JobContext) -> None:
    room_name = ctx.room.name
    report("job", room_name, job_id=ctx.job.id)
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def hang_up(identity: str) -> None:
        await ctx.api.room.remove_participant(
            api.RoomParticipantIdentity(room=room_name, identity=identity))
        report("hangup", room_name, identity=identity)

    @ctx.room.on("participant_connected")
    def _joined(participant: rtc.RemoteParticipant) -> None:
        report("participant", room_name, **describe(participant))

    @ctx.room.on("participant_disconnected")
    def _left(participant: rtc.RemoteParticipant) -> None:
        report("left", room_name, **describe(participant))
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            done.set()

    @ctx.room.on("track_subscribed")
    def _subscribed(track: rtc.Track, _publication: rtc.RemoteTrackPublication,
                    participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            spawn(listen(track, room_name, participant.identity))

    @ctx.room.on("sip_dtmf_received")
    def _dtmf(dtmf: rtc.SipDTMF) -> None:
        identity = dtmf.participant.identity if dtmf.participant else ""
        report("dtmf", room_name, digit=dtmf.digit, code=dtmf.code, identity=identity)
        if dtmf.digit == HANGUP_DIGIT and identity:
            spawn(hang_up(identity))

    @ctx.room.on("disconnected")
    def _disconnected(*_: Any) -> None:
        done.set()

    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    report("joined", room_name, identity=ctx.room.local_participant.identity)
    for participant in ctx.room.remote_participants.values():
        report("participant", room_name, **describe(participant))

    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-tone", source)
    publication = await ctx.room.local_participant.publish_track(
        track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
    report("published", room_name, track=publication.sid)
    spawn(play_tone(source))

    try:
        await done.wait()
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        report("ended", room_name)
        ctx.shutdown("the caller left")
