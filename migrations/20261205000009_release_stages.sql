-- Staged releases: a release selects, stage by stage, a growing share of its target's devices (in basis
-- points: 10000 is every device), chosen by a stable hash of the release and the device. A release made
-- without stages has the one stage of the whole target.
ALTER TABLE firmware_releases
    ADD COLUMN stages integer[] NOT NULL DEFAULT '{10000}',
    ADD COLUMN stage  integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT firmware_releases_stages_check CHECK (
        cardinality(stages) BETWEEN 1 AND 10
        AND 0 < ALL (stages) AND 10000 >= ALL (stages)
        AND stage >= 0 AND stage < cardinality(stages));
