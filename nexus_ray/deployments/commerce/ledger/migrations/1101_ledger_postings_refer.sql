-- A posting's entry and account are checked once per statement, not once per row.
--
-- The two foreign keys of ledger_postings checked each row on its own: one lookup of the entry and one of the
-- account per posting, each taking a KEY SHARE lock on the row it found. A batch of 1,000 transfers writes 2,000
-- postings in one statement, so that was 4,000 lookups and locks -- and the account rows are the same few hundred
-- in every concurrent batch, so their locks were shared between transactions (multixacts). Measured: the
-- postings' statement took 52 ms a batch with the keys, 29-31 ms with this check (bench/RESULTS.md).
--
-- What replaces them: one anti-join of the statement's new rows (a transition table) against the entries and the
-- accounts, after the insert, in the same transaction. The lock a foreign key takes is there to stop the row it
-- found from being deleted before the commit; neither can be: entries are append-only (1100_ledger.sql) and the
-- triggers below refuse to delete an account, to change its id, or to truncate the table. Postings themselves
-- are append-only, so an insert is the only way a posting comes to be.
ALTER TABLE ledger_postings DROP CONSTRAINT ledger_postings_entry_id_fkey,
                            DROP CONSTRAINT ledger_postings_account_id_fkey;

CREATE FUNCTION ledger_postings_refer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    orphan record;
BEGIN
    SELECT a.entry_id, a.account_id INTO orphan
      FROM added a
     WHERE NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.id = a.entry_id)
        OR NOT EXISTS (SELECT 1 FROM ledger_accounts c WHERE c.id = a.account_id)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a posting must refer to an existing entry and account (entry %, account %)',
            orphan.entry_id, orphan.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_postings_refer AFTER INSERT ON ledger_postings
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_refer();

-- Accounts are never deleted (their postings and holds refer to them for ever) and their ids never change.
CREATE FUNCTION ledger_accounts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger accounts are kept for ever: an account is not deleted, nor its id changed'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_accounts_no_delete BEFORE DELETE OR UPDATE OF id ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_accounts_keep();
CREATE TRIGGER ledger_accounts_no_truncate BEFORE TRUNCATE ON ledger_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_accounts_keep();
