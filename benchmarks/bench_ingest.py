"""Ingest throughput and memory: observe + validate on N demo log rows, local JSONL and S3 (moto_server), by phase.

    .venv/bin/python benchmarks/bench_ingest.py                     # 1M rows, local + S3 + peer, prints a table
    .venv/bin/python benchmarks/bench_ingest.py --rows 200000 --json out.json --skip-s3

Every scenario runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. "ingest s" is observe start to
validate end (imports excluded; they are shown apart). The peer is the obvious baseline: stdlib ``json.loads`` per
line, ``pandas.json_normalize``, Parquet write, no validation at all (on ``--peer-rows`` rows, rate compared).
``--parse-paths native,msgspec`` compares the JSONL parse paths; ``--sizes 100000,5000000`` adds local runs at other
sizes (time and peak RSS per row should stay flat).
Goal (issue 14): >= 250,000 rows/s end-to-end for local JSONL, <= 2 GB peak RSS, 1M rows, 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(data: Path, rows: int, defect_rate: float) -> None:
    marker = data / f".rows-{rows}-{defect_rate}"
    if marker.exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    from demo.support_triage import generate_logs

    days = 4
    generate_logs(data, days=days, rows_per_day=rows // days, seed=0, defect_rate=defect_rate,
                  start_date="2026-10-01", fmt="jsonl", parts_per_day=4)
    marker.touch()


def worker(args) -> dict:
    """One scenario in this process; returns its phase times and its own peak RSS."""
    result = _scenario(args)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime + kids.ru_utime + kids.ru_stime


def _scenario(args) -> dict:
    t0 = time.perf_counter()
    if args.worker == "peer":
        import pandas as pd
    else:
        import great_expectations  # noqa: F401

        from flywheel.config.data import S3Config, SourceConfig, ValidateConfig
        from tasks.observe import observe
        from tasks.validate import GateFailed, validate
    imports = time.perf_counter() - t0
    start = time.perf_counter()
    cpu0 = _cpu()
    if args.worker == "peer":
        import pandas as pd
        files = sorted(Path(args.source).rglob("dt=*/*.jsonl"))
        records, n = [], 0
        for f in files:
            for line in f.read_bytes().splitlines():
                if n >= args.peer_rows:
                    break
                n += 1
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    records.append(obj)
        t_parse = time.perf_counter() - start
        frame = pd.json_normalize(records)
        frame["messages"] = frame["messages"].map(json.dumps)
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith("metadata")])
        frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(
            Path(args.state) / "peer.parquet")
        total = time.perf_counter() - start
        return {"scenario": "peer", "rows": n, "imports_s": imports, "ingest_s": total, "cpu_s": _cpu() - cpu0,
                "phases": {"read+parse": t_parse, "normalize+write": total - t_parse}}
    s3 = S3Config(endpoint_url=args.endpoint) if args.endpoint else S3Config()
    obs = observe(SourceConfig(uri=args.source, s3=s3, parse_workers=args.parse_workers), args.state)
    try:
        val = validate(obs.snapshot_uri, args.state, ValidateConfig(), snapshot_hash=obs.snapshot_hash)
    except GateFailed as e:
        val = e.validation
    total = time.perf_counter() - start
    o, v = obs.seconds, val.seconds
    phases = {"list": o.get("list", 0), "read": o["read"], "parse": o["parse"], "write raw": o["write"],
              "validate keys pass": v["keys"], "validate checks (GX)": v["checks"], "quarantine": v["quarantine"],
              "pii": v["pii"], "write clean": v["write"]}
    phases["other"] = total - sum(phases.values())
    return {"scenario": args.worker, "rows": val.rows_in, "rows_clean": val.rows_clean, "cpu_s": _cpu() - cpu0,
            "rows_quarantined": val.rows_quarantined, "imports_s": imports, "ingest_s": total, "phases": phases}


def run_scenario(name: str, source: str, state: Path, endpoint: str | None, peer_rows: int,
                 parse_workers: int = 1, parse_path: str = "native") -> dict:
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--worker", name, "--source", source, "--state", str(state),
           "--peer-rows", str(peer_rows), "--parse-workers", str(parse_workers)] + (
               ["--endpoint", endpoint] if endpoint else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "AWS_ACCESS_KEY_ID": "x",
                         "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                         "FLYWHEEL_PARSE_PATH": parse_path})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["scenario"] = (name if parse_workers == 1 else f"{name}-{parse_workers}p") + (
        "" if parse_path == "native" else f"-{parse_path}")
    result["parse_path"] = parse_path
    result["rows_per_s"] = round(result["rows"] / result["ingest_s"])
    result["rows_per_cpu_s"] = round(result["rows"] / max(result["cpu_s"], 1e-9))   # load-independent
    return result


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def upload(endpoint: str, data: Path) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")
    s3.create_bucket(Bucket="bench-logs")
    cfg = TransferConfig(multipart_threshold=1 << 30)
    for f in sorted(data.rglob("dt=*/*.jsonl")):
        s3.upload_file(str(f), "bench-logs", f"logs/{f.relative_to(data).as_posix()}", Config=cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="", help="Also run local (native path) at these row counts, e.g. "
                    "100000,5000000: rows/s and peak RSS per row must stay flat.")
    ap.add_argument("--parse-paths", default="native", help="Local runs with these parse paths (comma-separated: "
                    "native = Arrow's JSON reader, msgspec = the per-line msgspec fast path, exact = orjson per line)")
    ap.add_argument("--defect-rate", type=float, default=0.05)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "flywheel-bench-ingest")
    ap.add_argument("--peer-rows", type=int, default=200_000)
    ap.add_argument("--parse-workers", type=int, default=1, help="Also run local with this many parse processes.")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--json", type=Path, help="Write the figures here.")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    generate(args.data / "logs", args.rows, args.defect_rate)
    print(f"data: {args.rows} rows ({args.defect_rate:.0%} defects) in {args.data / 'logs'} "
          f"({time.perf_counter() - t0:.0f} s to generate or reuse)", flush=True)
    paths = args.parse_paths.split(",")
    results = [run_scenario("local", str(args.data / "logs"), args.data / "state-local", None, args.peer_rows,
                            parse_path=path) for path in paths]
    if args.parse_workers > 1:
        results.append(run_scenario("local", str(args.data / "logs"), args.data / "state-local", None,
                                    args.peer_rows, args.parse_workers))
    if not args.skip_s3:
        proc, endpoint = start_moto()
        try:
            t0 = time.perf_counter()
            upload(endpoint, args.data / "logs")
            print(f"uploaded to moto_server in {time.perf_counter() - t0:.0f} s", flush=True)
            results.append(run_scenario("s3", "s3://bench-logs/logs", args.data / "state-s3", endpoint,
                                        args.peer_rows))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not args.skip_peer:
        results.append(run_scenario("peer", str(args.data / "logs"), args.data / "state-peer", None, args.peer_rows))

    for size in [int(x) for x in args.sizes.split(",") if x]:
        folder = args.data.with_name(f"{args.data.name}-{size}")
        generate(folder / "logs", size, args.defect_rate)
        results.append({**run_scenario("local", str(folder / "logs"), folder / "state", None, args.peer_rows),
                        "scenario": f"local-{size // 1000}k"})
        shutil.rmtree(folder / "state", ignore_errors=True)
    for r in results:
        r["rss_bytes_per_row"] = round((r["peak_rss_mb"] or 0) * 2**20 / max(r["rows"], 1))
        r["us_per_row"] = round(r["ingest_s"] / max(r["rows"], 1) * 1e6, 2)
    phases = list(results[0]["phases"])
    head = (f"{'scenario':16}{'rows':>10}{'ingest s':>10}{'rows/s':>10}{'cpu s':>8}{'rows/cpu-s':>11}{'peak MB':>9}"
            f"{'B/row':>7}{'imports s':>10}")
    print(head)
    for r in results:
        print(f"{r['scenario']:16}{r['rows']:>10}{r['ingest_s']:>10.2f}{r['rows_per_s']:>10}{r['cpu_s']:>8.1f}"
              f"{r['rows_per_cpu_s']:>11}{r['peak_rss_mb'] or 0:>9}{r['rss_bytes_per_row']:>7}{r['imports_s']:>10.2f}")
    ours = [r for r in results if r["scenario"] != "peer"]
    print(f"\n{'phase seconds':22}" + "".join(f"{r['scenario']:>16}" for r in ours))
    for p in phases:
        print(f"{p:22}" + "".join(f"{r['phases'].get(p, 0):>16.2f}" for r in ours))
    local = results[0]
    peer = next((r for r in results if r["scenario"] == "peer"), None)
    figures = {"rows": args.rows, "defect_rate": args.defect_rate, "cpu_count": os.cpu_count(),
               "load_avg_1m": os.getloadavg()[0], "load_avg_1m_start": load_start, "results": results,
               "goal": {"rows_per_s": 250_000, "peak_rss_mb": 2048},
               "local_meets_rate_goal": local["rows_per_s"] >= 250_000,
               "local_meets_memory_goal": (local["peak_rss_mb"] or 0) <= 2048}
    if peer:
        figures["speedup_vs_peer"] = round(local["rows_per_s"] / peer["rows_per_s"], 2)
        figures["cpu_efficiency_vs_peer"] = round(local["rows_per_cpu_s"] / peer["rows_per_cpu_s"], 2)
        print(f"\nlocal vs peer (json.loads + json_normalize + Parquet, no validation): "
              f"{figures['speedup_vs_peer']}x rows/s, {figures['cpu_efficiency_vs_peer']}x rows per CPU-second")
    print(f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}, "
          f"on {os.cpu_count()} cores: "
          "with other work on the machine, rows per CPU-second is the fair figure")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
