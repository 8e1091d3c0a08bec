"""Prometheus metrics of the service, on their own registry (several servers can live in one process, as in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "emu35_robot_requests", "Finished RPCs by method and status code.", ["method", "code"], registry=r
        )
        self.queue_depth = Gauge("emu35_robot_queue_depth", "Requests waiting for the decoder.", registry=r)
        self.in_flight = Gauge("emu35_robot_decoding", "Requests decoding now.", registry=r)
        self.batch_streams = Gauge("emu35_robot_batch_streams", "Requests in the last batched decode step.", registry=r)
        self.sessions = Gauge("emu35_robot_explore_sessions", "Open Explore sessions.", registry=r)
        self.first_event = Histogram(
            "emu35_robot_time_to_first_event_seconds",
            "Request arrival to its first streamed event.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_subgoal = Histogram(
            "emu35_robot_time_to_first_subgoal_seconds",
            "Plan arrival to its first completed subgoal (text + key-frame).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "emu35_robot_decode_tokens_per_second",
            "Generated tokens per second of decoding, per request.",
            ["method"],
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.tokens = Counter("emu35_robot_generated_tokens", "Generated tokens.", ["method"], registry=r)
        self._http = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose /metrics over HTTP; returns the bound port (port 0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=addr, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
