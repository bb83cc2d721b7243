-- puabo-nexus (deliveries): the delivery lifecycle, its tracking timeline and its proof of delivery.

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    -- Set for deliveries made from shipping's shipment.created: one delivery per shipment, whatever redelivers it.
    shipment_id     text UNIQUE,
    order_id        text,
    owner           text             NOT NULL,
    idempotency_key text,
    status          text             NOT NULL
        CHECK (status IN ('created', 'assigned', 'picked_up', 'delivered', 'failed')),
    pickup          jsonb            NOT NULL,
    dropoff         jsonb            NOT NULL,
    weight_kg       double precision NOT NULL CHECK (weight_kg >= 0),
    vehicle_types   text[],
    driver_id       uuid,
    offer_id        text,
    driver_fee      bigint           NOT NULL CHECK (driver_fee >= 0),
    currency        char(3)          NOT NULL,
    -- Where the delivery stands with ai-dispatch: pending (to submit), submitted, or manual (no coordinates:
    -- an operator assigns it).
    dispatch_state  text             NOT NULL CHECK (dispatch_state IN ('pending', 'submitted', 'manual')),
    created_at      timestamptz      NOT NULL,
    updated_at      timestamptz      NOT NULL,
    CHECK ((status = 'created') OR (status = 'failed') OR (driver_id IS NOT NULL)),
    UNIQUE (owner, idempotency_key)
);
CREATE INDEX deliveries_owner ON deliveries (owner, created_at DESC, id);
CREATE INDEX deliveries_driver ON deliveries (driver_id, created_at DESC, id) WHERE driver_id IS NOT NULL;
CREATE INDEX deliveries_to_submit ON deliveries (created_at) WHERE dispatch_state = 'pending' AND status = 'created';

-- The tracking timeline: every status a delivery went through, with who and where.
CREATE TABLE delivery_events (
    id          bigserial PRIMARY KEY,
    delivery_id uuid             NOT NULL REFERENCES deliveries (id),
    status      text             NOT NULL,
    at          timestamptz      NOT NULL,
    actor       text             NOT NULL,
    note        text,
    lat         double precision,
    lon         double precision
);
CREATE INDEX delivery_events_delivery ON delivery_events (delivery_id, id);

CREATE TABLE delivery_proofs (
    delivery_id  uuid PRIMARY KEY REFERENCES deliveries (id),
    kind         text        NOT NULL CHECK (kind IN ('signature', 'photo')),
    content_type text        NOT NULL,
    size_bytes   integer     NOT NULL CHECK (size_bytes > 0),
    sha256       char(64)    NOT NULL,
    data         bytea       NOT NULL,
    uploaded_by  text        NOT NULL,
    uploaded_at  timestamptz NOT NULL,
    CHECK (octet_length(data) = size_bytes)
);
