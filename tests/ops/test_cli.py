"""The `trunkline` ops commands through typer's CliRunner, on fakeredis and the fake LiveKit."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pytest

import ops.context
from ops.context import OpsContext, redact_url
from producers.client import ProvisioningClient
from tests.ops.conftest import World
from tests.worker.fake_livekit import PASSWORD, Fault
from worker.records import Job, JobState, StepName
from worker.saga import make_tag
from worker.store import NotReplicated

A, B, C = "+15551230001", "+15551230002", "+15551230003"


def no_secret(world: World, text: str) -> None:
    assert PASSWORD not in text
    for key in world.redis.scan_iter(match="trunkline:job:*"):
        job = world.store.get(key.decode().rsplit(":", 1)[1])
        if job is not None and job.request is not None:
            assert job.request.auth_password_ciphertext not in text


# --- dlq -------------------------------------------------------------------------------


def test_dlq_list_and_show(world: World) -> None:
    """Dead letters are listed and shown, in tables and JSON, without the password."""
    job = world.dead_letter(A, org_id="org_a")
    world.dead_letter(B, org_id="org_b")
    table = world.cli("dlq", "list")
    assert table.exit_code == 0, table.output
    assert job.job_id in table.stdout and "number_conflict" in table.stdout
    assert "2 shown, 2 on the dead-letter list" in table.stdout
    listed = world.cli_json("dlq", "list", "--org", "org_a", "--code", "number_conflict",
                            "--since", "1h")
    assert [e["job_id"] for e in listed] == [job.job_id]
    assert listed[0]["error"]["code"] == "number_conflict"
    assert world.cli_json("dlq", "list", "--code", "livekit_timeout") == []
    shown = world.cli("dlq", "show", job.job_id)
    assert shown.exit_code == 0 and "password (set, never shown)" in shown.stdout
    detail = world.cli_json("dlq", "show", job.job_id)
    assert detail["job_id"] == job.job_id and detail["request"]["has_auth_password"]
    for text in (table.output, shown.output, json.dumps(listed), json.dumps(detail)):
        no_secret(world, text)


def test_dlq_show_of_a_job_not_dead_lettered(world: World) -> None:
    """dlq show refuses a job that is not on the list, saying what state it is in."""
    job = world.provision(A)
    result = world.cli("dlq", "show", job.job_id)
    assert result.exit_code == 1
    assert "not on the dead-letter list (it is succeeded)" in result.stderr
    assert world.cli("dlq", "show", "job_nope").exit_code == 1


def test_dlq_list_rejects_a_bad_since(world: World) -> None:
    """A --since that is neither a duration nor a time is a usage error."""
    result = world.cli("dlq", "list", "--since", "yesterday-ish")
    assert result.exit_code == 2
    assert "neither a duration" in result.output


def test_dlq_replay_requeues_and_the_job_then_succeeds(world: World) -> None:
    """Replay re-enqueues the same id with attempts reset; it leaves the list and succeeds."""
    job = world.dead_letter(A)
    world.livekit.delete_trunk(world.foreign_trunk_of(A))
    result = world.cli("dlq", "replay", job.job_id)
    assert result.exit_code == 0, result.output
    assert "queued again (run 2)" in result.stdout
    assert world.sent == [job.job_id]
    queued = world.store.get(job.job_id)
    assert queued is not None and queued.state is JobState.QUEUED and queued.attempts == 0
    assert world.cli_json("dlq", "list") == []
    assert world.run(job.job_id).state is JobState.SUCCEEDED
    again = world.cli("dlq", "replay", job.job_id, "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout)[0]["replayed"] is False


def test_dlq_replay_the_replicas_did_not_confirm_is_named(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay the replicas did not confirm is reported as not done (exit 1), with why."""
    job = world.dead_letter(A)

    def unconfirmed(self: ProvisioningClient, job_id: str) -> Job:
        raise NotReplicated(f"the replay of job {job_id}", 0, 1, 1000)

    monkeypatch.setattr(ProvisioningClient, "replay", unconfirmed)
    result = world.cli("dlq", "replay", job.job_id, "--json")

    assert result.exit_code == 1
    (row,) = json.loads(result.stdout)
    assert row["replayed"] is False
    assert "0 of the 1 replica(s)" in row["error"]


