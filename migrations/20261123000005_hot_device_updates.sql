-- Device writes as HOT updates.
--
-- The worker rewrites a device's row on every attribute change, the hot path. While `devices_org_firmware_idx`
-- indexed an expression over `attributes`, every such write was a non-HOT update: the new row version went to
-- another page and an entry went into EVERY index of the table. Measured on PostgreSQL 15 with 1M devices
-- (10,000 random attribute changes right after a checkpoint, so each page touched is logged whole once, as it
-- is under write load when checkpoints come every few seconds):
--
--                                                      WAL written    per change
--   expression index, fillfactor 100 (before)          138 MB         13.8 KB (2 heap pages + 4 index pages)
--   no index over attributes, fillfactor 80             61 MB          6.1 KB (one heap page, HOT)
--   the same with wal_compression = lz4                 21 MB          2.1 KB
--
-- WAL volume is what paces checkpoints, and a checkpoint's file syncs are what stall commits (the benchmark's
-- p99 latency). So:
--
-- 1. "Does any device of the org report running this version?" (a version becomes the org default only then)
--    is answered from a side table kept by triggers, as `device_identifiers` is (20261122000004): a row per
--    device that reports a `firmwareVersion`, changed only when that field changes.
-- 2. `devices` leaves a fifth of each page free, so a device's new row version fits on its own page. Page
--    pruning reclaims the old versions as pages fill (no VACUUM needed). Pages written before this migration
--    are full; `VACUUM FULL devices` (which locks the table) repacks them at once, or they free up as they are
--    rewritten.

CREATE TABLE device_firmware_versions (
    org_id     text NOT NULL,
    version    text NOT NULL,
    -- No foreign key, like device_identifiers: the triggers keep the rows in step with `devices`.
    device_id  text NOT NULL,
    PRIMARY KEY (org_id, version, device_id)
);

CREATE FUNCTION cohort_device_firmware_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_firmware_versions (org_id, version, device_id)
    SELECT n.org_id, n.attributes ->> 'firmwareVersion', n.id
    FROM inserted n
    WHERE n.attributes ->> 'firmwareVersion' IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_firmware_inserted AFTER INSERT ON devices
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_device_firmware_inserted();

CREATE FUNCTION cohort_device_firmware_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_firmware_versions
    WHERE org_id = OLD.org_id AND version = OLD.attributes ->> 'firmwareVersion' AND device_id = OLD.id;
    IF NEW.attributes ->> 'firmwareVersion' IS NOT NULL THEN
        INSERT INTO device_firmware_versions (org_id, version, device_id)
        VALUES (NEW.org_id, NEW.attributes ->> 'firmwareVersion', NEW.id)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_firmware_updated AFTER UPDATE OF attributes, org_id ON devices
    FOR EACH ROW
    WHEN ((OLD.attributes ->> 'firmwareVersion', OLD.org_id)
          IS DISTINCT FROM (NEW.attributes ->> 'firmwareVersion', NEW.org_id))
    EXECUTE FUNCTION cohort_device_firmware_updated();

CREATE FUNCTION cohort_device_firmware_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_firmware_versions f USING deleted o
    WHERE f.org_id = o.org_id AND f.version = o.attributes ->> 'firmwareVersion' AND f.device_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_firmware_deleted AFTER DELETE ON devices
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_device_firmware_deleted();

-- Fills both side tables of `devices` from the stored rows, as their triggers would have: for rows written with
-- the triggers off (a bulk load under `session_replication_role = replica`, as `cohort bench` seeds), and
-- below for the devices stored before this migration.
CREATE FUNCTION cohort_fill_device_side_tables() RETURNS void LANGUAGE sql AS $$
    INSERT INTO device_identifiers (org_id, identifier, device_id)
    SELECT d.org_id, k.identifier, d.id
    FROM devices d CROSS JOIN LATERAL unnest(cohort_device_identifiers(d.attributes)) AS k (identifier)
    WHERE d.attributes ?| ARRAY['imei', 'iccid', 'esn', 'mdn', 'meid', 'msisdn']
    ON CONFLICT DO NOTHING;
    INSERT INTO device_firmware_versions (org_id, version, device_id)
    SELECT org_id, attributes ->> 'firmwareVersion', id
    FROM devices
    WHERE attributes ->> 'firmwareVersion' IS NOT NULL
    ON CONFLICT DO NOTHING;
$$;

SELECT cohort_fill_device_side_tables();

DROP INDEX devices_org_firmware_idx;

ALTER TABLE devices SET (fillfactor = 80);
