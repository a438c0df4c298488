"""/ops in headless Chromium against the real stack: a real `trunkline api` (uvicorn), Redis,
a real worker and livekit-server. An operator logs in with an operator key (an organisation
key is refused), looks at each view (a screenshot of each goes to the test output folder),
and replays a dead letter with the page's button: the job runs again and ends in one event."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producers import ProvisioningClient
from producers.keys import ApiKeys
from tests.integration.apiserver import ApiServer, start_api
from tests.integration.conftest import (
    CANARY_PASSWORD,
    REPO,
    Stack,
    WorkerFactory,
    stream_events,
    wait_for,
)
from tests.support.browser import Browser, browser_fixture  # noqa: F401 - `browser`
from worker.livekit import InboundTrunk, LiveKitSIP
from worker.records import Job, JobState
from worker.store import RESULTS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

ORG = "org_ops_page"
HELD = "+15551234567"  # routed by someone else's trunk until the test removes it
FREE = "+15557654321"
TIMEOUT = 60


def request_for(number: str) -> dict[str, Any]:
    return {"name": f"Office {number[-4:]}", "number": number, "outboundPstn": "sip.gateway.com",
            "authUserName": "sip_user", "authPassword": CANARY_PASSWORD}


@pytest.fixture
def api(stack: Stack, tmp_path: Path) -> Iterator[ApiServer]:
    server = start_api(stack, tmp_path / "api.log")
    yield server
    server.stop()


def trunkline(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args],
                          cwd=REPO, env=stack.env(), capture_output=True, text=True,
                          check=False, timeout=120)


def operator_key(stack: Stack) -> dict[str, str]:
    """`trunkline keys create --operator --json`, as the README tells an operator."""
    made = trunkline(stack, "keys", "create", "--operator", "--name", "on-call", "--json")
    assert made.returncode == 0, made.stderr
    key: dict[str, str] = json.loads(made.stdout)
    assert key["role"] == "operator"
    return key


def log_in(browser: Browser, url: str, key_id: str, secret: str) -> None:
    browser.open(f"{url}/ops/login")
    browser.find("#key_id").send_keys(key_id)
    browser.find("#secret").send_keys(secret)
    browser.find("#login").click()


def job_events(db: redis.Redis, job_id: str, run: int) -> list[dict[str, str]]:
    return [event for event in stream_events(db, RESULTS_STREAM, job_id)
            if json.loads(event["payload"])["run"] == run]


def test_operator_views_and_a_replay_through_the_page(
    api: ApiServer, browser: Browser, stack: Stack, worker_factory: WorkerFactory,
    client: ProvisioningClient, livekit: LiveKitSIP, redis_db: redis.Redis,
) -> None:
    foreign = livekit.create_inbound_trunk(InboundTrunk(name="someone else", numbers=[HELD]))
    worker_factory()
    provisioned = client.wait(client.submit(org_id=ORG, request=request_for(FREE)), TIMEOUT)
    failed = client.wait(client.submit(org_id=ORG, request=request_for(HELD)), TIMEOUT)
    assert provisioned.state is JobState.SUCCEEDED and provisioned.result is not None
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error.code == "number_conflict" and failed.dead_lettered
    operator = operator_key(stack)
    org_key = ApiKeys(redis_db).create(ORG)
    seen: list[str] = []

    def shot(name: str) -> None:
        seen.append(browser.source())
        browser.screenshot(name)

    # Nothing is shown before a login; an organisation's key is refused.
    browser.open(f"{api.url}/ops/jobs")
    browser.wait_for(lambda d: d.current_url.endswith("/ops/login"), "redirect to the login")
    shot("ops-login")
    log_in(browser, api.url, org_key.api_key, org_key.api_secret)
    browser.wait_for(lambda d: "cannot open this page" in browser.text(), "the refusal")
    assert browser.driver.current_url.endswith("/ops/login")
    assert browser.cookie("trunkline_ops_session") is None
    shot("ops-login-refuses-an-organisation-key")

    # Dead letters: the failed job with its reason and last error, and a replay button.
    log_in(browser, api.url, operator["api_key"], operator["api_secret"])
    browser.wait_for(lambda d: d.current_url.endswith("/ops/dead-letters"), "the dead letters")
    session = browser.cookie("trunkline_ops_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
    row = browser.find("#dead-letters tbody tr").text
    assert failed.job_id in row and "number_conflict" in row
    assert foreign.sip_trunk_id in row  # the last error names the trunk holding the number
    assert browser.find_all(f'button.replay[value="{failed.job_id}"]')
    shot("ops-dead-letters")

    # Recent jobs, then the provisioned job's timeline.
    browser.find('nav a[href="/ops/jobs"]').click()
    browser.wait_for(lambda d: provisioned.job_id in browser.text(), "the jobs list")
    assert failed.job_id in browser.text()
    shot("ops-jobs")
    browser.find(f'a[href="/ops/jobs/{provisioned.job_id}"]').click()
    browser.wait_for(lambda d: d.current_url.endswith(provisioned.job_id), "the job's page")
    steps = [row.text for row in browser.find_all("#steps tbody tr")]
    assert [line.split()[0] for line in steps] == ["inbound_trunk", "outbound_trunk",
                                                   "dispatch_rule", "phone_number"]
    assert all(("created" in line or "record written" in line) and line.endswith("attempt 1")
               for line in steps), steps
    assert provisioned.result.inbound_trunk_id in steps[0]
    assert len(browser.find_all("#timeline rect")) == 1 + 4  # the attempt and four steps
    shot("ops-job-timeline")

    # A number's history: its record (LiveKit ids, never the password) and its jobs.
    browser.find('nav a[href="/ops/numbers"]').click()
    browser.wait_for(lambda d: browser.find_all("#number"), "the number search")
    browser.find("#number").send_keys(FREE)
    browser.find("form.filters button").click()
    browser.wait_for(lambda d: browser.find_all("#record"), "the number's record")
    record = browser.find("#record").text
    assert provisioned.result.dispatch_rule_id in record
    assert "set (never shown)" in record
    assert provisioned.job_id in browser.text()
    shot("ops-number-history")

    # Reconcile: the findings `trunkline reconcile` saved last (a rule deleted behind our back).
    browser.find('nav a[href="/ops/reconcile"]').click()
    browser.wait_for(lambda d: browser.find_all("#no-report"), "no report yet")
    livekit.delete_dispatch_rule(provisioned.result.dispatch_rule_id)
    reconciled = trunkline(stack, "reconcile", "--json")
    assert reconciled.returncode == 1, reconciled.stderr  # 1: findings remain
    browser.driver.refresh()
    browser.wait_for(lambda d: browser.find_all("#missing"), "the saved report")
    missing = browser.find("#missing").text
    assert provisioned.result.dispatch_rule_id in missing and FREE in missing
    assert "by trunkline reconcile" in browser.find("#report-summary").text
    shot("ops-reconcile")

    # CSRF: the session's cookie alone cannot replay (no token from the page): 403.
    forged = httpx.post(f"{api.url}/ops/dead-letters/{failed.job_id}/replay",
                        data={"replay": failed.job_id}, timeout=30,
                        cookies={"trunkline_ops_session": session["value"]})
    assert forged.status_code == 403
    assert client.get(failed.job_id).state is JobState.FAILED

    # The replay button, once the foreign trunk is gone: one new run, one event.
    livekit.delete_trunk(foreign.sip_trunk_id)
    browser.find('nav a[href="/ops/dead-letters"]').click()
    browser.wait_for(lambda d: browser.find_all(f'button.replay[value="{failed.job_id}"]'),
                     "the replay button")
    browser.find(f'button.replay[value="{failed.job_id}"]').click()
    browser.wait_for(lambda d: browser.find_all("#replayed"), "the replay's notice")
    assert browser.driver.current_url.endswith(f"/ops/jobs/{failed.job_id}?notice=replayed")
    wait_for(lambda: bool(job_events(redis_db, failed.job_id, 2)), TIMEOUT,
             "the replayed run's event")
    replayed: Job = client.wait(failed.job_id, TIMEOUT)
    assert (replayed.state, replayed.run) == (JobState.SUCCEEDED, 2)
    assert [e["status"] for e in job_events(redis_db, failed.job_id, 2)] == ["succeeded"]
    assert [e["status"] for e in stream_events(redis_db, RESULTS_STREAM, failed.job_id)] == [
        "failed", "succeeded"]
    browser.driver.refresh()
    browser.wait_for(lambda d: browser.find("#job-state").text == "succeeded",
                     "the page shows the replayed job succeeded")
    shot("ops-job-replayed")
    browser.find('nav a[href="/ops/dead-letters"]').click()
    browser.wait_for(lambda d: "No dead letters." in browser.text(), "an empty list")

    # Never a secret on any page or in the API's log (the session token neither); nothing
    # requested from anywhere but the API.
    ciphertexts = [job.request.auth_password_ciphertext
                   for job in (provisioned, failed) if job.request is not None]
    secrets = (CANARY_PASSWORD, operator["api_secret"], org_key.api_secret, *ciphertexts)
    for source in seen:
        for secret in secrets:
            assert secret not in source
    log = api.log()
    assert "ops replay: operator key" in log and failed.job_id in log
    for secret in (*secrets, session["value"]):
        assert secret not in log
    assert browser.outside(api.url) == []
