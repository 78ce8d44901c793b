-- Rollout progress, halts and automatic stage advances.
--
-- - `firmware_releases.failure`: what a device reports when an update failed (`{"attribute", "value"}`);
--   `halt`: the thresholds that halt the release (`{"failures", "failureRate", "reverts", "revertRate",
--   "rollback"}`); `soak_seconds`: how long each stage runs before the next starts by itself (no automatic
--   advance when null); `stage_started_at`: when the current stage started; `state`: whether it selects
--   devices (`paused`: only those it targets keep it; `rolled_back`: none); `halted`: why it was paused
--   or rolled back (the threshold, the counts and the cause, or the operator who paused it).
-- - `devices.target_release`: the release that decided the device's target; `target_standing`: where the
--   device stands in it; `target_reached`: whether it reported running the target since that release
--   came to target it.
-- - `release_progress`: each release's counts, in additive parts (one per partition, so partitions'
--   batches never wait for each other's row; a part may go below zero when a device moves between
--   partitions, only the sum means anything). Written by the owning workers in their batch transactions.
ALTER TABLE firmware_releases
    ADD COLUMN failure jsonb,
    ADD COLUMN halt jsonb,
    ADD COLUMN soak_seconds integer CHECK (soak_seconds IS NULL OR soak_seconds BETWEEN 1 AND 31536000),
    ADD COLUMN stage_started_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN state text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused', 'rolled_back')),
    ADD COLUMN halted jsonb;

ALTER TABLE devices
    ADD COLUMN target_release uuid,
    ADD COLUMN target_standing text CHECK (target_standing IN ('previous', 'running', 'failed', 'reverted')),
    ADD COLUMN target_reached boolean NOT NULL DEFAULT false;

CREATE TABLE release_progress (
    release_id uuid NOT NULL REFERENCES firmware_releases (id),
    partition  integer NOT NULL,
    targeted   bigint NOT NULL DEFAULT 0,
    running    bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    reverted   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (release_id, partition)
);
