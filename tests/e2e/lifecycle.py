"""A number's lifecycle for the end-to-end suite, through the real pipeline only:
ProvisioningClient -> Redis -> a real Celery worker -> livekit-server, for provisioning,
credential rotation (an update job) and release (a release job)."""

from __future__ import annotations

from producers import ProvisioningClient
from worker.records import Job, JobResult, JobState

ORG = "org_e2e"
AGENT = "e2e-agent"
USERNAME = "e2e_user"
PASSWORD = "e2e-Pw-4d1c9b"
# Never dialled: the inbound cases still need a valid outbound address.
UNUSED_GATEWAY = "127.0.0.1:9"
JOB_TIMEOUT = 60.0


def _succeeded(client: ProvisioningClient, job_id: str) -> Job:
    job = client.wait(job_id, timeout=JOB_TIMEOUT)
    assert job.state is JobState.SUCCEEDED, job.error
    return job


def provision(client: ProvisioningClient, *, number: str, room_prefix: str,
              gateway: str = UNUSED_GATEWAY, username: str = USERNAME,
              password: str = PASSWORD) -> JobResult:
    """Provision ``number`` (UDP to ``gateway``, agent AGENT dispatched into rooms named
    ``room_prefix``...) and wait for the worker; the created ids."""
    job = _succeeded(client, client.submit(org_id=ORG, request={
        "name": f"E2E {number}",
        "number": number,
        "outboundPstn": gateway,
        "transport": "udp",
        "authUserName": username,
        "authPassword": password,
        "agentName": AGENT,
        "roomPrefix": room_prefix,
    }))
    assert job.result is not None
    return job.result


def rotate_password(client: ProvisioningClient, *, number: str, password: str) -> Job:
    """The update job that gives the number's outbound trunk a new digest password."""
    return _succeeded(client, client.update(org_id=ORG, number=number,
                                            changes={"authPassword": password}))


def release(client: ProvisioningClient, *, number: str) -> Job:
    """The release job: the number's dispatch rule, both trunks and its record go."""
    return _succeeded(client, client.release(org_id=ORG, number=number))
