"""The ops commands against the real stack: redis-server, livekit-server, a real worker.

Commands run in-process through typer's CliRunner with the stack's settings in the
environment; `dev` and the outage messages run the installed `trunkline` script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner, Result

from ops.cli import app
from producers import ProvisioningClient
from tests.integration.conftest import (
    CANARY_PASSWORD,
    SEED_REQUEST,
    STACK_DEFAULTS,
    Stack,
    WorkerFactory,
    everything_on_livekit,
    stream_events,
)
from worker.contract import parse_request
from worker.livekit import (
    DispatchRule,
    DispatchRuleIndividual,
    DispatchRuleSpec,
    InboundTrunk,
    LiveKitSIP,
    OutboundTrunk,
)
from worker.records import Job, JobState, StepName, StoredRequest, new_job_id
from worker.saga import make_tag
from worker.store import RESULTS_STREAM, JobStore
from worker.vault import Vault

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]

ORG = "org_ops"
A, B, C, D = "+15551234567", "+15552345678", "+15553456789", "+15554567890"
TRUNKLINE = Path(sys.executable).with_name("trunkline")

Cli = Callable[..., Result]


@pytest.fixture
def cli(stack: Stack) -> Cli:
    """Run `trunkline ARGS...` in-process against the test stack."""
    runner = CliRunner()
    env = {k: v for k, v in stack.env().items()
           if k in ("REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET",
                    "TRUNKLINE_SECRET_KEYS")}

    def run(*args: str, input: str | None = None) -> Result:  # click's name
        return runner.invoke(app, list(args), input=input, env={**env, "COLUMNS": "250"})

    return run


def as_json(result: Result) -> Any:
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def request_for(number: str, **extra: Any) -> dict[str, Any]:
    return {**SEED_REQUEST, "number": number, "authPassword": CANARY_PASSWORD, **extra}


def ciphertexts(db: redis.Redis) -> list[str]:
    store = JobStore(db)
    found = []
    for key in db.scan_iter(match="trunkline:job:*"):
        job = store.get(key.decode().rsplit(":", 1)[1])
        if job is not None and job.request is not None:
            found.append(job.request.auth_password_ciphertext)
    return found


def assert_no_secret(db: redis.Redis, *outputs: str) -> None:
    text = "\n".join(outputs)
    assert CANARY_PASSWORD not in text
    for ciphertext in ciphertexts(db):
        assert ciphertext not in text


def test_dead_letter_listed_then_replayed_after_the_foreign_trunk_is_removed(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis, cli: Cli, tmp_path: Path,
) -> None:
    """A number held by a foreign trunk: dead-lettered, listed without its password, replayed
    once the trunk is gone, and finished with one set of objects and one `succeeded` event."""
    foreign = livekit.create_inbound_trunk(InboundTrunk(name="someone else", numbers=[A]))
    worker_factory()
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request_for(A)))
    submitted = cli("submit", "--org", ORG, str(path), "--json")
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.stdout)["job_id"]
    failed = client.wait(job_id, timeout=60)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error.code == "number_conflict"

    listed = cli("dlq", "list", "--json")
    entries = as_json(listed)
    assert [(e["job_id"], e["error"]["code"], e["number"], e["org_id"]) for e in entries] == [
        (job_id, "number_conflict", A, ORG)]
    table = cli("dlq", "list", "--org", ORG, "--code", "number_conflict", "--since", "10m")
    assert table.exit_code == 0 and job_id in table.stdout and "number_conflict" in table.stdout
    shown = cli("dlq", "show", job_id)
    detail = cli("dlq", "show", job_id, "--json")
    assert as_json(detail)["request"]["has_auth_password"] is True
    assert_no_secret(redis_db, listed.output, table.output, shown.output, detail.output)

    livekit.delete_trunk(foreign.sip_trunk_id)
    replayed = cli("dlq", "replay", job_id)
    assert replayed.exit_code == 0, replayed.output
    assert "queued again (run 2)" in replayed.stdout
    done = client.wait(job_id, timeout=60)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.result is not None and done.run == 2
    assert everything_on_livekit(livekit) == {
        "inbound": [done.result.inbound_trunk_id],
        "outbound": [done.result.outbound_trunk_id],
        "rules": [done.result.dispatch_rule_id],
    }
    events = stream_events(redis_db, RESULTS_STREAM, job_id)
    assert [e["status"] for e in events] == ["failed", "succeeded"]
    assert as_json(cli("dlq", "list", "--json")) == []
    again = cli("dlq", "replay", job_id)
    assert again.exit_code == 1 and "only failed jobs can be replayed" in again.stdout

    view = as_json(cli("jobs", "show", job_id, "--json"))
    assert (view["state"], view["run"]) == ("succeeded", 2)
    numbers = as_json(cli("numbers", "list", "--org", ORG, "--json"))["numbers"]
    assert [(n["number"], n["dispatch_rule_id"]) for n in numbers] == [
        (A, done.result.dispatch_rule_id)]
    record = cli("numbers", "show", A, "--org", ORG, "--json")
    assert as_json(record)["inbound_trunk_id"] == done.result.inbound_trunk_id
    jobs_table = cli("jobs", "show", job_id)
    assert_no_secret(redis_db, replayed.output, record.output, jobs_table.output,
                     json.dumps(numbers), json.dumps(view))


def test_jobs_list_pages_and_dlq_purge(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    cli: Cli,
) -> None:
    """jobs list pages with --cursor; dlq purge asks first and empties the list."""
    for number in (A, B):
        livekit.create_inbound_trunk(InboundTrunk(name="someone else", numbers=[number]))
    worker_factory()
    ids = [client.submit(org_id=ORG, request=request_for(n)) for n in (A, B)]
    for job_id in ids:
        assert client.wait(job_id, timeout=60).state is JobState.FAILED
    first = as_json(cli("jobs", "list", "--org", ORG, "--limit", "1", "--json"))
    second = as_json(cli("jobs", "list", "--org", ORG, "--limit", "1", "--json",
                         "--cursor", first["next_cursor"]))
    assert [j["job_id"] for j in first["jobs"] + second["jobs"]] == ids[::-1]
    everything = as_json(cli("jobs", "list", "--state", "failed", "--json"))
    assert {j["job_id"] for j in everything["jobs"]} == set(ids)

    assert cli("dlq", "purge", input="n\n").exit_code == 1
    assert len(as_json(cli("dlq", "list", "--json"))) == 2
    purged = cli("dlq", "purge", "--code", "number_conflict", "--yes")
    assert purged.exit_code == 0 and "purged 2" in purged.stdout
    assert as_json(cli("dlq", "list", "--json")) == []


def queued_job(stack: Stack, number: str) -> Job:
    """A job stored as queued and never sent: to the reconciler, a saga in flight."""
    vault = Vault([stack.secret_key])
    parsed = parse_request(request_for(number))
    job = Job(job_id=new_job_id(), org_id=ORG, number=parsed.number,
              request=StoredRequest.seal(parsed, vault),
              request_fingerprint=vault.fingerprint(parsed.fingerprint_material()))
    store = JobStore(redis.Redis.from_url(stack.redis_url))
    store.create(job, deadline=time.time() + 3600)
    store.redis.close()
    return job


def test_reconcile_finds_orphan_missing_and_drifted_and_deletes_only_the_orphan(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    redis_db: redis.Redis, cli: Cli, stack: Stack,
) -> None:
    """A hand-made orphan, a hand-deleted dispatch rule and a hand-edited outbound trunk are
    reported; --delete removes the orphan (rule first) and nothing else."""
    worker_factory()
    done = [client.wait(client.submit(org_id=ORG, request=request_for(n)), timeout=60)
            for n in (A, B)]
    for job in done:
        assert job.state is JobState.SUCCEEDED, job.error
    first, second = (job.result for job in done)
    assert first is not None and second is not None

    ghost = "job_" + "0" * 32  # no such job
    orphan = livekit.create_inbound_trunk(InboundTrunk(
        name="orphan", numbers=[C], metadata=make_tag(ghost, ORG, StepName.INBOUND_TRUNK, C)))
    orphan_rule = livekit.create_dispatch_rule(DispatchRule(
        name="orphan", trunk_ids=[orphan.sip_trunk_id],
        metadata=make_tag(ghost, ORG, StepName.DISPATCH_RULE, C),
        rule=DispatchRuleSpec(dispatch_rule_individual=DispatchRuleIndividual(
            room_prefix="ghost-"))))
    in_flight = queued_job(stack, D)
    mid_saga = livekit.create_inbound_trunk(InboundTrunk(
        name="mid-saga", numbers=[D],
        metadata=make_tag(in_flight.job_id, ORG, StepName.INBOUND_TRUNK, D)))
    livekit.delete_dispatch_rule(first.dispatch_rule_id)
    edited = livekit.get_outbound_trunk(second.outbound_trunk_id)
    livekit.update_outbound_trunk(second.outbound_trunk_id, OutboundTrunk(
        name=edited.name, metadata=edited.metadata, address="rogue.example.net",
        transport=edited.transport, numbers=edited.numbers,
        auth_username=edited.auth_username, auth_password="Changed-By-Hand-77"))

    result = cli("reconcile", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert sorted((o["livekit_id"], o["kind"], o["number"], o["job_id"], o["reason"])
                  for o in report["orphans"]) == sorted([
        (orphan.sip_trunk_id, "inbound_trunk", C, ghost, "job_unknown"),
        (orphan_rule.sip_dispatch_rule_id, "dispatch_rule", C, ghost, "job_unknown")])
    assert [(m["livekit_id"], m["kind"], m["number"], m["job_id"]) for m in report["missing"]] == [
        (first.dispatch_rule_id, "dispatch_rule", A, done[0].job_id)]
    [drift] = report["drifted"]
    assert (drift["livekit_id"], drift["kind"], drift["number"], drift["job_id"]) == (
        second.outbound_trunk_id, "outbound_trunk", B, done[1].job_id)
    fields = {f["field"]: f for f in drift["fields"]}
    assert set(fields) == {"address", "auth_password"}
    assert fields["address"] == {"field": "address", "expected": "sip.gateway.com",
                                 "actual": "rogue.example.net"}
    assert fields["auth_password"] == {"field": "auth_password", "secret": True, "changed": True}
    assert report["summary"]["in_flight"] == 1
    table = cli("reconcile")
    assert table.exit_code == 1 and orphan.sip_trunk_id in table.stdout
    assert "2 orphans, 1 missing, 1 drifted" in table.stdout
    for output in (result.output, table.output):
        assert "Changed-By-Hand-77" not in output
    assert_no_secret(redis_db, result.output, table.output)

    refused = cli("reconcile", "--delete", input="n\n")
    assert refused.exit_code == 1
    assert orphan.sip_trunk_id in everything_on_livekit(livekit)["inbound"]
    deleted = cli("reconcile", "--delete", "--yes", "--json")
    assert deleted.exit_code == 1  # the missing rule and the drift remain
    assert [(d["livekit_id"], d["deleted"]) for d in json.loads(deleted.stdout)["deleted"]] == [
        (orphan_rule.sip_dispatch_rule_id, True), (orphan.sip_trunk_id, True)]
    assert everything_on_livekit(livekit) == {
        "inbound": sorted([first.inbound_trunk_id, second.inbound_trunk_id,
                           mid_saga.sip_trunk_id]),
        "outbound": sorted([first.outbound_trunk_id, second.outbound_trunk_id]),
        "rules": [second.dispatch_rule_id],
    }
    after = as_json(cli("reconcile", "--json"))
    assert (len(after["orphans"]), len(after["missing"]), len(after["drifted"])) == (0, 1, 1)


def test_results_tail_reads_acks_and_claims_a_dead_consumers_entry(
    worker_factory: WorkerFactory, redis_db: redis.Redis, cli: Cli, tmp_path: Path,
) -> None:
    """Bulk-submitted jobs' events are tailed: the entry a dead consumer left pending is
    claimed, every printed entry is acknowledged, and --timeout ends a quiet tail."""
    worker_factory()
    rows = tmp_path / "backfill.csv"
    rows.write_text(
        "name,number,outboundPstn,authUserName,authPassword,agentName\n"
        f"First,{A},sip.gateway.com,sip_user,{CANARY_PASSWORD},receptionist\n"
        f"Second,{B},sip.gateway.com,sip_user,{CANARY_PASSWORD},\n")
    submitted = cli("submit", "--org", ORG, str(rows), "--wait", "60")
    assert submitted.exit_code == 0, submitted.output
    assert submitted.stdout.count("succeeded") == 2 and "2 submitted" in submitted.stdout
    assert CANARY_PASSWORD not in submitted.output

    client: Any = redis_db
    client.xgroup_create(RESULTS_STREAM, "downstream", id="0")
    [[_, [(dead_id, _fields)]]] = client.xreadgroup("downstream", "crashed", {RESULTS_STREAM: ">"},
                                                    count=1)
    assert client.xpending(RESULTS_STREAM, "downstream")["pending"] == 1
    time.sleep(0.5)
    tail = cli("results", "tail", "--group", "downstream", "--consumer", "alive", "--count", "2",
               "--timeout", "20", "--claim-idle", "0.3", "--json")
    assert tail.exit_code == 0, tail.output
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(e["source"], e["status"]) for e in events] == [
        ("claimed", "succeeded"), ("new", "succeeded")]
    assert events[0]["id"] == dead_id.decode()
    assert {e["payload"]["number"] for e in events} == {A, B}
    assert client.xpending(RESULTS_STREAM, "downstream")["pending"] == 0

    started = time.monotonic()
    quiet = cli("results", "tail", "--group", "downstream", "--timeout", "1")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert time.monotonic() - started < 15
    fresh = cli("results", "tail", "--group", "auditors", "--count", "2")
    assert fresh.exit_code == 0 and fresh.stdout.count("succeeded") == 2


def test_dev_commands_and_outage_messages(stack: Stack) -> None:
    """`trunkline dev up|status` drive the stack script; unreachable Redis or LiveKit is one
    line naming the variable, exit code 3."""
    stack_env = {**os.environ, **{k: os.environ.get(k, v) for k, v in STACK_DEFAULTS.items()}}
    up = subprocess.run([str(TRUNKLINE), "dev", "up"], env=stack_env, capture_output=True,
                        text=True, timeout=300, check=False)
    assert up.returncode == 0, up.stderr
    status = subprocess.run([str(TRUNKLINE), "dev", "status", "--json"], env=stack_env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["ok"] is True
    assert report["services"]["redis"]["up"] and report["services"]["livekit"]["up"]

    down_redis = stack.env(REDIS_URL="redis://:s3cret@127.0.0.1:1/0")
    result = subprocess.run([str(TRUNKLINE), "dlq", "list"], env=down_redis,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0 (check REDIS_URL)" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    down_livekit = stack.env(LIVEKIT_URL="http://127.0.0.1:1")
    result = subprocess.run([str(TRUNKLINE), "reconcile"], env=down_livekit,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "cannot reach LiveKit at http://127.0.0.1:1 (check LIVEKIT_URL)" in result.stderr


def test_update_then_release_from_the_command_line(
    worker_factory: WorkerFactory, client: ProvisioningClient, livekit: LiveKitSIP,
    cli: Cli, tmp_path: Path,
) -> None:
    """Rotate the password with `numbers update`, then `numbers release` leaves nothing."""
    worker_factory()
    job = client.wait(client.submit(org_id="org_cli", request=SEED_REQUEST), 60)
    assert job.state is JobState.SUCCEEDED and job.result is not None
    changes = tmp_path / "changes.json"
    changes.write_text(json.dumps({"authPassword": CANARY_PASSWORD}))

    updated = cli("numbers", "update", "+15551234567", "--org", "org_cli",
                  "--changes", str(changes), "--json")
    assert updated.exit_code == 0, updated.output
    assert json.loads(updated.stdout)["state"] == "succeeded"
    assert CANARY_PASSWORD not in updated.output
    outbound = livekit.get_outbound_trunk(job.result.outbound_trunk_id)
    assert outbound.auth_password.get_secret_value() == CANARY_PASSWORD

    other = cli("numbers", "release", "+15551234567", "--org", "org_other", "--yes")
    assert other.exit_code == 1
    assert livekit.list_inbound_trunks() != []

    released = cli("numbers", "release", "+15551234567", "--org", "org_cli", "--yes", "--json")
    assert released.exit_code == 0, released.output
    assert json.loads(released.stdout)["state"] == "succeeded"
    assert livekit.list_inbound_trunks() == []
    assert livekit.list_outbound_trunks() == []
    assert livekit.list_dispatch_rules() == []

    bad = cli("numbers", "update", "+15551234567", "--org", "org_cli", "--changes", str(changes))
    assert bad.exit_code == 1  # the number is gone
