-- route-optimizer: asynchronous solve jobs. A job is queued by the API, claimed by one replica's runner
-- (FOR UPDATE SKIP LOCKED), solved as a Ray task while that runner heartbeats it, and ends succeeded,
-- failed or cancelled. A running job whose heartbeat is older than the stale limit (its replica died) is
-- claimed again by another runner.
CREATE TABLE route_jobs (
    id              uuid PRIMARY KEY,
    owner           text             NOT NULL,
    status          text             NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    name            text             NOT NULL,
    customers       integer          NOT NULL,
    backend         text             NOT NULL,
    objective       text             NOT NULL,
    time_limit_s    double precision NOT NULL CHECK (time_limit_s > 0),
    problem         jsonb            NOT NULL,
    solution        jsonb,
    error           text,
    runner          text,
    attempts        integer          NOT NULL DEFAULT 0,
    heartbeat_at    timestamptz,
    idempotency_key text,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX route_jobs_owner ON route_jobs (owner, created_at DESC, id DESC);
CREATE INDEX route_jobs_open ON route_jobs (created_at) WHERE status IN ('queued', 'running');
