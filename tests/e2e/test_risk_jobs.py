"""risk-assessment's Ray jobs on the session cluster: a batch run submitted through the API (runtime.jobs)
scores stored applications as Ray tasks over chunks, writes each one once, and reports its progress."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

API = "/finance/v1/risk"
APPLICATION = {
    "checking_account": "under_200", "duration_months": 24, "credit_history": "existing_paid_duly",
    "purpose": "radio_tv", "credit_amount": 3000, "savings": "under_100", "employment_since": "1_to_4_years",
    "installment_rate": 3, "other_debtors": "none", "residence_since": 2, "property": "car_or_other", "age": 30,
    "other_installment_plans": "none", "housing": "rent", "existing_credits": 1, "job": "skilled", "dependents": 1,
    "telephone": "none",
}


async def test_a_submitted_batch_job_scores_every_application_once_as_ray_tasks(ray_client, bearer, until):
    from nexus_ray.deployments.finance.risk import service
    from nexus_ray.runtime import jobs
    from nexus_ray.stores import postgres

    admin = bearer("finance:risk:*", subject="risk-ops")
    p = await postgres.pool()
    if await p.fetchval("SELECT model_id FROM risk_active") is None:
        await service.train(sample=200, seed=5, trained_by="tests", c_grid=(0.1,))
    items = [{**APPLICATION, "duration_months": 6 + i % 54, "credit_amount": 500 + 37 * i} for i in range(300)]
    r = await ray_client.post(f"{API}/applications", json={"items": items}, headers=admin)
    assert r.status_code == 201, r.text
    ids = r.json()["ids"]

    r = await ray_client.post(f"{API}/batches", json={"from_id": ids[0], "to_id": ids[-1], "chunk_size": 100},
                              headers=admin)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "submitted" and job["submission_id"].startswith("risk-score-")

    async def finished():
        r = await ray_client.get(f"{API}/jobs/{job['id']}", headers=admin)
        body = r.json()
        return body if body["status"] in ("succeeded", "failed") else None

    done = await until(finished, within_s=120, every=0.5)
    assert done["status"] == "succeeded", (done, jobs.logs(job["submission_id"])[-3000:])
    assert done["total"] == done["done"] == 300 and done["result"]["chunks"] == 3 and done["result"]["ray"]
    # The job's own progress lines, read back through runtime.jobs.
    await until(lambda: jobs.info(job["submission_id"]).terminal, within_s=30, every=0.5)
    progress = jobs.progress(job["submission_id"])
    assert progress["result"]["scored"] == 300 and progress["progress"]["done"] == 300
    # The record was read while Ray still ran the job's last lines; read it again now Ray says it ended.
    r = await ray_client.get(f"{API}/jobs/{job['id']}", headers=admin)
    assert r.json()["ray"] is not None and r.json()["ray"]["status"] == "SUCCEEDED", r.json()

    rows = await p.fetch("SELECT application_id FROM risk_scores WHERE job_id = $1::uuid", job["id"])
    assert sorted(r["application_id"] for r in rows) == ids  # each once (and the key forbids twice)
    r = await ray_client.get(f"{API}/jobs/{job['id']}/scores", params={"limit": 1000}, headers=admin)
    assert [s["application_id"] for s in r.json()["items"]] == ids and all(s["reasons"] for s in r.json()["items"])
