"""A real Prometheus server scrapes a running Jobsite: the exposition is valid and worker metrics arrive.

Method: a throwaway stack (bench/stack.py), a few sync and async jobs, `promtool check metrics` on one
scrape, then Debian's `prometheus` scraping /metrics every second; the script queries Prometheus's HTTP API
for `up` and for the job counters that only the RQ workers increment.

    apt-get install prometheus   # once
    .venv/bin/python -m bench.prometheus_check
"""

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.stack import free_port, running_stack

QUERIES = [
    "up",
    'sum(jobsite_jobs_finished_total{mode="async",outcome="succeeded"})',
    "sum(jobsite_job_run_seconds_count)",
    'jobsite_queue_depth{queue="jobs"}',
    "sum(django_http_requests_total_by_method_total)",
]


def main() -> None:
    if not shutil.which("prometheus"):
        raise SystemExit("prometheus is not installed: apt-get install prometheus")
    with running_stack() as stack, tempfile.TemporaryDirectory() as scratch:
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        body = {"kind": "hash", "input": {"data": "scrape", "iterations": 100}}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            for _ in range(5):
                client.post("/api/v1/jobs/sync/", json=body).raise_for_status()
                client.post("/api/v1/jobs/async/", json=body).raise_for_status()
            time.sleep(2)
            exposition = client.get("/metrics").text
        check = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
        print("promtool check metrics:", "OK" if check.returncode == 0 else check.stdout + check.stderr)
        port = free_port()
        target = stack.url.removeprefix("http://")
        config = Path(scratch) / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: jobsite\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        server = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={scratch}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            api = f"http://127.0.0.1:{port}/api/v1"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until Prometheus has scraped the target at least twice
                time.sleep(1)
                with contextlib.suppress(httpx.HTTPError):
                    up = httpx.get(f"{api}/query", params={"query": "count_over_time(up[1m])"}).json()
                    if up["data"]["result"] and float(up["data"]["result"][0]["value"][1]) >= 2:
                        break
            for target in httpx.get(f"{api}/targets").json()["data"]["activeTargets"]:
                print(f"target {target['scrapeUrl']}: {target['health']} {target.get('lastError', '')}")
            for query in QUERIES:
                answer = httpx.get(f"{api}/query", params={"query": query}).json()
                values = [sample["value"][1] for sample in answer["data"]["result"]]
                print(f"{query:<70} {values}")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
