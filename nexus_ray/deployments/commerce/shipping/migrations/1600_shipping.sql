-- puabo-nuki-shipping-service: zones, a rate table (weight bands x zones x service levels), shipments,
-- their tracking timeline (append-only). The state machine is in nexus_ray/deployments/commerce/shipping/service.py.

-- A destination country's zone; a country not listed here is in zone 'world'.
CREATE TABLE shipping_zones (
    country char(2) PRIMARY KEY CHECK (country ~ '^[A-Z]{2}$'),
    zone    text    NOT NULL
);
INSERT INTO shipping_zones (country, zone) VALUES
    ('US', 'domestic'),
    ('CA', 'north-america'), ('MX', 'north-america'),
    ('GB', 'europe'), ('IE', 'europe'), ('FR', 'europe'), ('DE', 'europe'), ('NL', 'europe'), ('BE', 'europe'),
    ('LU', 'europe'), ('ES', 'europe'), ('PT', 'europe'), ('IT', 'europe'), ('AT', 'europe'), ('CH', 'europe'),
    ('DK', 'europe'), ('SE', 'europe'), ('NO', 'europe'), ('FI', 'europe'), ('PL', 'europe'), ('CZ', 'europe');

-- One row per band: a parcel of weight w pays the band with the smallest max_weight_g >= w.
CREATE TABLE shipping_rates (
    zone           text    NOT NULL,
    service_level  text    NOT NULL CHECK (service_level IN ('standard', 'express')),
    max_weight_g   integer NOT NULL CHECK (max_weight_g > 0),
    amount         bigint  NOT NULL CHECK (amount >= 0),
    currency       char(3) NOT NULL,
    estimated_days integer NOT NULL CHECK (estimated_days > 0),
    PRIMARY KEY (zone, service_level, max_weight_g)
);
INSERT INTO shipping_rates (zone, service_level, max_weight_g, amount, currency, estimated_days)
SELECT z.zone, s.level, b.max_g, (z.base + b.step) * s.factor, 'USD', z.days * s.days_factor / 100
FROM (VALUES ('domestic', 500, 30), ('north-america', 1200, 60), ('europe', 1800, 80), ('world', 2600, 120))
         AS z(zone, base, days),
     (VALUES (500, 0), (1000, 300), (2000, 700), (5000, 1500), (10000, 2900), (20000, 5200), (30000, 7900))
         AS b(max_g, step),
     (VALUES ('standard', 1, 10), ('express', 2, 4)) AS s(level, factor, days_factor);

CREATE TABLE shipments (
    id              uuid PRIMARY KEY,
    order_id        text        NOT NULL UNIQUE,  -- one shipment per order, however it was asked for
    owner           text,
    address         jsonb       NOT NULL,
    country         char(2)     NOT NULL,
    zone            text        NOT NULL,
    weight_g        integer     NOT NULL CHECK (weight_g >= 0),
    service_level   text        NOT NULL,
    rate_amount     bigint      NOT NULL,
    rate_currency   char(3)     NOT NULL,
    tracking_number text        NOT NULL UNIQUE,
    status          text        NOT NULL CHECK (status IN ('label_created', 'picked_up', 'in_transit',
                                    'out_for_delivery', 'delivered', 'exception', 'cancelled')),
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX shipments_owner ON shipments (owner, id);

-- Idempotency keys of shipment requests, per caller: a retry with the key returns the same shipment.
CREATE TABLE shipment_requests (
    caller          text        NOT NULL,
    idempotency_key text        NOT NULL,
    shipment_id     uuid        NOT NULL REFERENCES shipments (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, idempotency_key)
);

CREATE TABLE shipment_events (
    id          bigserial PRIMARY KEY,
    shipment_id uuid        NOT NULL REFERENCES shipments (id),
    status      text        NOT NULL,
    description text        NOT NULL,
    location    text,
    source      text        NOT NULL,
    -- The event of another service this one came from (a delivery.status event): recorded once.
    source_event_id uuid UNIQUE,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shipment_events_shipment ON shipment_events (shipment_id, id);

CREATE FUNCTION shipment_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'shipment_events is append-only' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER shipment_events_append_only BEFORE UPDATE OR DELETE ON shipment_events
    FOR EACH ROW EXECUTE FUNCTION shipment_events_refuse_change();
CREATE TRIGGER shipment_events_no_truncate BEFORE TRUNCATE ON shipment_events
    FOR EACH STATEMENT EXECUTE FUNCTION shipment_events_refuse_change();
