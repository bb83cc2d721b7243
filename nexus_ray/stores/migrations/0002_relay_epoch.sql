-- The outbox relay's record of the broker it last published to (see stores/events.py).
CREATE TABLE outbox_relay_state (
    id         integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    epoch      uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
