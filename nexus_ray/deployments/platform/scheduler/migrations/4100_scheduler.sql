-- scheduler: schedules, their runs (one per (schedule, due time)) and the leases that make a run live.
-- Why leases rather than locks: see nexus_ray/deployments/platform/scheduler/service.py.

CREATE TABLE scheduler_schedules (
    id             uuid PRIMARY KEY,
    name           text        NOT NULL UNIQUE,
    kind           text        NOT NULL CHECK (kind IN ('cron', 'once')),
    cron           text,
    timezone       text        NOT NULL DEFAULT 'UTC',
    run_at         timestamptz,
    target_type    text        NOT NULL CHECK (target_type IN ('job', 'task')),
    target         text        NOT NULL,
    args           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    missed_policy  text        NOT NULL DEFAULT 'run_once' CHECK (missed_policy IN ('skip', 'run_once', 'run_all')),
    paused         boolean     NOT NULL DEFAULT false,
    -- NULL for a cron schedule: not planned yet (the next tick plans it from now); for a one-off: done.
    next_due_at    timestamptz,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'cron') = (cron IS NOT NULL)),
    CHECK (kind = 'cron' OR run_at IS NOT NULL)
);
CREATE INDEX scheduler_schedules_due ON scheduler_schedules (next_due_at) WHERE NOT paused;

CREATE TABLE scheduler_runs (
    id            uuid PRIMARY KEY,
    schedule_id   uuid        NOT NULL REFERENCES scheduler_schedules (id) ON DELETE CASCADE,
    due_at        timestamptz NOT NULL,
    trigger       text        NOT NULL CHECK (trigger IN ('schedule', 'missed', 'manual')),
    status        text        NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    attempt       integer     NOT NULL DEFAULT 0,
    holder        text,
    submission_id text,
    logs_url      text,
    error         text,
    started_at    timestamptz,
    finished_at   timestamptz,
    duration_s    double precision,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- A due time is run once, whichever scheduler loops plan it.
    UNIQUE (schedule_id, due_at)
);
CREATE INDEX scheduler_runs_pending ON scheduler_runs (due_at) WHERE status IN ('pending', 'running');
CREATE INDEX scheduler_runs_history ON scheduler_runs (schedule_id, due_at DESC);

-- One row per schedule with a live run: the primary key makes "at most one live run per schedule".
-- The holder renews expires_at while its run is live; a crashed holder's row expires and another loop
-- takes the run over (nothing a crash leaves behind stays held).
CREATE TABLE scheduler_leases (
    schedule_id uuid PRIMARY KEY REFERENCES scheduler_schedules (id) ON DELETE CASCADE,
    run_id      uuid        NOT NULL REFERENCES scheduler_runs (id) ON DELETE CASCADE,
    holder      text        NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The first schedule: the platform's housekeeping job, daily at 03:17 UTC (planned by the first tick).
INSERT INTO scheduler_schedules (id, name, kind, cron, timezone, target_type, target, missed_policy, created_by)
VALUES ('00000000-0000-4000-8000-000000004100', 'housekeeping', 'cron', '17 3 * * *', 'UTC', 'job',
        'housekeeping', 'run_once', 'platform');
