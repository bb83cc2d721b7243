-- puabo-nexus-driver-app-backend: drivers (with their vehicle), shifts, job offers, earnings per job.

CREATE TABLE drivers (
    id                uuid PRIMARY KEY,
    -- The principal subject of the driver's app: a driver sees only their own things.
    user_id           text             NOT NULL UNIQUE,
    name              text             NOT NULL,
    fleet_id          text             NOT NULL,
    vehicle_id        text             NOT NULL,
    vehicle_type      text             NOT NULL,
    capacity_kg       double precision NOT NULL CHECK (capacity_kg >= 0),
    -- The job of the offer the driver accepted and has not finished: not available meanwhile.
    busy_job          text,
    -- Ledger accounts (liability) of what the platform owes the driver, per currency: {"USD": "<uuid>"}.
    payable_accounts  jsonb            NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX drivers_fleet ON drivers (fleet_id);

CREATE TABLE driver_shifts (
    id             uuid PRIMARY KEY,
    driver_id      uuid        NOT NULL REFERENCES drivers (id),
    started_at     timestamptz NOT NULL,
    planned_end_at timestamptz NOT NULL,
    ended_at       timestamptz,
    CHECK (planned_end_at > started_at)
);
-- At most one open shift per driver, whatever races to start one.
CREATE UNIQUE INDEX driver_shifts_open ON driver_shifts (driver_id) WHERE ended_at IS NULL;
CREATE INDEX driver_shifts_driver ON driver_shifts (driver_id, started_at DESC);

CREATE TABLE driver_offers (
    id          text PRIMARY KEY,  -- ai-dispatch's offer id
    driver_id   uuid        NOT NULL REFERENCES drivers (id),
    job_id      text        NOT NULL,
    job         jsonb       NOT NULL,
    status      text        NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'withdrawn')),
    reason      text,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    answered_at timestamptz
);
CREATE INDEX driver_offers_driver ON driver_offers (driver_id, created_at DESC, id);

CREATE TABLE driver_earnings (
    id         uuid PRIMARY KEY,
    driver_id  uuid        NOT NULL REFERENCES drivers (id),
    job_id     text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount >= 0),
    currency   char(3)     NOT NULL,
    -- The ledger entry that paid it into the driver's payable account, once posted.
    entry_id   uuid,
    posted_at  timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (driver_id, job_id)
);
CREATE INDEX driver_earnings_unposted ON driver_earnings (created_at) WHERE entry_id IS NULL AND amount > 0;
