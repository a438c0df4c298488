"""The API's /metrics: requests by route template and status, live queue gauges."""

from __future__ import annotations

from tests.producers.conftest import Harness


def test_metrics_count_requests_by_route_template(harness: Harness) -> None:
    """A job lookup is counted under its template, never under the job id."""
    created = harness.create()
    assert created.status == 200, created.text
    missing = harness.request("GET", "/api/jobs/job_does_not_exist")
    assert missing.status == 404
    metrics = harness.request("GET", "/metrics", org=None).text
    assert ('trunkline_api_requests_total{method="GET",route="/api/jobs/{job_id}",'
            'status="404"}') in metrics
    assert ('trunkline_api_requests_total{method="POST",'
            'route="/api/sio/createSipTrunkDispatch",status="200"}') in metrics
    assert "job_does_not_exist" not in metrics
    assert "trunkline_dead_letter_depth 0.0" in metrics
    assert "trunkline_api_request_duration_seconds_bucket" in metrics
