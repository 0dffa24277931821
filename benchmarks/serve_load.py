"""Load on ``dreambooth serve``: N concurrent clients x M txt2img requests on the toy model.

Starts the server (``python -m dreambooth serve --model toy``), warms it up, then prints the latency
(p50, p99), the errors, and the server's RSS after warm-up and after the load (a leak shows as RSS
that keeps growing). A benchmark, not a test.

    python benchmarks/serve_load.py --clients 16 --requests 8
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2, help="rounds of --clients concurrent requests before measuring")
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="serve-load-")
    env = {**os.environ, "DREAMBOOTH_NO_PROGRESS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "dreambooth", "serve", "--model", "toy", "--port", str(port),
                               "--data-dir", data], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/sdapi/v1/sd-models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if time.time() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        body = {"prompt": "a red circle on a blue background", "steps": args.steps, "width": args.size,
                "height": args.size, "seed": 1}

        def one(k: int) -> tuple[float, bool]:
            started = time.perf_counter()
            try:
                reply = httpx.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": k}, timeout=600)
                ok = reply.status_code == 200 and len(reply.json()["images"]) == 1
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - started, ok

        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:   # the same concurrency: threads, buffers
            list(pool.map(one, range(args.warmup * args.clients)))
        rss_warm = rss_mib(server.pid)
        total = args.clients * args.requests
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(total)))
        wall = time.perf_counter() - started
        rss_after = rss_mib(server.pid)
        latencies = sorted(t for t, _ in results)
        errors = sum(not ok for _, ok in results)
        p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
        print(f"{args.clients} clients x {args.requests} requests (txt2img, toy model, {args.size} px, {args.steps} steps)"
              f" on {os.cpu_count()} CPUs")
        print(f"latency p50 {statistics.median(latencies):.2f} s, p99 {p99:.2f} s; {total / wall:.2f} requests/s; "
              f"errors {errors}")
        print(f"server RSS after warm-up {rss_warm:.0f} MiB, after the load {rss_after:.0f} MiB "
              f"({(rss_after / rss_warm - 1) * 100:+.1f}%)")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
