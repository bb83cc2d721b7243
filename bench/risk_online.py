"""Online risk scoring through the entrypoint at fixed rates (open loop, wrk2).

    flock /tmp/nexus-ray.lock timeout 1200 bash bench/with_stack.sh python bench/risk_online.py \
        [--rates 50,100,200] [--duration 20] [--connections 16]

Against a running stack (bench/with_stack.sh starts a private one). When no model is active it asks
for one to be trained (``POST /finance/v1/risk/training``, the Ray job) and waits for it. Then, for
each rate, wrk2 sends ``POST /finance/v1/risk/score`` with one applicant's JSON at that constant rate;
latency counts from each request's intended send time (coordinated omission corrected). Every answer
is a full score: the probability of default, the band and the reasons in words.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replica_kill import parse_wrk2

API = "/finance/v1/risk"
APPLICANT = {
    "checking_account": "under_200", "duration_months": 24, "credit_history": "existing_paid_duly",
    "purpose": "used_car", "credit_amount": 4200, "savings": "under_100", "employment_since": "1_to_4_years",
    "installment_rate": 3, "other_debtors": "none", "residence_since": 2, "property": "car_or_other", "age": 33,
    "other_installment_plans": "none", "housing": "rent", "existing_credits": 1, "job": "skilled", "dependents": 1,
    "telephone": "none",
}


def token(*scopes: str) -> str:
    args = [sys.executable, "-m", "nexus_ray.cli", "token", "bench-risk", "--ttl", "3600"]
    for scope in scopes:
        args += ["-s", scope]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


def ensure_model(api: str, headers: dict[str, str]) -> str:
    with httpx.Client(base_url=api, headers=headers, timeout=30) as c:
        r = c.get(f"{API}/models/active")
        if r.status_code == 404:
            r = c.post(f"{API}/training", json={})
            assert r.status_code in (202, 409), r.text
            deadline = time.monotonic() + 600
            while (r := c.get(f"{API}/models/active")).status_code == 404:
                assert time.monotonic() < deadline, "no model trained in 10 minutes"
                time.sleep(2)
        r.raise_for_status()
        check = c.post(f"{API}/score", json=APPLICANT)
        check.raise_for_status()
        print("one answer:", json.dumps(check.json()), flush=True)
        return str(r.json()["id"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", default=f"http://127.0.0.1:{os.environ.get('NEXUS_HTTP_PORT', '8000')}")
    ap.add_argument("--rates", default="50,100,200")
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    tok = token("finance:risk:*")
    model = ensure_model(args.api, {"Authorization": f"Bearer {tok}"})
    print("active model:", model, flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(json.dumps(APPLICANT))}\n")
    for rate in [int(r) for r in args.rates.split(",") if r]:
        out = subprocess.run([os.environ.get("WRK2", "wrk2"), "-t2", f"-c{args.connections}", f"-d{args.duration}s",
                              f"-R{rate}", "--latency", "-s", script.name, "-H", f"Authorization: Bearer {tok}",
                              f"{args.api}{API}/score"], capture_output=True, text=True, check=True).stdout
        print(json.dumps({"rate": rate, **parse_wrk2(out)}), flush=True)
    os.unlink(script.name)


if __name__ == "__main__":
    main()
