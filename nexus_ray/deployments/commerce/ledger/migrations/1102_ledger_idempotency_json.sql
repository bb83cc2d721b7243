-- A key's stored response is kept as the JSON text it was answered with (json), not parsed into jsonb: it is only
-- ever read back whole, to replay it, and a batch of 1,000 transfers stores 1,000 of them (the same text as the
-- entries' events, see 0004_outbox_payload_json.sql for what the parse cost).
ALTER TABLE ledger_idempotency ALTER COLUMN response TYPE json USING response::json;
