-- An org's settings, and the secret that confirmation tokens for changes over its retarget cap are signed
-- with (docs/firmware.md, "Retarget cap").
--
-- - `org_settings`: one row per org that has set anything; an org without one has the defaults.
--   `retarget_cap` is how many devices one change (a release, a withdrawal, a group's deletion, new
--   definition or static batch) may retarget without confirmation; `NULL`, the default, is no cap. Bounded so a typo cannot read as "no cap" by
--   overflowing anything that compares with it.
-- - `server_secrets`: secrets every API process shares, by name. `retarget_confirmation` signs the tokens
--   a dry run answers (HMAC-SHA256), so whichever process serves the real request can check them; nothing
--   is stored per token. It is drawn here, from PostgreSQL's strong random source (two version-4 UUIDs,
--   244 random bits), and drawn again by the API if the row is ever deleted (which also rotates it:
--   tokens issued before no longer confirm anything). Whoever can read this table can read every device
--   and release the tokens describe, and a token authorises nothing its bearer's key does not.
CREATE TABLE org_settings (
    org_id        text PRIMARY KEY REFERENCES orgs (id),
    retarget_cap  bigint CHECK (retarget_cap IS NULL OR retarget_cap BETWEEN 0 AND 10000000),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text NOT NULL DEFAULT ''
);

CREATE TABLE server_secrets (
    name        text PRIMARY KEY,
    secret      bytea NOT NULL CHECK (length(secret) = 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO server_secrets (name, secret)
VALUES ('retarget_confirmation', uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
