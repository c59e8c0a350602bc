"""Added latency of the capture gateway over direct calls to the upstream, and rows captured vs sent.

The upstream is the project's replay server (``flywheel/rewards/replay_server.py``, non-streaming, a fixed latency
per call, default 10 ms) in its own process; the gateway is a real ``flywheel gateway`` process in front of it,
capturing into a temporary folder, and beside it a bare proxy (uvicorn + a raw ASGI handler + aiohttp, nothing
else: the floor of any Python proxy on the machine). For each concurrency (default 1, 16, 64 clients in one
asyncio aiohttp client process), the same number of chat calls goes straight to the upstream, through the bare
proxy, then through the gateway; the table gives p50 / p99 of each, the gateway's added latency over direct calls,
and over the bare proxy (what capture, routing and checks cost beyond the extra hop). At the end the gateway is
stopped with SIGTERM and the rows in the sink are counted against the calls it answered (goal: none lost; added
p50 <= 2 ms).

    .venv/bin/python benchmarks/bench_gateway.py [--requests 600] [--latency-ms 10] [--concurrency 1,16,64]
                                                 [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHAT = [{"role": "system", "content": "Answer with one line of JSON."},
        {"role": "user", "content": "Hi, I want a refund for order 123456, it arrived broken."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_upstream(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.rewards.replay_server", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, proc.stdout.readline().strip()


def serve_bare_proxy(upstream: str, port: int) -> None:
    """The floor of any Python proxy here: uvicorn (uvloop, httptools) + a raw ASGI handler + aiohttp, no capture,
    no routing, no checks (``--serve-bare-proxy``)."""
    import aiohttp
    import uvicorn

    session = None

    async def app(scope, receive, send):
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        async with session.post(upstream + "/chat/completions", data=body,
                                headers={"content-type": "application/json"}) as r:
            data = await r.read()
        await send({"type": "http.response.start", "status": r.status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, proxy_headers=False)


def start_bare_proxy(upstream: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-bare-proxy", upstream, "--port", str(port)], cwd=ROOT,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("bare proxy did not start")


def start_gateway(tmp: Path, upstream: str) -> tuple[subprocess.Popen, str]:
    import httpx
    import yaml

    port = free_port()
    config = tmp / "flywheel.yaml"
    config.write_text(yaml.safe_dump({
        "project": {"state_dir": str(tmp / "state")}, "source": {"uri": str(tmp / "logs")},
        "gateway": {"port": port, "upstream_url": upstream, "capture": {"max_seconds": 5}}}))
    proc = subprocess.Popen([sys.executable, "-c", "from flywheel.cli import main; main()", "gateway", "--config",
                             str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url + "/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start in 60 s")


async def load(base_url: str, n: int, concurrency: int) -> tuple[list[float], int]:
    """``n`` chat calls, ``concurrency`` in flight (aiohttp: httpx's pool would be the bottleneck); (latencies in
    ms, calls answered with a receipt)."""
    import aiohttp

    latencies, receipts = [], 0
    body = json.dumps({"model": "m", "messages": CHAT, "max_tokens": 32}).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker(count: int, who: int) -> None:
            nonlocal receipts
            for i in range(count):
                start = time.perf_counter()
                async with session.post(base_url + "/chat/completions", data=body,
                                        headers={"content-type": "application/json",
                                                 "x-user-id": f"u{who}-{i % 7}"}) as r:
                    await r.read()
                    latencies.append((time.perf_counter() - start) * 1000)
                    r.raise_for_status()
                    receipts += "x-request-id" in r.headers

        share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
        await asyncio.gather(*(worker(c, i) for i, c in enumerate(share)))
    return latencies, receipts


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def count_rows(logs: Path) -> int:
    return sum(len(gzip.decompress(p.read_bytes()).splitlines()) for p in logs.glob("dt=*/*.jsonl.gz"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600, help="calls per concurrency level and side")
    ap.add_argument("--latency-ms", type=float, default=10.0, help="the upstream's latency per call")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--serve-bare-proxy", metavar="UPSTREAM", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bare_proxy:
        return serve_bare_proxy(args.serve_bare_proxy, args.port)
    levels = [int(c) for c in args.concurrency.split(",")]
    results, sent = [], 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        upstream, upstream_url = start_upstream(args.latency_ms)
        bare, bare_url = start_bare_proxy(upstream_url)
        gateway, gateway_url = start_gateway(tmp, upstream_url)
        try:
            for url in (upstream_url, bare_url, gateway_url):  # warm-up every side
                asyncio.run(load(url, 50, 4))
            sent += 50
            for c in levels:
                direct, _ = asyncio.run(load(upstream_url, args.requests, c))
                floor, _ = asyncio.run(load(bare_url, args.requests, c))
                via, receipts = asyncio.run(load(gateway_url, args.requests, c))
                sent += receipts
                row = {"concurrency": c, "requests": args.requests,
                       "direct_p50_ms": quantile(direct, 0.5), "direct_p99_ms": quantile(direct, 0.99),
                       "bare_proxy_p50_ms": quantile(floor, 0.5), "bare_proxy_p99_ms": quantile(floor, 0.99),
                       "gateway_p50_ms": quantile(via, 0.5), "gateway_p99_ms": quantile(via, 0.99)}
                row["added_p50_ms"] = row["gateway_p50_ms"] - row["direct_p50_ms"]
                row["added_p99_ms"] = row["gateway_p99_ms"] - row["direct_p99_ms"]
                row["over_bare_p50_ms"] = row["gateway_p50_ms"] - row["bare_proxy_p50_ms"]
                results.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(60)
            for proc in (bare, upstream):
                proc.terminate()
                proc.wait(10)
        captured = count_rows(tmp / "logs")
    print(f"upstream latency {args.latency_ms:g} ms, {args.requests} calls per side and level, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| clients | direct p50 / p99 ms | bare proxy p50 / p99 ms | gateway p50 / p99 ms | added by the gateway "
          "p50 / p99 ms | gateway - bare proxy p50 ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['concurrency']} | {r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f} | "
              f"{r['bare_proxy_p50_ms']:.2f} / {r['bare_proxy_p99_ms']:.2f} | "
              f"{r['gateway_p50_ms']:.2f} / {r['gateway_p99_ms']:.2f} | "
              f"**{r['added_p50_ms']:+.2f}** / {r['added_p99_ms']:+.2f} | {r['over_bare_p50_ms']:+.2f} |")
    print(f"rows: {sent} answered with a receipt, {captured} captured in the sink "
          f"({'none lost' if captured == sent else f'{sent - captured} LOST'})")
    if args.json:
        args.json.write_text(json.dumps({"latency_ms": args.latency_ms, "levels": results, "rows_sent": sent,
                                         "rows_captured": captured, "load_average": os.getloadavg()[0]}, indent=2))


if __name__ == "__main__":
    main()
