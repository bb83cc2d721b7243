-- ledger-mgr: double-entry accounts, immutable journal entries and postings, sharded balances, holds,
-- idempotency records. Why the balances are sharded: see nexus_ray/deployments/commerce/ledger/service.py.

CREATE TABLE ledger_accounts (
    id             uuid PRIMARY KEY,
    owner          text        NOT NULL,
    name           text        NOT NULL,
    type           text        NOT NULL CHECK (type IN ('asset', 'liability', 'revenue', 'expense', 'equity')),
    currency       char(3)     NOT NULL,
    allow_negative boolean     NOT NULL,
    shards         smallint    NOT NULL CHECK (shards BETWEEN 1 AND 64),
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_accounts_owner ON ledger_accounts (owner, id);

-- An account's balance is the sum of its shard rows; each row is a running total of one slice of its
-- postings (posted) and open holds (pending). Amounts are minor units; every column only moves by the
-- amounts of postings and holds, so the reconciliation can compare them with their sources.
CREATE TABLE ledger_balances (
    account_id      uuid     NOT NULL REFERENCES ledger_accounts (id),
    shard           smallint NOT NULL,
    debits_posted   bigint   NOT NULL DEFAULT 0,
    credits_posted  bigint   NOT NULL DEFAULT 0,
    debits_pending  bigint   NOT NULL DEFAULT 0,
    credits_pending bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, shard)
);

CREATE TABLE ledger_entries (
    id          uuid PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('entry', 'transfer', 'capture', 'reversal')),
    -- UNIQUE: an entry is reversed at most once, whatever races to do it.
    reverses    uuid UNIQUE REFERENCES ledger_entries (id),
    hold_id     uuid,
    description text        NOT NULL DEFAULT '',
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE ledger_postings (
    id         bigserial PRIMARY KEY,
    entry_id   uuid        NOT NULL REFERENCES ledger_entries (id),
    account_id uuid        NOT NULL REFERENCES ledger_accounts (id),
    side       char(1)     NOT NULL CHECK (side IN ('D', 'C')),
    amount     bigint      NOT NULL CHECK (amount > 0),
    currency   char(3)     NOT NULL,
    created_at timestamptz NOT NULL
);
-- Statements: an account's postings in order, with what the running balance needs beside the key.
CREATE INDEX ledger_postings_account ON ledger_postings (account_id, id) INCLUDE (side, amount);
CREATE INDEX ledger_postings_entry ON ledger_postings (entry_id);

-- Entries and postings are corrected by reversal only: the database refuses to change them.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger table % is append-only: correct an entry by reversing it', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_append_only BEFORE UPDATE OR DELETE ON ledger_postings
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_postings_no_truncate BEFORE TRUNCATE ON ledger_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TABLE ledger_holds (
    id                uuid PRIMARY KEY,
    debit_account_id  uuid        NOT NULL REFERENCES ledger_accounts (id),
    credit_account_id uuid        NOT NULL REFERENCES ledger_accounts (id),
    currency          char(3)     NOT NULL,
    amount            bigint      NOT NULL CHECK (amount > 0),
    status            text        NOT NULL CHECK (status IN ('pending', 'captured', 'voided', 'expired')),
    captured_amount   bigint,
    entry_id          uuid REFERENCES ledger_entries (id),
    description       text        NOT NULL DEFAULT '',
    metadata          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_by        text        NOT NULL,
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    resolved_at       timestamptz,
    CHECK ((status = 'captured') = (entry_id IS NOT NULL))
);
CREATE INDEX ledger_holds_expiry ON ledger_holds (expires_at) WHERE status = 'pending';

-- One row per (caller, key): the request's hash and, once it succeeded, its response to replay.
CREATE TABLE ledger_idempotency (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
