"""Prometheus text exposition of the gateway's counters (``GET /metrics``), kept in plain dicts off any lock.

Everything is updated from the event loop thread only (one writer), so no lock is needed; the capture figures are
read from the writer's stats when ``/metrics`` is scraped.

- ``flywheel_gateway_requests_total{arm, model_version, status}``: chat calls answered, by HTTP status;
- ``flywheel_gateway_upstream_errors_total{arm, model_version}``: upstream failures (connection, 5xx, timeouts);
- ``flywheel_gateway_latency_ms_bucket{arm, model_version, le}`` (+ ``_sum``, ``_count``): end-to-end latency;
- ``flywheel_gateway_feedback_events_total``; ``flywheel_gateway_shadow_requests_total``;
- ``flywheel_gateway_capture_rows_total{stream, state}`` (accepted | written), ``..._capture_lag_seconds{stream}``
  (age of the oldest accepted row not yet in the sink), ``..._capture_write_errors_total{stream}``.
"""
from __future__ import annotations

import bisect
from collections import defaultdict

BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[int]] = {}
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.feedback_events = 0
        self.shadow_requests = 0

    def observe(self, arm: str, version: str, status: int, latency_ms: float) -> None:
        self.requests[(arm, version, status)] += 1
        counts = self.latency.setdefault((arm, version), [0] * (len(BUCKETS_MS) + 1))
        counts[bisect.bisect_left(BUCKETS_MS, latency_ms)] += 1
        self.latency_sum[(arm, version)] += latency_ms

    def error(self, arm: str, version: str) -> None:
        self.errors[(arm, version)] += 1

    def render(self, captures: dict) -> str:
        """The exposition text; ``captures`` maps a stream name to its ``Capture``."""
        out = ["# HELP flywheel_gateway_requests_total Chat completion calls answered, by HTTP status.",
               "# TYPE flywheel_gateway_requests_total counter"]
        for (arm, version, status), n in sorted(self.requests.items()):
            out.append(f"flywheel_gateway_requests_total{_labels(arm=arm, model_version=version, status=status)} {n}")
        out += ["# HELP flywheel_gateway_upstream_errors_total Upstream failures (connection, 5xx, timeout).",
                "# TYPE flywheel_gateway_upstream_errors_total counter"]
        for (arm, version), n in sorted(self.errors.items()):
            out.append(f"flywheel_gateway_upstream_errors_total{_labels(arm=arm, model_version=version)} {n}")
        out += ["# HELP flywheel_gateway_latency_ms End-to-end latency of chat calls, milliseconds.",
                "# TYPE flywheel_gateway_latency_ms histogram"]
        for (arm, version), counts in sorted(self.latency.items()):
            total = 0
            for le, n in zip([*map(str, BUCKETS_MS), "+Inf"], counts):
                total += n
                out.append(f"flywheel_gateway_latency_ms_bucket{_labels(arm=arm, model_version=version, le=le)} "
                           f"{total}")
            out.append(f"flywheel_gateway_latency_ms_sum{_labels(arm=arm, model_version=version)} "
                       f"{self.latency_sum[(arm, version)]:.3f}")
            out.append(f"flywheel_gateway_latency_ms_count{_labels(arm=arm, model_version=version)} {total}")
        out += ["# TYPE flywheel_gateway_feedback_events_total counter",
                f"flywheel_gateway_feedback_events_total {self.feedback_events}",
                "# TYPE flywheel_gateway_shadow_requests_total counter",
                f"flywheel_gateway_shadow_requests_total {self.shadow_requests}",
                "# HELP flywheel_gateway_capture_rows_total Rows accepted into the WAL / written to the sink.",
                "# TYPE flywheel_gateway_capture_rows_total counter"]
        for stream, cap in sorted(captures.items()):
            out.append(f"flywheel_gateway_capture_rows_total{_labels(stream=stream, state='accepted')} "
                       f"{cap.stats.rows_accepted}")
            out.append(f"flywheel_gateway_capture_rows_total{_labels(stream=stream, state='written')} "
                       f"{cap.stats.rows_written}")
        out.append("# HELP flywheel_gateway_capture_lag_seconds Age of the oldest accepted row not yet in the sink.")
        out.append("# TYPE flywheel_gateway_capture_lag_seconds gauge")
        for stream, cap in sorted(captures.items()):
            out.append(f"flywheel_gateway_capture_lag_seconds{_labels(stream=stream)} {cap.lag_seconds():.3f}")
        out.append("# TYPE flywheel_gateway_capture_write_errors_total counter")
        for stream, cap in sorted(captures.items()):
            out.append(f"flywheel_gateway_capture_write_errors_total{_labels(stream=stream)} "
                       f"{cap.stats.write_errors}")
        return "\n".join(out) + "\n"
