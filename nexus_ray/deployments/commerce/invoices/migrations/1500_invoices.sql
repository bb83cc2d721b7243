-- invoice-gen: tax rates, gap-free counters per series, invoices and credit notes (append-only).
-- Why the numbering is gap-free under concurrency: see nexus_ray/deployments/commerce/invoices/service.py.

-- Rates in percent (exact decimals, never floats) per country and tax category. An invoice copies the
-- rate of each line, so a later change here never changes an issued invoice. A country with no rates of
-- its own is taxed by the rows of 'ZZ' (the rest of the world: exports, zero-rated until configured).
CREATE TABLE invoice_tax_rates (
    country    char(2)      NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    category   text         NOT NULL CHECK (category ~ '^[a-z][a-z0-9_-]{0,31}$'),
    rate       numeric(7,4) NOT NULL CHECK (rate >= 0 AND rate < 100),
    updated_at timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (country, category)
);
INSERT INTO invoice_tax_rates (country, category, rate) VALUES
    ('DE', 'standard', 19), ('DE', 'reduced', 7), ('DE', 'zero', 0), ('DE', 'digital', 19),
    ('FR', 'standard', 20), ('FR', 'reduced', 5.5), ('FR', 'zero', 0), ('FR', 'digital', 20),
    ('NL', 'standard', 21), ('NL', 'reduced', 9), ('NL', 'zero', 0), ('NL', 'digital', 21),
    ('GB', 'standard', 20), ('GB', 'reduced', 5), ('GB', 'zero', 0), ('GB', 'digital', 20),
    ('CH', 'standard', 8.1), ('CH', 'reduced', 2.6), ('CH', 'zero', 0), ('CH', 'digital', 8.1),
    ('US', 'standard', 0), ('US', 'reduced', 0), ('US', 'zero', 0), ('US', 'digital', 0),
    ('CA', 'standard', 5), ('CA', 'reduced', 0), ('CA', 'zero', 0), ('CA', 'digital', 5),
    ('ZZ', 'standard', 0), ('ZZ', 'reduced', 0), ('ZZ', 'zero', 0), ('ZZ', 'digital', 0);

-- One row per (kind, series): the last number issued. The issuing transaction takes the row's lock
-- by incrementing it and holds it to commit, so a number exists only if its document committed.
CREATE TABLE invoice_counters (
    kind        text   NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    series      text   NOT NULL,
    last_number bigint NOT NULL CHECK (last_number > 0),
    PRIMARY KEY (kind, series)
);

CREATE TABLE invoices (
    id              uuid PRIMARY KEY,
    series          text        NOT NULL,
    number          bigint      NOT NULL CHECK (number > 0),
    source          text        NOT NULL CHECK (source IN ('order', 'subscription', 'manual')),
    source_id       text        NOT NULL,
    owner           text,
    customer        jsonb       NOT NULL,
    country         char(2)     NOT NULL,
    currency        char(3)     NOT NULL,
    subtotal        bigint      NOT NULL CHECK (subtotal >= 0),
    tax_total       bigint      NOT NULL CHECK (tax_total >= 0),
    total           bigint      NOT NULL CHECK (total = subtotal + tax_total),
    tax_rounding    text        NOT NULL,
    caller          text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    issued_at       timestamptz NOT NULL,
    UNIQUE (series, number),
    UNIQUE (caller, idempotency_key)
);
CREATE INDEX invoices_owner ON invoices (owner, id);
CREATE INDEX invoices_source ON invoices (source, source_id);

CREATE TABLE invoice_lines (
    invoice_id   uuid         NOT NULL REFERENCES invoices (id),
    position     int          NOT NULL CHECK (position >= 0),
    description  text         NOT NULL,
    quantity     int          NOT NULL CHECK (quantity > 0),
    unit_price   bigint       NOT NULL CHECK (unit_price >= 0),
    tax_category text         NOT NULL,
    tax_rate     numeric(7,4) NOT NULL,
    net          bigint       NOT NULL,
    tax          bigint       NOT NULL,
    total        bigint       NOT NULL CHECK (total = net + tax),
    PRIMARY KEY (invoice_id, position)
);

CREATE TABLE invoice_credit_notes (
    id              uuid PRIMARY KEY,
    invoice_id      uuid        NOT NULL REFERENCES invoices (id),
    series          text        NOT NULL,
    number          bigint      NOT NULL CHECK (number > 0),
    reason          text        NOT NULL,
    currency        char(3)     NOT NULL,
    subtotal        bigint      NOT NULL CHECK (subtotal >= 0),
    tax_total       bigint      NOT NULL CHECK (tax_total >= 0),
    total           bigint      NOT NULL CHECK (total = subtotal + tax_total AND total > 0),
    caller          text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    issued_at       timestamptz NOT NULL,
    UNIQUE (series, number),
    UNIQUE (caller, idempotency_key)
);
CREATE INDEX invoice_credit_notes_invoice ON invoice_credit_notes (invoice_id);

CREATE TABLE invoice_credit_note_lines (
    credit_note_id uuid         NOT NULL REFERENCES invoice_credit_notes (id),
    invoice_id     uuid         NOT NULL,
    line           int          NOT NULL,
    description    text         NOT NULL,
    quantity       int          NOT NULL CHECK (quantity > 0),
    unit_price     bigint       NOT NULL,
    tax_rate       numeric(7,4) NOT NULL,
    net            bigint       NOT NULL,
    tax            bigint       NOT NULL,
    total          bigint       NOT NULL CHECK (total = net + tax),
    PRIMARY KEY (credit_note_id, line),
    FOREIGN KEY (invoice_id, line) REFERENCES invoice_lines (invoice_id, position)
);
CREATE INDEX invoice_credit_note_lines_line ON invoice_credit_note_lines (invoice_id, line);

-- Issued documents are immutable: corrected by a credit note, never edited or deleted.
CREATE FUNCTION invoice_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable once issued: correct an invoice with a credit note', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER invoices_immutable BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_lines_immutable BEFORE UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_lines_no_truncate BEFORE TRUNCATE ON invoice_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_credit_notes_immutable BEFORE UPDATE OR DELETE ON invoice_credit_notes
    FOR EACH ROW EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_credit_notes_no_truncate BEFORE TRUNCATE ON invoice_credit_notes
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_credit_note_lines_immutable BEFORE UPDATE OR DELETE ON invoice_credit_note_lines
    FOR EACH ROW EXECUTE FUNCTION invoice_refuse_change();
CREATE TRIGGER invoice_credit_note_lines_no_truncate BEFORE TRUNCATE ON invoice_credit_note_lines
    FOR EACH STATEMENT EXECUTE FUNCTION invoice_refuse_change();