def test_dlq_replay_all_with_filters(world: World) -> None:
    """--all replays every dead letter matching the filters, and only those."""
    first = world.dead_letter(A, org_id="org_a")
    second = world.dead_letter(B, org_id="org_b")
    result = world.cli("dlq", "replay", "--all", "--org", "org_b", "--json")
    assert result.exit_code == 0, result.output
    assert [r["job_id"] for r in json.loads(result.stdout)] == [second.job_id]
    assert world.sent == [second.job_id]
    assert [e["job_id"] for e in world.cli_json("dlq", "list")] == [first.job_id]
    assert world.cli("dlq", "replay", "--all", "--org", "org_none").stdout.strip() == (
        "nothing to replay")


def test_dlq_replay_usage_errors(world: World) -> None:
    """Replay needs ids or --all (not both, filters only with --all); an unknown id fails."""
    assert world.cli("dlq", "replay").exit_code == 2
    assert world.cli("dlq", "replay", "job_x", "--all").exit_code == 2
    assert world.cli("dlq", "replay", "job_x", "--org", "o").exit_code == 2
    unknown = world.cli("dlq", "replay", "job_unknown")
    assert unknown.exit_code == 1 and "no job job_unknown" in unknown.stdout


def test_dlq_purge_asks_unless_yes(world: World) -> None:
    """Purge asks first; the job records stay."""
    job = world.dead_letter(A)
    refused = world.cli("dlq", "purge", input="n\n")
    assert refused.exit_code == 1
    assert len(world.cli_json("dlq", "list")) == 1
    done = world.cli("dlq", "purge", "--yes")
    assert done.exit_code == 0 and "purged 1" in done.stdout
    assert world.cli_json("dlq", "list") == []
    assert world.store.get(job.job_id) is not None
    assert world.cli("dlq", "purge", "--yes").stdout.strip() == "nothing to purge"


# --- jobs and numbers -------------------------------------------------------------------


def test_jobs_list_pages_with_a_cursor(world: World) -> None:
    """jobs list pages newest first; --cursor continues; --state and --org filter."""
    jobs = [world.provision(n, org_id="org_a") for n in (A, B)]
    failed = world.dead_letter(C, org_id="org_b")
    page = world.cli_json("jobs", "list", "--limit", "2")
    assert [j["job_id"] for j in page["jobs"]] == [failed.job_id, jobs[1].job_id]
    rest = world.cli_json("jobs", "list", "--limit", "2", "--cursor", page["next_cursor"])
    assert [j["job_id"] for j in rest["jobs"]] == [jobs[0].job_id]
    assert rest["next_cursor"] is None
    org_a = world.cli_json("jobs", "list", "--org", "org_a", "--limit", "10")
    assert {j["job_id"] for j in org_a["jobs"]} == {j.job_id for j in jobs}
    failed_only = world.cli_json("jobs", "list", "--state", "failed")
    assert [j["job_id"] for j in failed_only["jobs"]] == [failed.job_id]
    table = world.cli("jobs", "list", "--limit", "1")
    assert "more: --cursor" in table.stdout
    assert world.cli("jobs", "list", "--cursor", "nonsense").exit_code == 2


def test_jobs_list_queued_reads_the_active_index(world: World) -> None:
    """--state queued without --org lists the active index."""
    queued = world.submit(number=A)
    world.provision(B)
    listed = world.cli_json("jobs", "list", "--state", "queued")
    assert [j["job_id"] for j in listed["jobs"]] == [queued.job_id]


def test_jobs_show(world: World) -> None:
    """jobs show prints the job's state and steps, never its password."""
    job = world.provision(A)
    shown = world.cli("jobs", "show", job.job_id)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout
    assert "inbound_trunk" in shown.stdout
    view = world.cli_json("jobs", "show", job.job_id)
    assert view["state"] == "succeeded"
    no_secret(world, shown.output + json.dumps(view))
    assert world.cli("jobs", "show", "job_nope").exit_code == 1


def test_numbers_list_and_show(world: World) -> None:
    """An organisation's numbers and one number's record, never the password."""
    job = world.provision(A, org_id="org_a")
    world.provision(B, org_id="org_b")
    listed = world.cli_json("numbers", "list", "--org", "org_a")
    assert [n["number"] for n in listed["numbers"]] == [A]
    assert listed["numbers"][0]["has_auth_password"] is True
    table = world.cli("numbers", "list", "--org", "org_a")
    assert A in table.stdout
    shown = world.cli_json("numbers", "show", "+1 555 123 0001", "--org", "org_a")
    assert shown["job_id"] == job.job_id
    assert world.cli("numbers", "show", A, "--org", "org_b").exit_code == 1
    assert world.cli("numbers", "show", A).exit_code == 0
    no_secret(world, json.dumps(listed) + table.output)


# --- reconcile --------------------------------------------------------------------------


