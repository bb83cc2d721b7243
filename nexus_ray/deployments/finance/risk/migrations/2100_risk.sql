-- puabo-blac-risk-assessment: immutable versioned models, the one active model with its audit trail,
-- stored applications, the job records of training and batch runs, and batch scores.

CREATE TABLE risk_models (
    id             uuid PRIMARY KEY,
    version        integer     NOT NULL UNIQUE,
    family         text        NOT NULL,
    model          bytea       NOT NULL,   -- the fitted model, serialised as JSON (never pickle)
    metrics        jsonb       NOT NULL,
    feature_schema jsonb       NOT NULL,
    data_hash      text        NOT NULL,   -- SHA-256 of the training rows
    training_rows  integer     NOT NULL,
    trained_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE risk_model_versions OWNED BY risk_models.version;

-- Models are immutable: a new one is trained instead.
CREATE FUNCTION risk_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER risk_models_immutable BEFORE UPDATE OR DELETE ON risk_models
    FOR EACH ROW EXECUTE FUNCTION risk_refuse_change();
CREATE TRIGGER risk_models_no_truncate BEFORE TRUNCATE ON risk_models
    FOR EACH STATEMENT EXECUTE FUNCTION risk_refuse_change();

-- The one active model: a single row, locked by whoever changes it.
CREATE TABLE risk_active (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    model_id   uuid        NOT NULL REFERENCES risk_models (id),
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- Who activated which model, when, replacing which: append-only.
CREATE TABLE risk_promotions (
    id          bigserial PRIMARY KEY,
    model_id    uuid        NOT NULL REFERENCES risk_models (id),
    previous_id uuid REFERENCES risk_models (id),
    action      text        NOT NULL CHECK (action IN ('promote', 'rollback', 'first')),
    actor       text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER risk_promotions_append_only BEFORE UPDATE OR DELETE ON risk_promotions
    FOR EACH ROW EXECUTE FUNCTION risk_refuse_change();

-- Applications kept for batch scoring (readable values, as the scoring API takes them).
CREATE TABLE risk_applications (
    id                      bigserial PRIMARY KEY,
    owner                   text        NOT NULL,
    checking_account        text        NOT NULL,
    duration_months         smallint    NOT NULL,
    credit_history          text        NOT NULL,
    purpose                 text        NOT NULL,
    credit_amount           integer     NOT NULL,
    savings                 text        NOT NULL,
    employment_since        text        NOT NULL,
    installment_rate        smallint    NOT NULL,
    other_debtors           text        NOT NULL,
    residence_since         smallint    NOT NULL,
    property                text        NOT NULL,
    age                     smallint    NOT NULL,
    other_installment_plans text        NOT NULL,
    housing                 text        NOT NULL,
    existing_credits        smallint    NOT NULL,
    job                     text        NOT NULL,
    dependents              smallint    NOT NULL,
    telephone               text        NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now()
);

-- A training or batch-scoring run: its Ray job, who asked, and how far it got.
CREATE TABLE risk_jobs (
    id            uuid PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('train', 'score')),
    submission_id text        NOT NULL UNIQUE,
    requested_by  text        NOT NULL,
    params        jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'submitted'
                  CHECK (status IN ('submitted', 'running', 'succeeded', 'failed')),
    total         bigint      NOT NULL DEFAULT 0,
    done          bigint      NOT NULL DEFAULT 0,
    result        jsonb,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- A batch's chunks written so far: a retried task finds its chunk here and writes nothing twice.
CREATE TABLE risk_batch_chunks (
    job_id   uuid    NOT NULL REFERENCES risk_jobs (id),
    chunk    integer NOT NULL,
    rows     integer NOT NULL,
    PRIMARY KEY (job_id, chunk)
);

-- Scores of a batch run, one row per application (the primary key makes "every row once" hold). The band
-- and the reasons are codes into the job's own dictionary (risk_jobs.params: bands, reason_texts; -1: no
-- reason), so a chunk is written as one fixed-width binary COPY. No foreign keys: checked per row, they
-- would be most of the write; the job and the model are the job's own.
CREATE TABLE risk_scores (
    job_id         uuid             NOT NULL,
    application_id bigint           NOT NULL,
    model_id       uuid             NOT NULL,
    probability    double precision NOT NULL,
    band           smallint         NOT NULL,
    reasons        smallint[]       NOT NULL,
    PRIMARY KEY (job_id, application_id)
);
