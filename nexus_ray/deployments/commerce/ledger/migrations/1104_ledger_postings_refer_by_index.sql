-- The postings' statement check (1101_ledger_postings_refer.sql) looks its entries and accounts up by their keys.
--
-- Its one query, NOT EXISTS (entry) OR NOT EXISTS (account) over the statement's new rows, was planned as two
-- hashed subplans: a scan of the whole of ledger_entries to hash it, at every statement. That grew with the ledger
-- (EXPLAIN ANALYZE of the query over a batch's 2,000 postings: 0.7 ms with 1,200 entries, 8.7 ms with 31,200,
-- 41 ms with 120,200; bench/RESULTS.md), and it would have taken seconds a batch on a ledger of millions of
-- entries. Now the statement's distinct entry and account ids are counted where they are found by the primary keys
-- (= ANY of an array), with sequential scans off for the function, so that the check is index look-ups whatever
-- the planner thinks of the table's size (at 21,000 entries it still chose to read them all); only when a count
-- falls short is the orphan looked for, to name it in the error.
CREATE OR REPLACE FUNCTION ledger_postings_refer() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    entries uuid[];
    accounts uuid[];
    orphan record;
BEGIN
    SELECT array_agg(DISTINCT entry_id), array_agg(DISTINCT account_id) INTO entries, accounts FROM added;
    IF entries IS NULL
       OR ((SELECT count(*) FROM ledger_entries WHERE id = ANY (entries)) = cardinality(entries)
           AND (SELECT count(*) FROM ledger_accounts WHERE id = ANY (accounts)) = cardinality(accounts)) THEN
        RETURN NULL;
    END IF;
    SELECT a.entry_id, a.account_id INTO orphan
      FROM added a
     WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.id = a.entry_id)
        OR NOT EXISTS (SELECT 1 FROM ledger_accounts c WHERE c.id = a.account_id)
     LIMIT 1;
    RAISE EXCEPTION 'a posting must refer to an existing entry and account (entry %, account %)',
        orphan.entry_id, orphan.account_id USING ERRCODE = 'foreign_key_violation';
END
$$;