def test_reconcile_reports_and_deletes_orphans_only(world: World) -> None:
    """reconcile --json lists findings; --delete asks, then removes the orphans only."""
    job = world.provision(A)
    assert job.result is not None
    ghost = world.fake.seed_inbound(name="ghost", numbers=[C], metadata=make_tag(
        "job_ghost", "org_acme", StepName.INBOUND_TRUNK, C))
    world.livekit.delete_dispatch_rule(job.result.dispatch_rule_id)
    report = world.cli("reconcile", "--json")
    assert report.exit_code == 1
    document = json.loads(report.stdout)
    assert [o["livekit_id"] for o in document["orphans"]] == [ghost]
    assert [m["livekit_id"] for m in document["missing"]] == [job.result.dispatch_rule_id]
    table = world.cli("reconcile")
    assert "1 orphans, 1 missing, 0 drifted" in table.stdout
    refused = world.cli("reconcile", "--delete", input="n\n")
    assert refused.exit_code == 1 and ghost in world.fake.inbound
    assert world.cli("reconcile", "--delete", "--json").exit_code == 2
    deleted = world.cli("reconcile", "--delete", "--yes", "--json")
    assert deleted.exit_code == 1  # the missing rule remains
    assert [d["livekit_id"] for d in json.loads(deleted.stdout)["deleted"]] == [ghost]
    assert ghost not in world.fake.inbound
    assert job.result.inbound_trunk_id in world.fake.inbound


def test_reconcile_clean_exits_zero(world: World) -> None:
    """No finding: exit code 0 and a zero summary."""
    world.provision(A)
    result = world.cli("reconcile")
    assert result.exit_code == 0, result.output
    assert "0 orphans, 0 missing, 0 drifted" in result.stdout


def test_reconcile_refuses_to_delete_too_many(world: World) -> None:
    """More orphans than --max-delete: nothing is deleted, exit code 1."""
    for index in range(3):
        number = f"+1555123100{index}"
        world.fake.seed_inbound(name="ghost", numbers=[number], metadata=make_tag(
            f"job_g{index}", "org", StepName.INBOUND_TRUNK, number))
    result = world.cli("reconcile", "--delete", "--yes", "--max-delete", "2")
    assert result.exit_code == 1 and "refusing to delete 3 orphans" in result.stderr
    assert len(world.fake.inbound) == 3


# --- submit -----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_submit_bulk_csv_reports_each_row(world: World, tmp_path: Path) -> None:
    """A CSV backfill: valid rows are queued, invalid and repeated ones named, exit code 2."""
    csv = (
        "name,number,outboundPstn,authUserName,authPassword,agentName\n"
        f"One,{A},sip.example.com,u1,{PASSWORD},receptionist\n"
        f"Two,+15550100,sip:bad@host,u2,{PASSWORD},\n"
        f"Three,{B},sip.example.com,u3,{PASSWORD},\n"
        f"One again,{A},sip.example.com,u1,{PASSWORD},\n"
    )
    result = world.cli("submit", "--org", "org_a", write(tmp_path, "rows.csv", csv), "--json")
    assert result.exit_code == 2, result.output
    rows = json.loads(result.stdout)
    assert [(r["row"], r["status"]) for r in rows] == [
        (2, "submitted"), (3, "invalid"), (4, "submitted"), (5, "skipped")]
    assert {e["field"] for e in rows[1]["errors"]} == {"number", "outboundPstn"}
    assert len(world.sent) == 2 and world.sent == [rows[0]["job_id"], rows[2]["job_id"]]
    assert PASSWORD not in result.output
    table = world.cli("submit", "--org", "org_a", write(tmp_path, "more.csv", csv))
    assert "invalid" in table.stdout and PASSWORD not in table.output


def test_submit_with_an_idempotency_prefix_submits_nothing_twice(world: World,
                                                                 tmp_path: Path) -> None:
    """Running a file again with --idempotency-prefix finds the jobs of the first run."""
    lines = "\n".join(json.dumps({"name": "n", "number": n, "outboundPstn": "sip.example.com",
                                  "authUserName": "u", "authPassword": PASSWORD})
                      for n in (A, B))
    path = write(tmp_path, "rows.jsonl", lines)
    first = world.cli("submit", "--org", "org_a", path, "--idempotency-prefix", "crm", "--json")
    second = world.cli("submit", "--org", "org_a", path, "--idempotency-prefix", "crm", "--json")
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert [r["status"] for r in json.loads(second.stdout)] == ["existing", "existing"]
    assert [r["job_id"] for r in json.loads(first.stdout)] == [
        r["job_id"] for r in json.loads(second.stdout)]
    assert len(world.sent) == 2


