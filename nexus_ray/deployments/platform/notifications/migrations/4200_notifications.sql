-- notification-service: templates, contacts and preferences, messages with their delivery state, and what
-- the sandbox providers (SMS, push) would have sent. Design: nexus_ray/deployments/platform/notifications/service.py.

CREATE TABLE notif_templates (
    key        text        NOT NULL,
    channel    text        NOT NULL CHECK (channel IN ('email', 'push', 'sms')),
    locale     text        NOT NULL,
    subject    text        NOT NULL DEFAULT '',
    body_text  text        NOT NULL,
    body_html  text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, channel, locale)
);

-- Where and when a user is reached: addresses, language, time zone and quiet hours (local times).
CREATE TABLE notif_contacts (
    user_id     text PRIMARY KEY,
    email       text,
    phone       text,
    push        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    locale      text        NOT NULL DEFAULT 'en',
    timezone    text        NOT NULL DEFAULT 'UTC',
    quiet_start time,
    quiet_end   time,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Channels per category a user chose; a category without a row uses the service's defaults.
CREATE TABLE notif_preferences (
    user_id  text   NOT NULL,
    category text   NOT NULL,
    channels text[] NOT NULL,
    PRIMARY KEY (user_id, category)
);

CREATE TABLE notif_messages (
    id                  uuid PRIMARY KEY,
    created_by          text        NOT NULL,
    -- The sender's own id for the message: a retried send with the same id is the same message.
    client_message_id   text,
    user_id             text,
    channel             text        NOT NULL CHECK (channel IN ('email', 'push', 'sms')),
    category            text        NOT NULL,
    template            text        NOT NULL,
    locale              text        NOT NULL,
    recipient           text        NOT NULL,
    subject             text        NOT NULL DEFAULT '',
    body_text           text        NOT NULL,
    body_html           text        NOT NULL DEFAULT '',
    urgent              boolean     NOT NULL DEFAULT false,
    status              text        NOT NULL CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'dead')),
    attempts            integer     NOT NULL DEFAULT 0,
    max_attempts        integer     NOT NULL,
    next_attempt_at     timestamptz NOT NULL DEFAULT now(),
    lease_until         timestamptz,
    last_error          text,
    provider_message_id text,
    source_event        uuid,
    created_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (created_by, client_message_id)
);
CREATE INDEX notif_messages_due ON notif_messages (next_attempt_at) WHERE status IN ('queued', 'failed', 'sending');
CREATE INDEX notif_messages_dead ON notif_messages (updated_at, id) WHERE status = 'dead';
CREATE INDEX notif_messages_user ON notif_messages (user_id, created_at DESC);

CREATE TABLE notif_sandbox (
    id         bigserial PRIMARY KEY,
    channel    text        NOT NULL,
    recipient  text        NOT NULL,
    message_id uuid        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notif_sandbox_message ON notif_sandbox (message_id);

-- Default templates (English, with a French order confirmation to show locale fallback).
INSERT INTO notif_templates (key, channel, locale, subject, body_text, body_html) VALUES
('order.created', 'email', 'en', 'Order {{order_id}} received',
 E'Hello,\n\nwe received your order {{order_id}} of {{total}} {{currency}}.\n',
 '<p>Hello,</p><p>we received your order <b>{{order_id}}</b> of {{total}} {{currency}}.</p>'),
('order.created', 'email', 'fr', 'Commande {{order_id}} reçue',
 E'Bonjour,\n\nnous avons reçu votre commande {{order_id}} de {{total}} {{currency}}.\n',
 '<p>Bonjour,</p><p>nous avons reçu votre commande <b>{{order_id}}</b> de {{total}} {{currency}}.</p>'),
('order.paid', 'email', 'en', 'Order {{order_id}} paid',
 E'Your payment for order {{order_id}} ({{total}} {{currency}}) went through.\n',
 '<p>Your payment for order <b>{{order_id}}</b> ({{total}} {{currency}}) went through.</p>'),
('payment.failed', 'email', 'en', 'A payment failed',
 E'Your payment {{id}} of {{amount}} {{currency}} was declined ({{decline_code}}).\n',
 '<p>Your payment {{id}} of {{amount}} {{currency}} was declined ({{decline_code}}).</p>'),
('payment.failed', 'sms', 'en', '', 'Nexus: a payment of {{amount}} {{currency}} was declined.', ''),
('delivery.status', 'email', 'en', 'Your delivery is {{status}}',
 E'Shipment {{shipment_id}} is now {{status}}.\n', '<p>Shipment {{shipment_id}} is now <b>{{status}}</b>.</p>'),
('delivery.status', 'push', 'en', 'Delivery update', 'Shipment {{shipment_id}} is now {{status}}.', ''),
('security.password_changed', 'email', 'en', 'Your password was changed',
 E'The password of your account was changed at {{at}}. If this was not you, contact support now.\n',
 '<p>The password of your account was changed at {{at}}.</p><p>If this was not you, contact support now.</p>'),
('security.password_changed', 'sms', 'en', '', 'Nexus: your password was changed. Not you? Contact support.', ''),
('direct.message', 'email', 'en', '{{subject}}', E'{{text}}\n', '<p>{{text}}</p>'),
('direct.message', 'sms', 'en', '', '{{text}}', ''),
('direct.message', 'push', 'en', '{{subject}}', '{{text}}', '');
