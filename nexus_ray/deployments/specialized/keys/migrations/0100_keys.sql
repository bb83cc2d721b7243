-- key-service: signing keys sealed under the master key, and the audit of every key use.

CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,               -- RFC 7638 thumbprint of the public key
    purpose      text        NOT NULL,           -- platform (access and ID tokens) | pv-keys
    alg          text        NOT NULL CHECK (alg IN ('RS256', 'ES256', 'EdDSA')),
    public_jwk   jsonb       NOT NULL,
    private_key  bytea       NOT NULL,           -- nonce || AES-256-GCM(PKCS#8 DER), key derived from the master key
    master_key_id text       NOT NULL,           -- which master key sealed it
    created_at   timestamptz NOT NULL DEFAULT now(),
    rotated_at   timestamptz,                    -- superseded by a newer key; NULL while current
    retires_at   timestamptz,                    -- verifies until then (rotated_at + the longest token lifetime)
    revoked_at   timestamptz,                    -- withdrawn at once (compromise)
    CHECK ((rotated_at IS NULL) = (retires_at IS NULL))
);
-- One current key per purpose and algorithm; rotation swaps it in one transaction.
CREATE UNIQUE INDEX signing_keys_current ON signing_keys (purpose, alg) WHERE rotated_at IS NULL;
CREATE INDEX signing_keys_verifying ON signing_keys (purpose, retires_at) WHERE revoked_at IS NULL;

CREATE TABLE key_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text        NOT NULL CHECK (action IN ('generate', 'sign', 'rotate', 'revoke', 'encrypt', 'decrypt')),
    outcome     text        NOT NULL DEFAULT 'ok',  -- ok | tampered | malformed
    kid         text,                               -- signing key id, or the master key id for envelopes
    alg         text,
    purpose     text,
    actor       text        NOT NULL,               -- the principal (or service) that used the key
    context     text,                               -- envelope context
    request_id  text,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb  -- never key material, tokens or plaintext
);
CREATE INDEX key_audit_kid ON key_audit (kid, id);
CREATE INDEX key_audit_action ON key_audit (action, id);
