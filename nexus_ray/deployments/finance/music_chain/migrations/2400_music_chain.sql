-- puabomusicchain: the append-only hash chain of rights and royalty-split records, the Merkle roots published over
-- it, and royalty runs with their lines (cents per work and holder). Record rows are never changed: a trigger
-- refuses UPDATE, DELETE and TRUNCATE (verification still finds a change made with the trigger disabled).

CREATE TABLE music_records (
    pos        bigint PRIMARY KEY,            -- storage order: the order verification reads
    seq        bigint      NOT NULL,           -- the record's own number, inside its hash
    prev       char(64)    NOT NULL,
    kind       text        NOT NULL,
    body       jsonb       NOT NULL,
    hash       char(64)    NOT NULL,
    created_by text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX music_records_seq ON music_records (seq);  -- proofs and the list, by seq
CREATE INDEX music_records_hash ON music_records (hash);
CREATE INDEX music_records_work ON music_records ((body ->> 'work'), seq);

CREATE FUNCTION music_records_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'music_records is append-only: a right or split is changed by appending a new record'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER music_records_append_only BEFORE UPDATE OR DELETE ON music_records
    FOR EACH ROW EXECUTE FUNCTION music_records_refuse_change();
CREATE TRIGGER music_records_no_truncate BEFORE TRUNCATE ON music_records
    FOR EACH STATEMENT EXECUTE FUNCTION music_records_refuse_change();

-- A published root: the Merkle root over the first `size` records, and the hash of the last of them.
CREATE TABLE music_roots (
    size         bigint PRIMARY KEY CHECK (size > 0),
    root         char(64)    NOT NULL,
    head         char(64)    NOT NULL,
    published_by text        NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE music_royalty_runs (
    id              uuid PRIMARY KEY,
    created_by      text        NOT NULL,
    idempotency_key text        NOT NULL,
    currency        char(3)     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('computed', 'posted')),
    works           integer     NOT NULL,
    holders         integer     NOT NULL,
    paid_in         bigint      NOT NULL,
    paid_out        bigint      NOT NULL,
    entries         integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (created_by, idempotency_key),
    CHECK (paid_in = paid_out)
);

CREATE TABLE music_royalty_lines (
    run_id uuid   NOT NULL REFERENCES music_royalty_runs (id),
    work   text   NOT NULL,
    holder text   NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (run_id, work, holder)
);
CREATE INDEX music_royalty_lines_holder ON music_royalty_lines (holder, run_id);

CREATE TABLE music_ledger_accounts (key text PRIMARY KEY, account_id uuid NOT NULL);
