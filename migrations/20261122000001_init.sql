-- cohort's schema. PostgreSQL is the system of record: workers keep device state in memory for speed, but
-- every effect and every input position is written here, in one transaction per batch.

-- Tenants. Events for an org that is not here are dead-lettered.
CREATE TABLE orgs (
    id          text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per device. `partition` is the input partition that owns the device: only the worker owning that
-- partition writes the device's dynamic memberships. `version` increases with every worker write; every
-- worker write is guarded by it (`WHERE version = <expected>`), so a device re-homed to another partition
-- is never written by two owners (the stale one's write matches no row and its batch is retried).
CREATE TABLE devices (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 256),
    org_id          text NOT NULL REFERENCES orgs (id),
    attributes      jsonb NOT NULL DEFAULT '{}',
    -- The highest per-device sequence applied; older or equal events are skipped.
    sequence        bigint NOT NULL DEFAULT 0,
    partition       integer NOT NULL,
    version         bigint NOT NULL DEFAULT 1,
    is_development  boolean NOT NULL DEFAULT false,
    firmware_lock   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- Loading a partition's devices on assignment.
CREATE INDEX devices_partition_idx ON devices (partition);
-- Previews and per-org scans (reconciliation, default releases).
CREATE INDEX devices_org_idx ON devices (org_id);

-- Groups. Deleting a group is a soft delete (`deleted_at`): workers remove its memberships through the control
-- log, and the log keeps referring to it.
CREATE TABLE device_groups (
    id                  uuid PRIMARY KEY,
    org_id              text NOT NULL REFERENCES orgs (id),
    site_id             text,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    description         text NOT NULL DEFAULT '',
    tags                text[] NOT NULL DEFAULT '{}',
    type                text NOT NULL CHECK (type IN ('static', 'dynamic')),
    filter_conditions   jsonb,
    filter_fields_used  text[] NOT NULL DEFAULT '{}',
    parent_id           uuid REFERENCES device_groups (id),
    version             bigint NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    deleted_at          timestamptz,
    CHECK ((type = 'dynamic') = (filter_conditions IS NOT NULL)),
    CHECK (parent_id IS DISTINCT FROM id)
);
-- Names are unique per org among live groups.
CREATE UNIQUE INDEX device_groups_org_name_idx ON device_groups (org_id, name) WHERE deleted_at IS NULL;
CREATE INDEX device_groups_parent_idx ON device_groups (parent_id) WHERE deleted_at IS NULL;

CREATE TABLE device_group_memberships (
    group_id    uuid NOT NULL REFERENCES device_groups (id),
    device_id   text NOT NULL REFERENCES devices (id),
    is_pinned   boolean NOT NULL DEFAULT false,
    added_at    timestamptz NOT NULL DEFAULT now(),
    added_by    text NOT NULL CHECK (added_by IN ('manual', 'dynamic_rule', 'policy')),
    PRIMARY KEY (group_id, device_id)
);
-- A device's groups (loading a partition, the device view, firmware resolution).
CREATE INDEX device_group_memberships_device_idx ON device_group_memberships (device_id);

-- Append-only: one row per membership change. The primary key is a bigserial (a random UUID key cost 55-60%
-- of insert speed here); its order is commit order within a group's history.
CREATE TABLE group_membership_log (
    id              bigserial PRIMARY KEY,
    group_id        uuid NOT NULL,
    device_id       text NOT NULL,
    action          text NOT NULL CHECK (action IN ('added', 'removed')),
    reason          text NOT NULL CHECK (reason IN ('manual', 'filter_match', 'filter_unmatch', 'pinned', 'unpinned')),
    -- What led to it: {"event_id", "partition", "offset"}, {"control_id", "kind"}, {"timer": instant} or
    -- {"api": actor}.
    cause           jsonb NOT NULL,
    group_version   bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The API's "log of a group, newest first" (and by device within a group).
CREATE INDEX group_membership_log_group_idx ON group_membership_log (group_id, id);

-- The durable, ordered control log: every change workers must act on (group definitions, pins, releases…),
-- written in the same transaction as the change and announced with NOTIFY cohort_control. Appends take
-- `pg_advisory_xact_lock(<control log key>)` first, so ids become visible in order and a reader that has
-- seen id N has seen every id below it.
CREATE TABLE control_log (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Per input partition: where its worker resumes. `next_offset` is the next Kafka offset to process
-- (exclusive end of what is applied); `control_position` the last control-log id applied to its devices.
-- Every batch's update is fenced on `epoch` (WHERE epoch = <expected>), so a worker that lost the partition
-- can never commit for it.
CREATE TABLE partition_positions (
    topic             text NOT NULL,
    partition         integer NOT NULL,
    next_offset       bigint NOT NULL DEFAULT 0,
    control_position  bigint NOT NULL DEFAULT 0,
    epoch             bigint NOT NULL DEFAULT 0,
    owner             text NOT NULL DEFAULT '',
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- The transactional outbox: messages for Kafka (dead letters, later rollout-target events) written in the
-- same transaction as the effect that caused them and published by the relay in id order.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    topic         text NOT NULL,
    message_key   bytea,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
-- The relay's work queue: unpublished rows in order.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
