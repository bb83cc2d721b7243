-- puabo-blac-loan-processor: loans with their state, decision and offer, the installments of the schedule,
-- the history of every transition, and repayments. Money in minor units; rates as exact decimal text.

CREATE TABLE loans (
    id                 uuid PRIMARY KEY,
    borrower           text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('applied', 'manual_review', 'scored', 'offered',
                                       'accepted', 'disbursed', 'repaying', 'closed', 'declined', 'defaulted')),
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           char(3)     NOT NULL,
    term_months        integer     NOT NULL CHECK (term_months > 0),
    annual_income      bigint      NOT NULL CHECK (annual_income >= 0),
    monthly_debt       bigint      NOT NULL CHECK (monthly_debt >= 0),
    purpose            text        NOT NULL,
    application_key    text        NOT NULL,
    risk               jsonb,
    decision           jsonb,
    annual_rate        text,
    fees               bigint,
    apr                text,
    payments_made      integer     NOT NULL DEFAULT 0,
    receivable_account uuid,
    wallet_account     uuid,
    disbursed_on       date,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (borrower, application_key)
);
CREATE INDEX loans_borrower ON loans (borrower, id);

CREATE TABLE loan_installments (
    loan_id   uuid    NOT NULL REFERENCES loans (id),
    period    integer NOT NULL,
    due_on    date,
    payment   bigint  NOT NULL,
    interest  bigint  NOT NULL,
    principal bigint  NOT NULL,
    balance   bigint  NOT NULL,
    PRIMARY KEY (loan_id, period)
);

-- One row per repayment (an installment, or the payoff): what it paid and the ledger entry that moved it.
CREATE TABLE loan_repayments (
    loan_id         uuid        NOT NULL REFERENCES loans (id),
    seq             integer     NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('installment', 'payoff')),
    period          integer,
    paid_on         date        NOT NULL,
    days_late       integer     NOT NULL DEFAULT 0,
    principal       bigint      NOT NULL,
    interest        bigint      NOT NULL,
    late_fee        bigint      NOT NULL DEFAULT 0,
    total           bigint      NOT NULL,
    idempotency_key text        NOT NULL,
    entry_id        uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (loan_id, seq),
    UNIQUE (loan_id, idempotency_key)
);

CREATE TABLE loan_transitions (
    id         bigserial PRIMARY KEY,
    loan_id    uuid        NOT NULL REFERENCES loans (id),
    from_status text,
    to_status  text        NOT NULL,
    actor      text        NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX loan_transitions_loan ON loan_transitions (loan_id, id);

CREATE TABLE loans_ledger_accounts (key text PRIMARY KEY, account_id uuid NOT NULL);
