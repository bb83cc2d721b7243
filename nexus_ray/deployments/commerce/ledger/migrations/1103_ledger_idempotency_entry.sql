-- A key answered by an entry of this ledger may keep the entry's id instead of a copy of its JSON.
--
-- A batch of 1,000 transfers stored 1,000 answers of about 350 bytes each with its keys, to replay them; entries
-- never change (1100_ledger.sql), so a replay reads the entry back by its id and answers the same values. A key row
-- is settled when it has either a response or an entry id; one with neither is claimed by a transaction still in
-- flight (or released by its refusal). No foreign key: the key is claimed before its entry is written, in the same
-- transaction, and both commit or neither does.
ALTER TABLE ledger_idempotency ADD COLUMN entry_id uuid;
