-- An issue is one statement (service._INSERT): it takes the series' next number, writes the invoice, its lines and
-- its event. When its idempotency key turns out to be taken, the statement must fail, so that the number it took is
-- given back with it (a statement that ended would have kept the counter's increment): it calls this.
CREATE FUNCTION invoice_key_taken() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'invoice key taken: the idempotency key was used by another issue, and the number is given back';
END
$$;
