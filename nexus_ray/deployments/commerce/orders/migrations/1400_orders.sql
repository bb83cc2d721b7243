-- order-processor: orders, their checkout saga's progress, and the log of every saga step.
-- How the saga runs, is recovered and fenced: nexus_ray/deployments/commerce/orders/saga.py.

CREATE TABLE orders (
    id              uuid PRIMARY KEY,
    customer        text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'authorized', 'paid', 'completed',
                                                           'compensating', 'failed', 'cancelling', 'cancelled',
                                                           'refunding', 'refunded')),
    capture_method  text        NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    currency        char(3)     NOT NULL,
    total           bigint CHECK (total >= 0),
    request         jsonb       NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    -- What each forward step returned (by step name), and each compensation that ran.
    results         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    undone          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    refund_restock  boolean     NOT NULL DEFAULT false,
    failure         jsonb,
    attempts        integer     NOT NULL DEFAULT 0,
    -- The saga's runner: only the holder of an unexpired lease moves the order (recovery takes expired ones).
    lease_owner     text,
    lease_until     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer, idempotency_key)
);
CREATE INDEX orders_customer ON orders (customer, id);
CREATE INDEX orders_unsettled ON orders (lease_until)
    WHERE status IN ('pending', 'paid', 'compensating', 'cancelling', 'refunding');

CREATE TABLE order_saga_log (
    id         bigserial PRIMARY KEY,
    order_id   uuid        NOT NULL REFERENCES orders (id),
    step       text        NOT NULL,
    phase      text        NOT NULL CHECK (phase IN ('forward', 'compensate', 'status')),
    outcome    text        NOT NULL CHECK (outcome IN ('started', 'done', 'failed', 'interrupted', 'skipped')),
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    runner     text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_saga_log_order ON order_saga_log (order_id, id);
