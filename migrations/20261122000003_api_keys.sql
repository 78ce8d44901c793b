-- API keys for the REST API. Only a SHA-256 digest of each key is stored: keys are 256-bit random
-- strings, so a fast digest is enough (there is nothing to brute-force), and a leaked table reveals no key.
-- `prefix` is the key's public, non-secret lookup part (shown in listings and logs); the digest is
-- compared in constant time after the lookup.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    prefix        text NOT NULL UNIQUE,
    digest        bytea NOT NULL,
    -- NULL: a system key, allowed to act on every org. Otherwise the one org the key may see.
    org_id        text REFERENCES orgs (id),
    name          text NOT NULL DEFAULT '' CHECK (length(name) <= 255),
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- The membership log listing filtered by device (GET /groups/:id/membership-log?deviceId=).
CREATE INDEX group_membership_log_group_device_idx ON group_membership_log (group_id, device_id, id);
-- Group listings by org (and name search) and the members page in device id order.
CREATE INDEX device_groups_org_idx ON device_groups (org_id, name) WHERE deleted_at IS NULL;
