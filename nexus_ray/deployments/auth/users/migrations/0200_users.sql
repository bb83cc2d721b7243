-- user-auth: users and profiles, RBAC (roles -> scopes), email verification, the mail outbox.
-- auth-service keeps its password hashes in users.password_hash and its sessions in Redis.

CREATE TABLE users (
    user_id             uuid PRIMARY KEY,
    kind                text        NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'service')),
    status              text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'erased')),
    username            text        NOT NULL,
    email               text,
    email_verified_at   timestamptz,
    display_name        text,
    locale              text,
    bio                 text,
    password_hash       text,          -- argon2id (PHC string); NULL: no password login
    password_changed_at timestamptz,
    last_login_at       timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    erased_at           timestamptz,
    CHECK (status <> 'erased' OR (email IS NULL AND password_hash IS NULL))
);
-- Erased accounts keep their row (other services refer to the id) but release the name and address.
CREATE UNIQUE INDEX users_username_unique ON users (lower(username)) WHERE status <> 'erased';
CREATE UNIQUE INDEX users_email_unique ON users (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX users_created ON users (created_at, user_id);

CREATE TABLE roles (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{1,39}$'),
    description text        NOT NULL DEFAULT '',
    builtin     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE role_scopes (
    role  text NOT NULL REFERENCES roles (name) ON DELETE CASCADE ON UPDATE CASCADE,
    scope text NOT NULL,
    PRIMARY KEY (role, scope)
);

CREATE TABLE user_roles (
    user_id    uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role       text        NOT NULL REFERENCES roles (name) ON DELETE CASCADE ON UPDATE CASCADE,
    granted_by text        NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role)
);
CREATE INDEX user_roles_role ON user_roles (role);

-- Only a keyed hash of each token is kept; the token itself exists only in the mail sent.
CREATE TABLE email_verifications (
    token_hash bytea PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    email      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX email_verifications_user ON email_verifications (user_id);

-- Mail written in the transaction of the change that sends it; a relay (or a test) reads it from here.
CREATE TABLE mail_outbox (
    id           bigserial PRIMARY KEY,
    message_id   uuid        NOT NULL UNIQUE,
    user_id      uuid        REFERENCES users (user_id) ON DELETE SET NULL,
    to_address   text        NOT NULL,
    template     text        NOT NULL,
    subject      text        NOT NULL,
    body_text    text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX mail_outbox_to ON mail_outbox (lower(to_address), id);
CREATE INDEX mail_outbox_user ON mail_outbox (user_id);

-- Built-in roles. `user` is what registration grants; `admin` holds everything.
INSERT INTO roles (name, description, builtin) VALUES
    ('user', 'Every registered person: their own account, sessions and keys.', true),
    ('admin', 'Platform administrators: every scope.', true),
    ('identity-admin', 'Manages users, roles, keys and sessions of others.', true);

INSERT INTO role_scopes (role, scope) VALUES
    ('user', 'auth:users:read'),
    ('user', 'auth:users:write'),
    ('user', 'auth:auth:read'),
    ('user', 'auth:auth:write'),
    ('user', 'platform:sessions:read'),
    ('user', 'platform:sessions:write'),
    ('admin', '*'),
    ('identity-admin', 'auth:users:read'),
    ('identity-admin', 'auth:users:write'),
    ('identity-admin', 'auth:users:admin'),
    ('identity-admin', 'auth:auth:read'),
    ('identity-admin', 'auth:auth:write'),
    ('identity-admin', 'auth:auth:admin'),
    ('identity-admin', 'platform:sessions:read'),
    ('identity-admin', 'platform:sessions:write'),
    ('identity-admin', 'platform:sessions:admin');
