//! The web console's sessions: opened by signing in with an org's API key, kept server-side, found by the
//! digest of the token the browser's cookie holds, and closed by signing out, by the key's revocation or
//! after an idle period.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// A live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The API key the session was opened with (its rate limit and actor apply).
    pub key_id: Uuid,
    /// The org everything in the session is scoped to.
    pub org_id: String,
    /// The token state-changing requests must carry.
    pub csrf_token: String,
}

/// A new session: the token for the cookie (shown once, never stored) and the session.
#[derive(Clone, Debug)]
pub struct Opened {
    pub token: String,
    pub session: Session,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A fresh random token: 244 bits from the operating system's CSPRNG (two version-4 UUIDs), URL-safe.
pub fn random_token() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Opens a session for an org key, sweeping the sessions idle longer than `idle_secs` on the way.
pub async fn open(
    pool: &PgPool,
    key_id: Uuid,
    org_id: &str,
    idle_secs: i64,
) -> Result<Opened, StoreError> {
    sweep(pool, idle_secs).await?;
    let token = random_token();
    let csrf_token = random_token();
    sqlx::query(
        "INSERT INTO console_sessions (token_digest, key_id, org_id, csrf_token) VALUES ($1, $2, $3, $4)",
    )
    .bind(digest(&token))
    .bind(key_id)
    .bind(org_id)
    .bind(&csrf_token)
    .execute(pool)
    .await?;
    Ok(Opened {
        token,
        session: Session {
            key_id,
            org_id: org_id.to_string(),
            csrf_token,
        },
    })
}

/// The live session of `token`, its idle time restarted; `None` when there is none, it has been idle
/// longer than `idle_secs`, or its key was revoked.
pub async fn touch(
    pool: &PgPool,
    token: &str,
    idle_secs: i64,
) -> Result<Option<Session>, StoreError> {
    let row: Option<(Uuid, String, String)> = sqlx::query_as(
        "UPDATE console_sessions s SET last_seen_at = now() \
         FROM api_keys k \
         WHERE s.token_digest = $1 AND k.id = s.key_id AND k.revoked_at IS NULL \
           AND s.last_seen_at > now() - make_interval(secs => $2) \
         RETURNING s.key_id, s.org_id, s.csrf_token",
    )
    .bind(digest(token))
    .bind(idle_secs as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(key_id, org_id, csrf_token)| Session {
        key_id,
        org_id,
        csrf_token,
    }))
}

/// Closes the session of `token`; whether there was one.
pub async fn close(pool: &PgPool, token: &str) -> Result<bool, StoreError> {
    let closed = sqlx::query("DELETE FROM console_sessions WHERE token_digest = $1")
        .bind(digest(token))
        .execute(pool)
        .await?
        .rows_affected();
    Ok(closed > 0)
}

/// Deletes every session idle longer than `idle_secs`.
pub async fn sweep(pool: &PgPool, idle_secs: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM console_sessions WHERE last_seen_at <= now() - make_interval(secs => $1)",
    )
    .bind(idle_secs as f64)
    .execute(pool)
    .await?
    .rows_affected())
}
