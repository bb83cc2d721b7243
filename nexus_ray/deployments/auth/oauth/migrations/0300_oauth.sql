-- auth-service-v2 (OAuth 2.0 / OpenID Connect provider): registered clients, authorization codes,
-- grants (one per sign-in: the family of its refresh tokens) and revoked access tokens.
-- Client secrets, codes and refresh tokens are credentials: only keyed hashes of them are kept
-- (HMAC-SHA256 under the master key), so a copy of the database yields none of them.

CREATE TABLE oauth_clients (
    client_id      text PRIMARY KEY,
    client_type    text        NOT NULL CHECK (client_type IN ('confidential', 'public')),
    secret_hash    bytea,                          -- NULL for public clients
    name           text        NOT NULL,
    redirect_uris  text[]      NOT NULL DEFAULT '{}',  -- matched exactly, character for character
    allowed_scopes text[]      NOT NULL DEFAULT '{}',  -- platform scopes; a token never exceeds them
    grant_types    text[]      NOT NULL,
    id_token_alg   text        NOT NULL DEFAULT 'RS256' CHECK (id_token_alg IN ('RS256', 'ES256', 'EdDSA')),
    introspect_any boolean     NOT NULL DEFAULT false, -- a resource server: may introspect any client's tokens
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at timestamptz,
    CHECK ((client_type = 'public') = (secret_hash IS NULL))
);

-- One sign-in of a user at a client: the refresh tokens it yields form a family that is revoked
-- as a whole (reuse of a rotated refresh token, replay of its code, revocation, user gone).
CREATE TABLE oauth_grants (
    grant_id       uuid PRIMARY KEY,
    client_id      text        NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    scopes         text[]      NOT NULL,
    auth_time      timestamptz NOT NULL,           -- when the user authenticated (ID token auth_time)
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX oauth_grants_client ON oauth_grants (client_id);
CREATE INDEX oauth_grants_user ON oauth_grants (user_id);

-- Single-use: used_at is set by the first exchange, whatever its outcome; a second one finds it set
-- and revokes the grant the first one opened (RFC 6749 section 4.1.2). Rows outlive their expiry by
-- a day so that late replays are still recognised.
CREATE TABLE oauth_codes (
    code_hash      bytea PRIMARY KEY,
    client_id      text        NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    redirect_uri   text        NOT NULL,
    scopes         text[]      NOT NULL,
    nonce          text,
    code_challenge text        NOT NULL,           -- PKCE, S256 only
    auth_time      timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    grant_id       uuid REFERENCES oauth_grants (grant_id) ON DELETE SET NULL
);
CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);

-- Each use rotates a refresh token: used_at is set and a successor issued in the same family.
-- Presenting a used one again is reuse: the family is revoked.
CREATE TABLE oauth_refresh_tokens (
    token_hash     bytea PRIMARY KEY,
    grant_id       uuid        NOT NULL REFERENCES oauth_grants (grant_id) ON DELETE CASCADE,
    issued_at      timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz
);
CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (grant_id);
CREATE INDEX oauth_refresh_tokens_expiry ON oauth_refresh_tokens (expires_at);

-- Access tokens are JWTs the edge verifies offline; a revoked one is remembered until it expires,
-- for introspection (RFC 7662) to report it inactive.
CREATE TABLE oauth_revoked_access_tokens (
    jti        text PRIMARY KEY,
    client_id  text        NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_revoked_access_tokens_expiry ON oauth_revoked_access_tokens (expires_at);
