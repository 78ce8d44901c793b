-- Cellular identifiers (the built-in string fields imei, iccid, esn, mdn, meid, msisdn): the API finds devices
-- by them (`cohort::store::members::resolve_identifiers`), in batches of up to 10,000, in orgs of a million
-- devices.
--
-- Why a side table kept by triggers, not an index on `devices`: every worker write that changes a device's
-- attributes is a non-HOT update (`devices_org_firmware_idx` already covers `attributes`), and a non-HOT update
-- adds an entry to EVERY index of the table. Identifiers almost never change, yet an index over them would be
-- paid on each attribute change, the hot path. Measured on PostgreSQL 15, 300k devices each with four
-- identifiers, on a loaded 2-core machine (so rounded, relative to no identifier index):
--
--                                              update 100k devices'      insert 50k new devices
--                                              uptimeSeconds (worker     with identifiers (worker
--                                              statement shape)          insert shape)
--   one GIN index over the identifier keys     1.6-2.0x                  2x
--   six partial B-tree (org, value) indexes    1.4-1.6x                  -
--   this table and its triggers                1.0x (within noise)       3x
--
-- Updates are what a fleet does all day; a device is inserted once. The row trigger's WHEN clause compares six
-- jsonb values and fires only when one changed (a first report, a SIM swap: ~0.1-0.5 ms each); inserted devices
-- are synchronised once per INSERT statement, set-based, from the transition table. The table has only its
-- primary key (a second index on device_id doubled its insert cost): a device's rows are found through its own
-- keys. A lookup is one primary-key probe per identifier.

-- The identifiers in `attributes`, as '<field>:<value>' keys; the MEID (hexadecimal) in upper case so any
-- case matches. Not STRICT, so the planner can inline it.
CREATE FUNCTION cohort_device_identifiers(attributes jsonb) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT array_remove(ARRAY[
        'imei:' || (attributes ->> 'imei'),
        'iccid:' || (attributes ->> 'iccid'),
        'esn:' || (attributes ->> 'esn'),
        'mdn:' || (attributes ->> 'mdn'),
        'meid:' || upper(attributes ->> 'meid'),
        'msisdn:' || (attributes ->> 'msisdn')], NULL) $$;

-- One row per (device, identifier). Several devices may report the same identifier (the lookup answers the
-- smallest id); nothing here refuses that, as device reports are not the place to enforce uniqueness.
CREATE TABLE device_identifiers (
    org_id      text NOT NULL,
    identifier  text NOT NULL,
    -- No foreign key: its per-row check added a fifth to the insert cost; the triggers keep the rows in step with
    -- `devices`, deletions included.
    device_id   text NOT NULL,
    PRIMARY KEY (org_id, identifier, device_id)
);

CREATE FUNCTION cohort_device_identifiers_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO device_identifiers (org_id, identifier, device_id)
    SELECT n.org_id, k.identifier, n.id
    FROM inserted n CROSS JOIN LATERAL unnest(cohort_device_identifiers(n.attributes)) AS k (identifier)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_identifiers_inserted AFTER INSERT ON devices
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_device_identifiers_inserted();

CREATE FUNCTION cohort_device_identifiers_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_identifiers
    WHERE org_id = OLD.org_id AND identifier = ANY (cohort_device_identifiers(OLD.attributes))
      AND device_id = OLD.id;
    INSERT INTO device_identifiers (org_id, identifier, device_id)
    SELECT NEW.org_id, k.identifier, NEW.id
    FROM unnest(cohort_device_identifiers(NEW.attributes)) AS k (identifier)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_identifiers_updated AFTER UPDATE OF attributes, org_id ON devices
    FOR EACH ROW
    WHEN ((OLD.attributes -> 'imei', OLD.attributes -> 'iccid', OLD.attributes -> 'esn',
           OLD.attributes -> 'mdn', OLD.attributes -> 'meid', OLD.attributes -> 'msisdn', OLD.org_id)
          IS DISTINCT FROM
          (NEW.attributes -> 'imei', NEW.attributes -> 'iccid', NEW.attributes -> 'esn',
           NEW.attributes -> 'mdn', NEW.attributes -> 'meid', NEW.attributes -> 'msisdn', NEW.org_id))
    EXECUTE FUNCTION cohort_device_identifiers_updated();

CREATE FUNCTION cohort_device_identifiers_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM device_identifiers i USING deleted o
    WHERE i.org_id = o.org_id AND i.identifier = ANY (cohort_device_identifiers(o.attributes))
      AND i.device_id = o.id;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_identifiers_deleted AFTER DELETE ON devices
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION cohort_device_identifiers_deleted();

-- Devices stored before this migration (none can report these fields yet, as they were not in the catalogue;
-- kept so the table is complete whatever the history).
INSERT INTO device_identifiers (org_id, identifier, device_id)
SELECT d.org_id, k.identifier, d.id
FROM devices d CROSS JOIN LATERAL unnest(cohort_device_identifiers(d.attributes)) AS k (identifier)
WHERE d.attributes ?| ARRAY['imei', 'iccid', 'esn', 'mdn', 'meid', 'msisdn']
ON CONFLICT DO NOTHING;