def test_submit_one_json_object_keeps_its_old_output(world: World, tmp_path: Path) -> None:
    """A file holding one JSON object prints {"job_id": ...} (or field errors, exit 2)."""
    body = {"name": "n", "number": A, "outboundPstn": "sip.example.com", "authUserName": "u",
            "authPassword": PASSWORD}
    ok = world.cli("submit", "--org", "org_a", write(tmp_path, "one.json", json.dumps(body)),
                   "--json", "--idempotency-key", "k1")
    assert ok.exit_code == 0, ok.output
    assert set(json.loads(ok.stdout)) == {"job_id"}
    bad = world.cli("submit", "--org", "org_a",
                    write(tmp_path, "bad.json", json.dumps({**body, "number": "15551234567"})),
                    "--json")
    assert bad.exit_code == 2
    assert [e["field"] for e in json.loads(bad.stdout)["errors"]] == ["number"]


def test_submit_file_errors(world: World, tmp_path: Path) -> None:
    """Unreadable or empty files, a key for many rows and an unknown format exit with 2."""
    assert world.cli("submit", "--org", "o", str(tmp_path / "absent.csv")).exit_code == 2
    assert world.cli("submit", "--org", "o", write(tmp_path, "e.json", "")).exit_code == 2
    two = write(tmp_path, "two.jsonl", '{"a": 1}\n{"a": 2}\n')
    result = world.cli("submit", "--org", "o", two, "--idempotency-key", "k")
    assert result.exit_code == 2 and "one request" in result.stderr
    assert world.cli("submit", "--org", "o", two, "--format", "xml").exit_code == 2


# --- results ----------------------------------------------------------------------------


def test_results_tail_prints_and_acknowledges(world: World) -> None:
    """results tail prints each event (JSON lines or text) and acknowledges it."""
    job = world.provision(A)
    failed = world.dead_letter(B)
    result = world.cli("results", "tail", "--group", "ops", "--count", "2", "--json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["job_id"], e["status"]) for e in events] == [
        (job.job_id, "succeeded"), (failed.job_id, "failed")]
    info = world.redis.xpending(world.store.keys.results, "ops")
    assert info["pending"] == 0
    human = world.cli("results", "tail", "--group", "humans", "--count", "2")
    assert "succeeded" in human.stdout and "number_conflict" in human.stdout
    assert world.cli("results", "tail", "--start-id", "bogus").exit_code == 2


# --- outages ----------------------------------------------------------------------------


def test_unreachable_redis_is_one_line_naming_redis_url(world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command reports a Redis outage as one line naming REDIS_URL, exit code 3."""
    server = fakeredis.FakeServer()
    server.connected = False
    down = fakeredis.FakeRedis(server=server)
    settings = world.settings.__class__(**{**world.settings.__dict__,
                                           "redis_url": "redis://:hunter2@redis.internal:6379/0"})
    monkeypatch.setattr(ops.context, "make_context", lambda: OpsContext(
        settings, redis_conn=down, livekit=world.livekit, client_factory=world.client))
    for args in (["dlq", "list"], ["jobs", "list"], ["numbers", "list", "--org", "o"],
                 ["results", "tail", "--count", "1"], ["reconcile"], ["dlq", "purge", "--yes"],
                 ["retention", "show"], ["retention", "apply"],
                 ["retention", "apply", "--dry-run", "--json"]):
        result = world.cli(*args)
        assert result.exit_code == 3, (args, result.output)
        assert "cannot reach Redis at redis://:***@redis.internal:6379/0 (check REDIS_URL)" in (
            result.stderr), result.stderr
        assert "hunter2" not in result.output
        assert "Traceback" not in result.output


def test_unreachable_livekit_names_livekit_url(world: World) -> None:
    """LiveKit unreachable: one line naming LIVEKIT_URL, exit code 3."""
    world.fake.inject("ListSIPInboundTrunk", Fault.unreachable())
    result = world.cli("reconcile")
    assert result.exit_code == 3
    assert "cannot reach LiveKit at http://127.0.0.1:7880 (check LIVEKIT_URL)" in result.stderr


def test_livekit_refusing_credentials_names_the_key_variables(world: World) -> None:
    """LiveKit answering 401: the message names the key and secret variables."""
    world.fake.inject("ListSIPInboundTrunk", Fault.http(401, "no"))
    result = world.cli("reconcile")
    assert result.exit_code == 3
    assert "LIVEKIT_API_KEY and LIVEKIT_API_SECRET" in result.stderr


def test_redact_url() -> None:
    """Passwords in URLs are masked; URLs without one are unchanged."""
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://user:pw@h/0") == "redis://user:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
