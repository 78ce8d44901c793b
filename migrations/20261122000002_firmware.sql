-- Firmware releases and resolved targets.

-- A version released to a group, or (group_id NULL) as the org's default. A group has at most one live
-- release and an org at most one live default; withdrawing keeps the row (withdrawn_at) for history.
CREATE TABLE firmware_releases (
    id            uuid PRIMARY KEY,
    org_id        text NOT NULL REFERENCES orgs (id),
    version       text NOT NULL CHECK (length(version) BETWEEN 1 AND 128),
    version_kind  text NOT NULL CHECK (version_kind IN ('integer', 'semver')),
    group_id      uuid REFERENCES device_groups (id),
    created_by    text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    withdrawn_at  timestamptz
);
CREATE UNIQUE INDEX firmware_releases_live_group_idx ON firmware_releases (group_id)
    WHERE withdrawn_at IS NULL AND group_id IS NOT NULL;
CREATE UNIQUE INDEX firmware_releases_live_default_idx ON firmware_releases (org_id)
    WHERE withdrawn_at IS NULL AND group_id IS NULL;

-- The resolved target, written by the owning worker with the change that caused it. `target_sequence`
-- counts the device's rollout-target events (it numbers them and makes their ids deterministic).
ALTER TABLE devices
    ADD COLUMN target_version   text,
    ADD COLUMN target_reason    text NOT NULL DEFAULT 'none'
        CHECK (target_reason IN ('development', 'locked', 'group', 'default', 'none')),
    ADD COLUMN target_group     uuid,
    ADD COLUMN target_sequence  bigint NOT NULL DEFAULT 0;

-- "Does any device of the org report running this version?" (a version becomes the default only then).
CREATE INDEX devices_org_firmware_idx ON devices (org_id, (attributes ->> 'firmwareVersion'));
