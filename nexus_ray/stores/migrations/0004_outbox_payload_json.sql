-- An event's payload is kept as the JSON text it was written as (json), not parsed into jsonb.
--
-- Nothing queries inside a payload on the write path: the relay reads it back as text to put it in the broker's
-- message as it is (stores/events.py), so jsonb cost PostgreSQL a parse and a build at every insert and a
-- serialisation at every read, for nothing. Measured on 1,000-event statements of ledger payloads (about 350
-- bytes each, bench/outbox_statements.py): PostgreSQL's CPU for the insert 10-17 ms with jsonb against 7-13 ms with
-- json, for the relay's read 5-9 against 3-5 ms (bench/RESULTS.md). json still refuses text that is not JSON,
-- and ->> and the asyncpg codecs work on it as on jsonb.
ALTER TABLE outbox ALTER COLUMN payload TYPE json USING payload::json;

-- And the index of published events by broker offset goes: no statement reads it, and the relay's mark of each
-- published event wrote an entry into it (PostgreSQL's CPU for marking 1,000 events: 13-17 ms with it, 10-15 ms
-- without, in the same runs). An operator who looks an event up by its offset filters the outbox by topic and time.
DROP INDEX outbox_published_offsets;
