-- Memberships without foreign-key triggers.
--
-- Every membership a worker inserts ran two foreign-key checks (its device, its group): a per-row trigger
-- that looks the key up through SPI and locks the referenced row FOR KEY SHARE. In the benchmark's batch
-- transaction, profiled on PostgreSQL 15 with the working set in memory (so the server is bound by CPU, not
-- by disk), those checks were 12% of the server's CPU time; each lock also wrote a WAL record and dirtied
-- the referenced page, and two workers locking the same group row made multixacts of it.
--
-- What the keys guarded is kept by the writers and by the schema's other rules:
-- - devices and groups are never deleted (a group's delete is a soft delete, `deleted_at`; nothing deletes a
--   device), so a membership can never be orphaned by a delete;
-- - the worker inserts memberships only for devices it holds, whose rows it wrote in the same transaction or
--   an earlier one, and only for groups of its registry, which were committed before the control-log entry
--   that announced them;
-- - the API's static adds insert only devices found in the org (`JOIN devices`), into a group row it has
--   locked; pins go through the control log and the owning worker.
-- `cohort bench` checks the stored memberships against an oracle at the end of every run.

ALTER TABLE device_group_memberships
    DROP CONSTRAINT device_group_memberships_group_id_fkey,
    DROP CONSTRAINT device_group_memberships_device_id_fkey;
