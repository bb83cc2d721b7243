-- billing-service: payment intents, refunds, the ledger postings they owe, idempotency records, webhooks,
-- and the sandbox payment provider's own records. Design notes: nexus_ray/deployments/commerce/billing/service.py.

CREATE TABLE billing_payment_intents (
    id                 uuid PRIMARY KEY,
    created_by         text        NOT NULL,  -- the merchant: the principal (or service) that created it
    customer           text        NOT NULL,  -- who pays; may read it
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           char(3)     NOT NULL,
    status             text        NOT NULL CHECK (status IN ('requires_action', 'authorized', 'declined', 'captured',
                                                              'canceled', 'refunded', 'partially_refunded')),
    amount_captured    bigint      NOT NULL DEFAULT 0,
    amount_refunded    bigint      NOT NULL DEFAULT 0,
    card_brand         text        NOT NULL,
    card_last4         text        NOT NULL,
    decline_code       text,
    provider           text        NOT NULL,
    provider_charge_id text        NOT NULL UNIQUE,
    metadata           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CHECK (amount_captured BETWEEN 0 AND amount),
    CHECK (amount_refunded BETWEEN 0 AND amount_captured)
);
CREATE INDEX billing_payment_intents_customer ON billing_payment_intents (customer, id);
CREATE INDEX billing_payment_intents_created_by ON billing_payment_intents (created_by, id);

CREATE TABLE billing_refunds (
    id                 uuid PRIMARY KEY,
    payment_intent_id  uuid        NOT NULL REFERENCES billing_payment_intents (id),
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           char(3)     NOT NULL,
    reason             text,
    status             text        NOT NULL CHECK (status = 'succeeded'),
    provider_refund_id text        NOT NULL UNIQUE,
    created_by         text        NOT NULL,
    created_at         timestamptz NOT NULL
);
CREATE INDEX billing_refunds_intent ON billing_refunds (payment_intent_id, created_at);

-- The ledger accounts billing posts to, one pair per currency, opened once (under an advisory lock).
CREATE TABLE billing_ledger_accounts (
    currency   char(3) NOT NULL,
    role       text    NOT NULL CHECK (role IN ('clearing', 'merchant_payable')),
    account_id uuid    NOT NULL,
    PRIMARY KEY (currency, role)
);

-- What billing owes the ledger: written in the transaction of the capture or refund, posted to the ledger after
-- commit with the idempotency key billing:<kind>:<source_id>, so a retried posting never posts twice.
CREATE TABLE billing_ledger_postings (
    id                uuid PRIMARY KEY,
    payment_intent_id uuid        NOT NULL REFERENCES billing_payment_intents (id),
    kind              text        NOT NULL CHECK (kind IN ('capture', 'refund')),
    source_id         uuid        NOT NULL,  -- the intent (capture) or the refund
    amount            bigint      NOT NULL CHECK (amount > 0),
    currency          char(3)     NOT NULL,
    status            text        NOT NULL CHECK (status IN ('pending', 'posted')),
    entry_id          uuid,
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    posted_at         timestamptz,
    UNIQUE (kind, source_id)
);
CREATE INDEX billing_ledger_postings_pending ON billing_ledger_postings (created_at) WHERE status = 'pending';

-- Idempotency records in the shape nexus_ray.deployments.kit.idempotency expects.
CREATE TABLE billing_idempotency (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    status      smallint,
    response    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX billing_idempotency_expiry ON billing_idempotency (expires_at);

CREATE TABLE billing_webhook_endpoints (
    id          uuid PRIMARY KEY,
    owner       text        NOT NULL,
    url         text        NOT NULL,
    events      text[]      NOT NULL,
    description text        NOT NULL DEFAULT '',
    secret      jsonb       NOT NULL,  -- key-service envelope of the signing secret (never stored in clear)
    status      text        NOT NULL CHECK (status IN ('enabled', 'disabled')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_webhook_endpoints_owner ON billing_webhook_endpoints (owner, id);

CREATE TABLE billing_webhook_deliveries (
    id              uuid PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES billing_webhook_endpoints (id) ON DELETE CASCADE,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    body            text        NOT NULL,  -- the exact bytes signed and sent
    status          text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_status     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX billing_webhook_deliveries_due ON billing_webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE billing_webhook_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id uuid        NOT NULL REFERENCES billing_webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status_code integer,
    error       text,
    duration_ms integer     NOT NULL
);
CREATE INDEX billing_webhook_attempts_delivery ON billing_webhook_attempts (delivery_id, attempt);

-- The sandbox provider's own records (it stands for a remote system: it uses its own connections).
CREATE TABLE billing_sandbox_charges (
    id              text PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    card_last4      text        NOT NULL,
    card_brand      text        NOT NULL,
    amount          bigint      NOT NULL,
    currency        char(3)     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('requires_action', 'authorized', 'declined', 'captured',
                                                           'canceled')),
    decline_code    text,
    amount_captured bigint      NOT NULL DEFAULT 0,
    amount_refunded bigint      NOT NULL DEFAULT 0,
    action_outcome  text,        -- what the pending customer action ends in: 'authorized' or a decline code
    action_due_at   timestamptz,
    notify          boolean     NOT NULL DEFAULT false,  -- an asynchronous outcome not yet acknowledged by billing
    notify_failures integer     NOT NULL DEFAULT 0,
    notify_after    timestamptz NOT NULL DEFAULT now(),    -- the next notice is sent no earlier (backoff)
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX billing_sandbox_charges_due ON billing_sandbox_charges (action_due_at) WHERE status = 'requires_action';
CREATE INDEX billing_sandbox_charges_notify ON billing_sandbox_charges (notify_after) WHERE notify;

CREATE TABLE billing_sandbox_refunds (
    id              text PRIMARY KEY,
    charge_id       text        NOT NULL REFERENCES billing_sandbox_charges (id),
    idempotency_key text        NOT NULL UNIQUE,
    amount          bigint      NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
