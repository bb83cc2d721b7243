-- inventory-mgr: stock per SKU and warehouse, reservations with an expiry, and the movements that explain
-- every change. Why the locks are taken as they are: see nexus_ray/deployments/commerce/inventory/service.py.

CREATE TABLE inventory_warehouses (
    id         text PRIMARY KEY,
    name       text        NOT NULL,
    -- Reservations draw from the warehouse with the lowest priority number first.
    priority   integer     NOT NULL DEFAULT 100,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per SKU: its low-stock threshold and whether it is below it now (a stock.low event is emitted
-- when it crosses below, once per crossing). Every change to a SKU's stock locks this row first.
CREATE TABLE inventory_skus (
    sku           text PRIMARY KEY,
    low_threshold bigint      NOT NULL DEFAULT 0 CHECK (low_threshold >= 0),
    low           boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- available = on_hand - reserved; the CHECKs are the last guard against overselling.
CREATE TABLE inventory_stock (
    sku          text   NOT NULL REFERENCES inventory_skus (sku),
    warehouse_id text   NOT NULL REFERENCES inventory_warehouses (id),
    on_hand      bigint NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved     bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    CHECK (reserved <= on_hand),
    PRIMARY KEY (sku, warehouse_id)
);

CREATE TABLE inventory_reservations (
    id              uuid PRIMARY KEY,
    caller          text        NOT NULL,
    reference       text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
    returned        boolean     NOT NULL DEFAULT false,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    resolved_at     timestamptz,
    UNIQUE (caller, idempotency_key)
);
CREATE INDEX inventory_reservations_expiry ON inventory_reservations (expires_at) WHERE status = 'held';
CREATE INDEX inventory_reservations_reference ON inventory_reservations (reference);

CREATE TABLE inventory_reservation_lines (
    reservation_id uuid   NOT NULL REFERENCES inventory_reservations (id),
    sku            text   NOT NULL,
    warehouse_id   text   NOT NULL,
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku, warehouse_id)
);
CREATE INDEX inventory_reservation_lines_sku ON inventory_reservation_lines (sku, warehouse_id);

-- Every change of a stock row, with its reason: summing a row's deltas gives its on_hand and reserved.
CREATE TABLE inventory_movements (
    id             bigserial PRIMARY KEY,
    sku            text        NOT NULL,
    warehouse_id   text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('reserve', 'commit', 'release', 'expire', 'restock',
                                                        'adjust', 'return')),
    on_hand_delta  bigint      NOT NULL,
    reserved_delta bigint      NOT NULL,
    reservation_id uuid,
    note           text        NOT NULL DEFAULT '',
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inventory_movements_sku ON inventory_movements (sku, id);

-- Keyed restocks and adjustments: a retried request is applied once.
CREATE TABLE inventory_idempotency (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

-- Movements are history: the database refuses to change or remove them.
CREATE FUNCTION inventory_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory_movements is append-only' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER inventory_movements_append_only BEFORE UPDATE OR DELETE ON inventory_movements
    FOR EACH ROW EXECUTE FUNCTION inventory_refuse_change();
