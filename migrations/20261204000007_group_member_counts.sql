-- Group member counts, maintained as memberships are written instead of counted on every read.
--
-- Every group the API shows carries its `deviceCount`. Counting a million-device group's memberships took
-- 65-173 ms per group, and a listing of 100 groups 0.8-1.3 s. Here a read sums a group's few rows in
-- `group_member_counts` (one primary-key range), whatever the group's size.
--
-- How the count stays exact:
-- - Two statement-level triggers on `device_group_memberships` (AFTER INSERT, AFTER DELETE) add each
--   statement's per-group change, counted from its transition table, in the same transaction as the change.
--   A trigger sees every writer — the worker's batches, the API's static adds and removes, the conversion of
--   a dynamic group to static, `cohort reconcile`'s repair, the benchmark's writers and `COPY` — so no code
--   path can forget it.
-- - The change goes to the row (group, shard = pg_backend_pid()). Two transactions running at the same time
--   never share a backend, so concurrent writers (the worker's partitions, the API) never update the same
--   count row: they never wait on each other here and cannot deadlock here. Rows are written in group order.
-- - A group's count is the sum of its rows. Shard rows accumulate, one per backend that wrote the group; the
--   relay leader folds them into shard 0 once a minute (`cohort::store::counts::fold`), in one transaction
--   that deletes the shard rows it can lock and adds their sum to shard 0, so every snapshot sees the same
--   sum before and after. Shard 0 is written only by the fold and by the repair, which serialise on an
--   advisory lock.
-- - Memberships' keys never change: every UPDATE of the table sets `is_pinned` or `added_by` only. A trigger
--   refuses an UPDATE that would change `group_id` or `device_id`, as it would move a member between counts
--   unseen.
-- - TRUNCATE of the memberships empties the counts too (a trigger), so a reset database starts exact.
-- - `cohort reconcile` compares every group's sum with count(*) and `--repair` resets a drifted group's
--   rows to its true count.

CREATE TABLE group_member_counts (
    group_id uuid    NOT NULL,
    -- 0 for the folded total; otherwise the backend pid of the transactions whose changes the row holds.
    shard    integer NOT NULL,
    -- Members added minus members removed (a shard row may be negative; the group's sum never is).
    members  bigint  NOT NULL,
    PRIMARY KEY (group_id, shard)
);

INSERT INTO group_member_counts (group_id, shard, members)
SELECT group_id, 0, count(*) FROM device_group_memberships GROUP BY group_id ORDER BY group_id;

CREATE FUNCTION cohort_group_members_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO group_member_counts (group_id, shard, members)
    SELECT group_id, pg_backend_pid(), count(*) FROM inserted GROUP BY group_id ORDER BY group_id
    ON CONFLICT (group_id, shard) DO UPDATE SET members = group_member_counts.members + excluded.members;
    RETURN NULL;
END $$;

CREATE TRIGGER device_group_memberships_counted_inserts AFTER INSERT ON device_group_memberships
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_group_members_inserted();

CREATE FUNCTION cohort_group_members_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO group_member_counts (group_id, shard, members)
    SELECT group_id, pg_backend_pid(), -count(*) FROM deleted GROUP BY group_id ORDER BY group_id
    ON CONFLICT (group_id, shard) DO UPDATE SET members = group_member_counts.members + excluded.members;
    RETURN NULL;
END $$;

CREATE TRIGGER device_group_memberships_counted_deletes AFTER DELETE ON device_group_memberships
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_group_members_deleted();

CREATE FUNCTION cohort_group_members_key_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a membership''s group_id and device_id never change (group member counts rely on it)'
        USING ERRCODE = 'feature_not_supported';
END $$;

CREATE TRIGGER device_group_memberships_fixed_keys BEFORE UPDATE OF group_id, device_id
    ON device_group_memberships
    FOR EACH ROW
    WHEN ((OLD.group_id, OLD.device_id) IS DISTINCT FROM (NEW.group_id, NEW.device_id))
    EXECUTE FUNCTION cohort_group_members_key_update();

-- DELETE, not TRUNCATE: a TRUNCATE naming both tables would refuse to truncate one in use by this trigger.
-- The table is small (a few rows per group).
CREATE FUNCTION cohort_group_members_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM group_member_counts;
    RETURN NULL;
END $$;

CREATE TRIGGER device_group_memberships_counted_truncate AFTER TRUNCATE ON device_group_memberships
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_group_members_truncated();
