-- What decides how an account is posted to is fixed when it is opened: its owner (who may draw on it), its type
-- (which side raises it), its currency, whether it may go below zero, and its number of balance shards. Each
-- process keeps what it read of them (service._accounts), so a change here would be missed by the processes that
-- read them before; it is refused instead. (Nothing in the platform changes them: another policy is another
-- account.) Its name and metadata may change.
CREATE FUNCTION ledger_accounts_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a ledger account''s owner, type, currency, allow_negative and shards are fixed when it is opened'
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_accounts_fixed BEFORE UPDATE OF owner, type, currency, allow_negative, shards
    ON ledger_accounts FOR EACH ROW
    WHEN ((OLD.owner, OLD.type, OLD.currency, OLD.allow_negative, OLD.shards)
          IS DISTINCT FROM (NEW.owner, NEW.type, NEW.currency, NEW.allow_negative, NEW.shards))
    EXECUTE FUNCTION ledger_accounts_fixed();
