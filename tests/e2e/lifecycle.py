"""A number's lifecycle for the end-to-end suite, through the public HTTP API only, as a
customer drives it: the seed endpoint creates, PATCH changes, DELETE releases. Behind the API:
Redis, a real Celery worker and livekit-server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import httpx

ORG: Final = "org_e2e"
AGENT: Final = "e2e-agent"
OTHER_AGENT: Final = "e2e-other-agent"
USERNAME: Final = "e2e_user"
PASSWORD: Final = "e2e-Pw-4d1c9b"
# Never dialled: the inbound cases still need a valid outbound address.
UNUSED_GATEWAY: Final = "127.0.0.1:9"
CREATE: Final = "/api/sio/createSipTrunkDispatch"
NUMBERS: Final = "/api/phone-numbers"


def number_path(number: str) -> str:
    return f"{NUMBERS}/{number.replace('+', '%2B')}"


@dataclass
class Customer:
    """An organisation's API key on a running `trunkline api`."""

    http: httpx.Client
    headers: dict[str, str]
    answers: list[httpx.Response] = field(default_factory=list)

    def _expect_success(self, answer: httpx.Response, what: str) -> dict[str, Any]:
        self.answers.append(answer)
        assert answer.status_code == 200, f"{what}: HTTP {answer.status_code} {answer.text}"
        body: dict[str, Any] = answer.json()
        assert body["status"] == "success", body
        return body

    def provision(self, *, number: str, room_prefix: str, agent: str = AGENT,
                  gateway: str = UNUSED_GATEWAY, transport: str = "udp",
                  username: str = USERNAME, password: str = PASSWORD) -> dict[str, Any]:
        """The seed request for ``number``; returns its GET view (the three LiveKit ids)."""
        body = self._expect_success(self.http.post(CREATE, headers=self.headers, json={
            "name": f"E2E {number}",
            "number": number,
            "outboundPstn": gateway,
            "transport": transport,
            "authUserName": username,
            "authPassword": password,
            "agentName": agent,
            "roomPrefix": room_prefix,
        }), f"create {number}")
        view = self.view(number)
        assert view["inboundTrunkId"] == body["data"], (view, body)
        return view

    def view(self, number: str) -> dict[str, Any]:
        answer = self.http.get(number_path(number), headers=self.headers)
        data: dict[str, Any] = self._expect_success(answer, f"get {number}")["data"]
        return data

    def patch(self, number: str, **changes: str) -> dict[str, Any]:
        """PATCH ``number`` and wait for its update job (the API waits); the new view."""
        data: dict[str, Any] = self._expect_success(
            self.http.patch(number_path(number), headers=self.headers, json=changes),
            f"patch {number} {sorted(changes)}")["data"]
        return data

    def release(self, number: str) -> dict[str, Any]:
        data: dict[str, Any] = self._expect_success(
            self.http.delete(number_path(number), headers=self.headers),
            f"delete {number}")["data"]
        assert data["released"] is True, data
        return data
