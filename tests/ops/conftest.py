"""Shared wiring for the ops unit tests: fakeredis, the fake LiveKit, the CLI runner.

No sockets: the job store is fakeredis, LiveKit is `tests.worker.fake_livekit`, and Celery
messages land in fakeredis' copy of the queue (`World.sent` reads them back).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
from typer.testing import CliRunner, Result

import ops.context
from ops.cli import app
from ops.context import OpsContext
from producers.client import ProvisioningClient
from tests.worker.fake_livekit import NUMBER, ORG, Harness
from worker.app import create_app
from worker.livekit import InboundTrunk
from worker.records import Job, JobState


class World(Harness):
    """A Harness that also runs jobs to the end and drives the `trunkline` command."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        monkeypatch.setattr(ops.context, "make_context", self.context)
        self.runner_ = CliRunner()
        self._app = create_app(self.settings)

    @property
    def sent(self) -> list[str]:
        """The job ids of the provision messages in the broker queue, oldest first."""
        raw = cast(list[bytes], self.redis.lrange(self.settings.queue, 0, -1))
        return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in raw[::-1]]

    def context(self) -> OpsContext:
        return OpsContext(self.settings, redis_conn=self.redis, livekit=self.livekit,
                          client_factory=self.client)

    def client(self, _ctx: OpsContext | None = None) -> ProvisioningClient:
        return ProvisioningClient(self.store, self.vault, self._app, self.settings)

    def run(self, job: Job | str) -> Job:
        """Run a stored job through the real runner until it is succeeded or failed."""
        job_id = job if isinstance(job, str) else job.job_id
        runner = self.runner()
        for _ in range(20):
            runner.run(job_id)
            current = self.store.get(job_id)
            assert current is not None
            if current.state.terminal:
                return current
        raise AssertionError(f"job {job_id} did not finish")

    def provision(self, number: str = NUMBER, org_id: str = ORG, **request: Any) -> Job:
        job = self.run(self.submit(number=number, org_id=org_id, **request))
        assert job.state is JobState.SUCCEEDED, job.error
        return job

    def dead_letter(self, number: str, org_id: str = ORG, **request: Any) -> Job:
        """A job that fails with number_conflict: a foreign trunk holds its number."""
        self.fake.seed_inbound(name="foreign", numbers=[number])
        job = self.run(self.submit(number=number, org_id=org_id, **request))
        assert job.state is JobState.FAILED and job.error is not None
        assert job.error.code == "number_conflict"
        return job

    def foreign_trunk_of(self, number: str) -> str:
        for trunk_id, trunk in self.fake.inbound.items():
            if trunk.get("name") == "foreign" and number in trunk.get("numbers", []):
                return trunk_id
        raise AssertionError(f"no foreign trunk holds {number}")

    def cli(self, *args: str, input: str | None = None) -> Result:  # click's name
        return self.runner_.invoke(app, list(args), input=input, env={"COLUMNS": "250"})

    def cli_json(self, *args: str) -> Any:
        result = self.cli(*args, "--json")
        assert result.exit_code in (0, 1), result.output
        return json.loads(result.stdout)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = World(monkeypatch)
    yield made
    made.close()


def foreign_inbound(number: str) -> InboundTrunk:
    return InboundTrunk(name="foreign", numbers=[number])
