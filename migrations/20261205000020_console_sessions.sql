-- The web console's sign-in sessions (docs/console.md). A session is opened by signing in with an org's
-- API key and lives until it is signed out, its key is revoked, or it has been idle too long.
--
-- - `token_digest`: the SHA-256 digest of the session token the browser holds in its cookie; the token
--   itself is never stored, so a leaked table opens no session.
-- - `csrf_token`: the per-session token every state-changing form and request must carry. It is no
--   credential on its own (it opens nothing without the cookie), so it is kept as it is to be put in pages.
-- - `last_seen_at`: moved forward on every request; a session idle for longer than the console's idle
--   limit is refused and deleted.
CREATE TABLE console_sessions (
    token_digest  bytea PRIMARY KEY,
    key_id        uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    org_id        text NOT NULL REFERENCES orgs (id),
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now()
);

-- Expired sessions are swept by age.
CREATE INDEX console_sessions_last_seen_idx ON console_sessions (last_seen_at);
