//! API keys: created and revoked by `cohort api-key`, checked by the REST API on every request.
//!
//! A key is `cohort_<prefix>_<secret>`: the prefix (12 hex characters) is a public lookup handle, the
//! secret 256 random bits. Only the SHA-256 digest of the whole key is stored; checking looks the row up by
//! prefix and compares digests in constant time, so neither a timing difference nor the table reveals a
//! key. The key itself is shown once, when created, and never logged.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::StoreError;

/// What a valid key may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyScope {
    /// The key's id (rate limits are per key).
    pub key_id: Uuid,
    /// `None`: a system key, allowed on every org. `Some(org)`: only that org's resources exist for it.
    pub org_id: Option<String>,
}

/// A key as listed (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: Uuid,
    pub prefix: String,
    pub org_id: Option<String>,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why a key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("org {0:?} does not exist (create it first)")]
    UnknownOrg(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Store(e.into())
    }
}

const PREFIX_LEN: usize = 12;

fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Random bytes from the operating system's CSPRNG, through UUIDv4's generator (each v4 UUID carries 122
/// random bits; the key's secret takes two, 244 bits).
fn random_bytes() -> [u8; 48] {
    let mut out = [0u8; 48];
    for chunk in out.chunks_mut(16) {
        chunk.copy_from_slice(Uuid::new_v4().as_bytes());
    }
    out
}

/// Creates a key for `org_id` (or a system key with `None`) and returns its info and the key, which is not
/// stored and cannot be shown again.
pub async fn create(
    pool: &PgPool,
    org_id: Option<&str>,
    name: &str,
) -> Result<(KeyInfo, String), KeyError> {
    use base64::Engine as _;
    let random = random_bytes();
    let prefix: String = random[..PREFIX_LEN / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&random[16..]);
    let key = format!("cohort_{prefix}_{secret}");
    let id = Uuid::new_v4();
    let row: Result<(chrono::DateTime<chrono::Utc>,), sqlx::Error> = sqlx::query_as(
        "INSERT INTO api_keys (id, prefix, digest, org_id, name) VALUES ($1, $2, $3, $4, $5) \
         RETURNING created_at",
    )
    .bind(id)
    .bind(&prefix)
    .bind(digest(&key))
    .bind(org_id)
    .bind(name)
    .fetch_one(pool)
    .await;
    let (created_at,) = match row.map_err(StoreError::from) {
        Ok(row) => row,
        Err(StoreError::ForeignKeyViolation { .. }) => {
            return Err(KeyError::UnknownOrg(org_id.unwrap_or_default().to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    Ok((
        KeyInfo {
            id,
            prefix,
            org_id: org_id.map(str::to_string),
            name: name.to_string(),
            created_at,
            revoked_at: None,
        },
        key,
    ))
}

/// Checks a presented key: its scope when it is valid and not revoked, `None` otherwise.
pub async fn authenticate(pool: &PgPool, presented: &str) -> Result<Option<KeyScope>, StoreError> {
    let Some(prefix) = presented
        .strip_prefix("cohort_")
        .and_then(|rest| rest.get(..PREFIX_LEN))
        .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Ok(None);
    };
    let row: Option<(Uuid, Vec<u8>, Option<String>)> = sqlx::query_as(
        "SELECT id, digest, org_id FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    // Digest even when no row matched, so an unknown prefix costs the same as a wrong secret.
    let presented_digest = digest(presented);
    Ok(row.and_then(|(key_id, stored, org_id)| {
        bool::from(stored.ct_eq(&presented_digest)).then_some(KeyScope { key_id, org_id })
    }))
}

/// Revokes a key by id or prefix; returns whether a live key was revoked.
pub async fn revoke(pool: &PgPool, id_or_prefix: &str) -> Result<bool, StoreError> {
    let id = Uuid::parse_str(id_or_prefix).ok();
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE (id = $1 OR prefix = $2) AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(id_or_prefix)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(revoked > 0)
}

/// Every key, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<KeyInfo>, StoreError> {
    type Row = (
        Uuid,
        String,
        Option<String>,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, prefix, org_id, name, created_at, revoked_at FROM api_keys ORDER BY created_at DESC",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, prefix, org_id, name, created_at, revoked_at)| KeyInfo {
                id,
                prefix,
                org_id,
                name,
                created_at,
                revoked_at,
            },
        )
        .collect())
}
