-- key-service: the audit records re-sealing a signing key under a new master key (master-key rotation).
ALTER TABLE key_audit DROP CONSTRAINT key_audit_action_check;
ALTER TABLE key_audit ADD CONSTRAINT key_audit_action_check
    CHECK (action IN ('generate', 'sign', 'rotate', 'revoke', 'encrypt', 'decrypt', 'reseal'));
