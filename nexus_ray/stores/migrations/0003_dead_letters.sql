-- Consumers' failed attempts and dead letters (see EventConsumer in stores/events.py).

-- Failures of a consumer's handler on an event not yet handled; counted here, not in the
-- consumer's memory, so a restarted consumer goes on counting. Deleted when the event is
-- handled or moved to the dead letters.
CREATE TABLE event_attempts (
    consumer        text        NOT NULL,
    event_id        uuid        NOT NULL,
    attempts        integer     NOT NULL,
    error_type      text        NOT NULL,
    error_message   text        NOT NULL,
    first_failed_at timestamptz NOT NULL DEFAULT now(),
    last_failed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events a consumer gave up on, whole, so that a replay can deliver them to its handler again.
-- status: dead -> replaying (replay requested) -> replayed, or back to dead when the replay fails.
CREATE TABLE dead_letters (
    id                  bigserial   PRIMARY KEY,
    consumer            text        NOT NULL,
    event_id            uuid        NOT NULL,
    topic               text        NOT NULL,
    key                 text,
    payload             jsonb       NOT NULL,
    headers             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    occurred_at         timestamptz NOT NULL,
    attempts            integer     NOT NULL,
    error_type          text        NOT NULL,
    error_message       text        NOT NULL,
    first_failed_at     timestamptz NOT NULL,
    dead_at             timestamptz NOT NULL DEFAULT now(),
    status              text        NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'replaying', 'replayed')),
    replay_requested_at timestamptz,
    replayed_at         timestamptz,
    UNIQUE (consumer, event_id)
);
CREATE INDEX dead_letters_by_consumer ON dead_letters (consumer, id);
CREATE INDEX dead_letters_replaying ON dead_letters (consumer, id) WHERE status = 'replaying';
