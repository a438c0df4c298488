"""The caller's media for the end-to-end calls: one RTP endpoint on 127.0.0.1, the port the
sipp caller offers in its SDP.

It plays a G.711 µ-law tone to the bridge (20 ms packets, payload type 0), sends RFC 2833
telephone-events (payload type 101) on request, and keeps everything the bridge sends to it:
packets counted per payload type, PCMU audio decoded so its level and strongest frequency can
be measured. Standard library and numpy only (audioop is deprecated).
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import numpy as np

PCMU: Final = 0
TELEPHONE_EVENT: Final = 101
RATE: Final = 8000
PACKET_SAMPLES: Final = 160  # 20 ms at 8 kHz
PACKET_SECONDS: Final = PACKET_SAMPLES / RATE
DTMF_EVENTS: Final = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
# An event lasts 200 ms (ten packets), then its end is sent three times (RFC 4733 2.5.1.4).
DTMF_PACKETS: Final = 10
DTMF_END_REPEATS: Final = 3
_BIAS: Final = 0x84
_CLIP: Final = 32635


def ulaw_encode(sample: int) -> int:
    """One 16-bit linear sample as a G.711 µ-law byte."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), _CLIP) + _BIAS
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode(byte: int) -> int:
    byte = ~byte & 0xFF
    exponent = (byte >> 4) & 0x07
    magnitude = (((byte & 0x0F) << 3) + _BIAS) << exponent
    magnitude -= _BIAS
    return -magnitude if byte & 0x80 else magnitude


ULAW_TABLE: Final = np.array([_ulaw_decode(b) for b in range(256)], dtype=np.int16)


def ulaw_decode(payload: bytes) -> np.ndarray[Any, np.dtype[np.int16]]:
    decoded: np.ndarray[Any, np.dtype[np.int16]] = ULAW_TABLE[np.frombuffer(payload,
                                                                            dtype=np.uint8)]
    return decoded


def level_and_peak(samples: np.ndarray[Any, np.dtype[np.int16]],
                   rate: int = RATE) -> tuple[float, float]:
    """RMS (0..1 of full scale) and the strongest frequency in Hz of ``samples``."""
    if len(samples) == 0:
        return 0.0, 0.0
    signal = samples.astype(np.float64) / 32768.0
    rms = float(np.sqrt(np.mean(signal * signal)))
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    spectrum[0] = 0.0
    return rms, float(np.argmax(spectrum)) * rate / len(signal)


def tone_payloads(frequency: float, level: float, packets: int) -> list[bytes]:
    """``packets`` consecutive 20 ms PCMU payloads of one continuous sine tone."""
    amplitude = level * 32767
    payloads = []
    for packet in range(packets):
        start = packet * PACKET_SAMPLES
        payloads.append(bytes(
            ulaw_encode(round(amplitude * math.sin(2 * math.pi * frequency * (start + i) / RATE)))
            for i in range(PACKET_SAMPLES)))
    return payloads


class RtpEndpoint:
    """The caller's RTP socket: sends a tone once it knows where to, receives all along."""

    def __init__(self, *, tone_hz: float = 700.0, tone_level: float = 0.3) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port: int = int(self._sock.getsockname()[1])
        # One second of tone, looped: 700 Hz fits 20 ms packets exactly (14 periods).
        self._tone = tone_payloads(tone_hz, tone_level, 50)
        self._remote: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()
        self._pcmu: list[tuple[float, np.ndarray[Any, np.dtype[np.int16]]]] = []
        self._sources: set[tuple[str, int]] = set()
        self._dtmf: queue.Queue[str] = queue.Queue()
        self.sent_audio = 0
        self.sent_events: list[str] = []
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._receiver = threading.Thread(target=self._receive, name="rtp-rx", daemon=True)
        self._sender = threading.Thread(target=self._send, name="rtp-tx", daemon=True)
        self._receiver.start()

    # -------------------------------------------------------------- control

    def start_sending(self, host: str, port: int) -> None:
        """Start the tone to the bridge's media address (from its SDP answer)."""
        self._remote = (host, port)
        self._sender.start()

    def start_sending_from_file(self, media_file: Path, *, timeout: float,
                                alive: Any = lambda: True) -> bool:
        """Wait for sipp to write the answer's media address ("HOST PORT") and start sending.
        False when it did not appear in time (the call was not answered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if media_file.exists():
                host, port = media_file.read_text().split()
                self.start_sending(host, int(port))
                return True
            if not alive():
                break
            time.sleep(0.05)
        return False

    def send_dtmf(self, digit: str) -> None:
        """Queue one RFC 2833 event; the sender pauses the tone while it plays."""
        if digit not in DTMF_EVENTS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._dtmf.put(digit)

    def close(self) -> None:
        self._stop.set()
        if self._sender.is_alive():
            self._sender.join(5)
        self._receiver.join(5)
        self._sock.close()

    # -------------------------------------------------------------- what it received

    def received(self, payload_type: int = PCMU) -> int:
        with self._lock:
            return self._counts[payload_type]

    def received_audio(self, seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
        """The PCMU audio of the last ``seconds`` received, decoded."""
        cutoff = time.monotonic() - seconds
        with self._lock:
            chunks = [chunk for at, chunk in self._pcmu if at >= cutoff]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)

    def sources(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._sources)

    # -------------------------------------------------------------- threads

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            payload_type = data[1] & 0x7F
            header = 12 + 4 * (data[0] & 0x0F)
            if data[0] & 0x10 and len(data) >= header + 4:  # header extension
                header += 4 + 4 * struct.unpack_from("!H", data, header + 2)[0]
            with self._lock:
                self._counts[payload_type] += 1
                self._sources.add((source[0], int(source[1])))
                if payload_type == PCMU:
                    self._pcmu.append((time.monotonic(), ulaw_decode(data[header:])))
                    if len(self._pcmu) > 3000:  # the last minute is plenty
                        del self._pcmu[:1000]

    def _packet(self, payload_type: int, seq: int, timestamp: int, payload: bytes,
                marker: bool = False) -> bytes:
        return struct.pack("!BBHII", 0x80, payload_type | (0x80 if marker else 0),
                           seq & 0xFFFF, timestamp & 0xFFFFFFFF, self._ssrc) + payload

    def _send(self) -> None:
        assert self._remote is not None
        seq, timestamp, index = 0, 0, 0
        next_at = time.monotonic()
        first = True

        def pace() -> None:
            nonlocal next_at
            next_at += PACKET_SECONDS
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # the machine stalled: do not burst to catch up
                next_at = time.monotonic()

        while not self._stop.is_set():
            with contextlib.suppress(queue.Empty):
                digit = self._dtmf.get_nowait()
                event = DTMF_EVENTS[digit]
                start = timestamp
                for n in range(DTMF_PACKETS + DTMF_END_REPEATS):
                    end = n >= DTMF_PACKETS
                    duration = PACKET_SAMPLES * min(n + 1, DTMF_PACKETS)
                    payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, duration)
                    self._sock.sendto(self._packet(TELEPHONE_EVENT, seq, start, payload,
                                                   marker=n == 0), self._remote)
                    seq += 1
                    if not end:
                        timestamp += PACKET_SAMPLES
                    pace()
                self.sent_events.append(digit)
                continue
            self._sock.sendto(self._packet(PCMU, seq, timestamp, self._tone[index],
                                           marker=first), self._remote)
            first = False
            self.sent_audio += 1
            seq += 1
            timestamp += PACKET_SAMPLES
            index = (index + 1) % len(self._tone)
            pace()
