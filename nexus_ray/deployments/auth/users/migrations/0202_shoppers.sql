-- Every registered person may shop: read the catalog, place and follow their own orders, and read their own
-- invoices and shipments. Each of these scopes reaches only the caller's own records (another customer's needs
-- the service's admin scope), so they are safe to hold by default; a merchant's or an operator's scopes are
-- granted through other roles. Identity administrators get them too: an administrator acts on an account only
-- while it holds every scope the account holds (it must outrank it), so without them they could no longer reset
-- a shopper's password or end a shopper's sessions.
INSERT INTO role_scopes (role, scope)
SELECT r.role, s.scope
FROM (VALUES ('user'), ('identity-admin')) AS r(role)
CROSS JOIN (VALUES ('commerce:catalog:read'), ('commerce:order-processor:read'), ('commerce:order-processor:write'),
                   ('commerce:invoices:read'), ('commerce:shipping:read')) AS s(scope)
ON CONFLICT DO NOTHING;
