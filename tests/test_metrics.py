"""Prometheus metrics: the HTTP middleware, scrape output and the event-loop lag monitor."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families
from pytest_aiohttp import AiohttpClient

from teleconsult.core.metrics import (
    EventLoopLagMonitor,
    Metrics,
    count_open_connections,
)


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["item_id"]})


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def _broken(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def _app(metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[metrics.middleware])
    app.router.add_get("/ok", _ok)
    app.router.add_get("/items/{item_id}", _item)
    app.router.add_get("/missing", _missing)
    app.router.add_get("/broken", _broken)
    app.router.add_get("/metrics", metrics.handler)
    return app


async def _client(
    aiohttp_client: AiohttpClient, metrics: Metrics
) -> TestClient[web.Request, web.Application]:
    return await aiohttp_client(_app(metrics))


def _sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample in the scraped text, or None when absent."""
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return None


def _requests(metrics: Metrics, method: str, route: str, status: str) -> float | None:
    return _sample(
        metrics,
        "teleconsult_http_requests_total",
        {"method": method, "route": route, "status": status},
    )


async def test_requests_are_counted_by_route_template(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    for item_id in ("1", "2", "3"):
        async with client.get(f"/items/{item_id}") as resp:
            assert resp.status == 200

    assert _requests(metrics, "GET", "/items/{item_id}", "200") == 3
    assert "/items/1" not in metrics.render()[0].decode()


async def test_unknown_path_counts_as_unmatched(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.get("/no/such/path") as resp:
        assert resp.status == 404

    assert _requests(metrics, "GET", "unmatched", "404") == 1
    assert "/no/such/path" not in metrics.render()[0].decode()


async def test_http_exception_counts_with_its_status(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.get("/missing") as resp:
        assert resp.status == 404

    assert _requests(metrics, "GET", "/missing", "404") == 1


async def test_unexpected_exception_counts_as_500(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.get("/broken") as resp:
        assert resp.status == 500

    assert _requests(metrics, "GET", "/broken", "500") == 1


async def test_unknown_method_is_folded_into_other(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.request("PROPFIND", "/ok") as resp:
        assert resp.status == 405

    assert _requests(metrics, "OTHER", "unmatched", "405") == 1


async def test_request_duration_histogram_has_observations(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.get("/ok") as resp:
        assert resp.status == 200

    labels = {"method": "GET", "route": "/ok"}
    assert _sample(metrics, "teleconsult_http_request_duration_seconds_count", labels) == 1
    assert (
        _sample(
            metrics, "teleconsult_http_request_duration_seconds_bucket", {**labels, "le": "10.0"}
        )
        == 1
    )


async def test_in_progress_gauge_is_zero_after_requests(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    for path in ("/ok", "/missing", "/broken"):
        async with client.get(path):
            pass

    assert _sample(metrics, "teleconsult_http_requests_in_progress") == 0


async def test_open_connections_gauge_reads_counter_at_scrape_time() -> None:
    metrics = Metrics()
    open_now = 0
    metrics.set_connection_counter(lambda: open_now)

    assert _sample(metrics, "teleconsult_open_connections") == 0
    open_now = 7
    assert _sample(metrics, "teleconsult_open_connections") == 7


async def test_count_open_connections_sees_a_keep_alive_connection(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)
    runner = client.server.runner
    assert runner is not None

    async with client.get("/ok") as resp:
        await resp.read()

    assert count_open_connections(runner) == 1


async def test_metrics_endpoint_serves_the_exposition_format(
    aiohttp_client: AiohttpClient,
) -> None:
    metrics = Metrics()
    client = await _client(aiohttp_client, metrics)

    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()

    assert "teleconsult_http_requests_in_progress" in text


async def test_other_modules_can_register_metrics_on_the_registry() -> None:
    metrics = Metrics()
    sent = Counter("teleconsult_test_messages", "Test.", registry=metrics.registry)
    sent.inc(2)

    assert _sample(metrics, "teleconsult_test_messages_total") == 2


async def test_two_instances_do_not_share_samples(aiohttp_client: AiohttpClient) -> None:
    first, second = Metrics(), Metrics()
    client = await _client(aiohttp_client, first)

    async with client.get("/ok"):
        pass

    assert _requests(first, "GET", "/ok", "200") == 1
    assert _requests(second, "GET", "/ok", "200") is None


async def test_lag_monitor_records_an_observation_after_start() -> None:
    metrics = Metrics()
    monitor = EventLoopLagMonitor(metrics, interval=0.01)
    await monitor.start()
    try:
        for _ in range(100):
            if (_sample(metrics, "teleconsult_event_loop_lag_seconds_count") or 0) >= 1:
                break
            await asyncio.sleep(0.01)
    finally:
        await monitor.stop()

    assert (_sample(metrics, "teleconsult_event_loop_lag_seconds_count") or 0) >= 1
    last = _sample(metrics, "teleconsult_event_loop_lag_last_seconds")
    assert last is not None and last >= 0


async def test_lag_monitor_stops_cleanly() -> None:
    metrics = Metrics()
    monitor = EventLoopLagMonitor(metrics, interval=0.01)
    await monitor.start()
    await asyncio.sleep(0.03)

    await monitor.stop()
    count = _sample(metrics, "teleconsult_event_loop_lag_seconds_count")
    await asyncio.sleep(0.05)

    assert not monitor.running
    assert _sample(metrics, "teleconsult_event_loop_lag_seconds_count") == count
    await monitor.stop()  # idempotent


async def test_with_a_token_only_its_bearer_may_scrape(aiohttp_client: AiohttpClient) -> None:
    metrics = Metrics()
    client = await aiohttp_client(metrics.app("a-token-of-sixteen-or-more"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await client.get(
        "/metrics", headers={"Authorization": "Bearer a-token-of-sixteen-or-more"}
    )
    assert resp.status == 200
    assert "teleconsult_authz_refusals_total" in await resp.text()


async def test_without_a_token_anyone_may_scrape(aiohttp_client: AiohttpClient) -> None:
    client = await aiohttp_client(Metrics().app(None))
    resp = await client.get("/metrics")
    assert resp.status == 200
