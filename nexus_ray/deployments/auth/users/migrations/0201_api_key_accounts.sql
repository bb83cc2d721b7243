-- What the edge needs to hold an API key to its owner's current status and roles (it calls this at each
-- verification that misses its cache): whether the key's principal is an account, whether that account is
-- active, and the scopes of its roles now. A principal that is no account (an operator's `nexus api-key`)
-- keeps its key's own scopes.
CREATE FUNCTION api_key_account(principal text, OUT is_account boolean, OUT active boolean, OUT scopes text[])
LANGUAGE sql STABLE AS $$
    SELECT u.user_id IS NOT NULL,
           coalesce(u.status = 'active', false),
           coalesce(array_agg(DISTINCT rs.scope) FILTER (WHERE rs.scope IS NOT NULL), '{}')
    FROM (SELECT CASE WHEN principal ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                      THEN principal::uuid END AS user_id) p
    LEFT JOIN users u ON u.user_id = p.user_id
    LEFT JOIN user_roles ur ON ur.user_id = u.user_id
    LEFT JOIN role_scopes rs ON rs.role = ur.role
    GROUP BY u.user_id, u.status
$$;
