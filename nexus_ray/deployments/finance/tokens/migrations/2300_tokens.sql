-- token-mgr: token definitions with their supply (the cap is a CHECK as well as the conditional UPDATE that
-- mints), every operation (mint, burn, transfer, vesting grant and release) with its idempotency key and its
-- ledger entry, vesting schedules and their releases (one row per period: a release runs once).

CREATE TABLE tokens (
    id         uuid PRIMARY KEY,
    code       char(3)     NOT NULL UNIQUE,
    name       text        NOT NULL,
    decimals   smallint    NOT NULL CHECK (decimals BETWEEN 0 AND 18),
    supply_cap bigint      NOT NULL CHECK (supply_cap > 0),
    minted     bigint      NOT NULL DEFAULT 0,
    burned     bigint      NOT NULL DEFAULT 0,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (minted BETWEEN 0 AND supply_cap),
    CHECK (burned BETWEEN 0 AND minted)
);

CREATE TABLE token_operations (
    id              uuid PRIMARY KEY,
    token_id        uuid        NOT NULL REFERENCES tokens (id),
    kind            text        NOT NULL CHECK (kind IN ('mint', 'burn', 'transfer', 'vesting_grant')),
    from_holder     text,
    to_holder       text,
    amount          bigint      NOT NULL CHECK (amount > 0),
    status          text        NOT NULL CHECK (status IN ('pending', 'posted')),
    caller          text        NOT NULL,
    idempotency_key text        NOT NULL,
    entry_id        uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (token_id, caller, idempotency_key)
);
CREATE INDEX token_operations_from ON token_operations (token_id, from_holder, created_at);
CREATE INDEX token_operations_to ON token_operations (token_id, to_holder, created_at);

CREATE TABLE token_vesting (
    id            uuid PRIMARY KEY,
    token_id      uuid        NOT NULL REFERENCES tokens (id),
    beneficiary   text        NOT NULL,
    total         bigint      NOT NULL CHECK (total > 0),
    start_at      timestamptz NOT NULL,
    period        text        NOT NULL CHECK (period IN ('day', 'month')),
    periods       integer     NOT NULL CHECK (periods > 0),
    cliff_periods integer     NOT NULL CHECK (cliff_periods BETWEEN 0 AND periods),
    grant_id      uuid        NOT NULL UNIQUE REFERENCES token_operations (id),
    done          boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_vesting_beneficiary ON token_vesting (beneficiary, id);
CREATE INDEX token_vesting_open ON token_vesting (start_at) WHERE NOT done;

CREATE TABLE token_vesting_releases (
    schedule_id uuid        NOT NULL REFERENCES token_vesting (id),
    period      integer     NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    status      text        NOT NULL CHECK (status IN ('pending', 'posted')),
    entry_id    uuid,
    released_at timestamptz,
    PRIMARY KEY (schedule_id, period)
);

CREATE TABLE tokens_ledger_accounts (key text PRIMARY KEY, account_id uuid NOT NULL);
