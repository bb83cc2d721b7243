-- pv-keys: an idempotency key belongs to the principal that sent it (the transfer's actor).
-- Keyed by the idempotency key alone, another principal repeating someone's key replayed that
-- principal's transfer, new owner's access key included; now it is a transfer of its own.
ALTER TABLE pv_transfers DROP CONSTRAINT pv_transfers_pkey;
ALTER TABLE pv_transfers ADD PRIMARY KEY (actor, idempotency_key);
