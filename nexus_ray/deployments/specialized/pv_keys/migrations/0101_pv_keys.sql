-- pv-keys: virtual-world assets, their Ed25519-signed access keys, ownership transfers.
-- The access keys themselves are not stored (they are credentials): their claims are, and
-- Ed25519 being deterministic, re-signing the claims gives the same key back.

CREATE TABLE pv_assets (
    asset_id    text PRIMARY KEY,
    owner       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pv_access_keys (
    key_id         text PRIMARY KEY,
    asset_id       text        NOT NULL REFERENCES pv_assets (asset_id),
    holder         text        NOT NULL,
    permissions    text[]      NOT NULL,
    issued_at      bigint      NOT NULL,          -- iat/nbf claim, seconds since the epoch
    expires_at     bigint      NOT NULL,          -- exp claim
    issued_by      text        NOT NULL,
    kid            text        NOT NULL,          -- the pv-keys signing key that signed it first
    revoked_at     timestamptz,
    revoked_by     text,
    revoked_reason text
);
CREATE INDEX pv_access_keys_active ON pv_access_keys (asset_id, holder) WHERE revoked_at IS NULL;
CREATE INDEX pv_access_keys_revoked ON pv_access_keys (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE pv_transfers (
    idempotency_key text PRIMARY KEY,
    request_hash    text        NOT NULL,         -- same key + other request is refused
    asset_id        text        NOT NULL REFERENCES pv_assets (asset_id),
    from_holder     text        NOT NULL,
    to_holder       text        NOT NULL,
    new_key_id      text        NOT NULL REFERENCES pv_access_keys (key_id),
    revoked_key_ids text[]      NOT NULL,
    actor           text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pv_transfers_asset ON pv_transfers (asset_id, created_at);
