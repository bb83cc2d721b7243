-- ai-dispatch: delivery jobs to match, offers made to drivers, the rounds of the dispatch loop, and the
-- lease that makes one loop live across replicas.
CREATE TABLE dispatch_jobs (
    job_id        text PRIMARY KEY,
    status        text             NOT NULL CHECK (status IN ('open', 'offered', 'assigned', 'cancelled')),
    pickup_lat    double precision NOT NULL,
    pickup_lon    double precision NOT NULL,
    dropoff_lat   double precision NOT NULL,
    dropoff_lon   double precision NOT NULL,
    weight_kg     double precision NOT NULL CHECK (weight_kg >= 0),
    vehicle_types text[],
    ready_at      timestamptz,
    reference     jsonb            NOT NULL DEFAULT '{}'::jsonb,
    driver_id     text,
    offers_made   integer          NOT NULL DEFAULT 0,
    submitted_by  text             NOT NULL,
    created_at    timestamptz      NOT NULL DEFAULT now(),
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    assigned_at   timestamptz
);
CREATE INDEX dispatch_jobs_open ON dispatch_jobs (created_at) WHERE status = 'open';
CREATE INDEX dispatch_jobs_list ON dispatch_jobs (created_at DESC, job_id DESC);

CREATE TABLE dispatch_offers (
    id          uuid PRIMARY KEY,
    job_id      text             NOT NULL REFERENCES dispatch_jobs (job_id),
    driver_id   text             NOT NULL,
    round_id    uuid,
    status      text             NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'expired', 'withdrawn')),
    cost_s      double precision NOT NULL,
    created_at  timestamptz      NOT NULL DEFAULT now(),
    expires_at  timestamptz      NOT NULL,
    answered_at timestamptz
);
-- The rule of dispatch, kept by the database whatever rounds race: a job has at most one live offer,
-- and a driver holds at most one live offer.
CREATE UNIQUE INDEX dispatch_offers_one_live_per_job ON dispatch_offers (job_id) WHERE status = 'pending';
CREATE UNIQUE INDEX dispatch_offers_one_live_per_driver ON dispatch_offers (driver_id) WHERE status = 'pending';
CREATE INDEX dispatch_offers_job ON dispatch_offers (job_id, created_at);
CREATE INDEX dispatch_offers_expiry ON dispatch_offers (expires_at) WHERE status = 'pending';

CREATE TABLE dispatch_rounds (
    id          uuid PRIMARY KEY,
    runner      text             NOT NULL,
    started_at  timestamptz      NOT NULL,
    drivers     integer          NOT NULL,
    jobs        integer          NOT NULL,
    offers      integer          NOT NULL,
    expired     integer          NOT NULL,
    cost_s      double precision NOT NULL,
    solve_ms    double precision NOT NULL,
    total_ms    double precision NOT NULL,
    note        text             NOT NULL DEFAULT ''
);
CREATE INDEX dispatch_rounds_recent ON dispatch_rounds (started_at DESC, id DESC);

-- One row per lease name: the replica whose loop is live, until expires_at (renewed every round).
CREATE TABLE dispatch_leases (
    name       text PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
