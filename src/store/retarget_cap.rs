//! An org's retarget cap: how many devices one change may retarget (change the resolved firmware version
//! of) without confirmation, and the gate every capped change passes in its own transaction, after its
//! impact is computed and before it is written.
//!
//! A change over the cap is refused ([`CapExceeded`]) unless it carries a token a dry run of the same
//! change answered, moments before, for the same impact ([`crate::firmware::confirm`]). The secret tokens
//! are signed with is in `server_secrets`, so every process agrees; no token is stored.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::firmware::{Impact, Mode};
use super::StoreError;
use crate::firmware::confirm::{self, Confirmable, Secret, Unconfirmed, SECRET_BYTES};

/// The largest cap an org may set (a fleet larger than this is unheard of; `null` is no cap).
pub const MAX_RETARGET_CAP: i64 = 10_000_000;

/// The name of the secret confirmation tokens are signed with.
const SECRET_NAME: &str = "retarget_confirmation";

/// An org's settings as stored (the defaults when it never set any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgSettings {
    /// Devices one change may retarget without confirmation; `None`: no cap.
    pub retarget_cap: Option<i64>,
    /// When and by whom they were last changed (`None` for the defaults).
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
}

/// The org's settings.
pub async fn settings(pool: &PgPool, org_id: &str) -> Result<OrgSettings, StoreError> {
    let row: Option<(Option<i64>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT retarget_cap, updated_at, updated_by FROM org_settings WHERE org_id = $1",
    )
    .bind(org_id)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((retarget_cap, at, by)) => OrgSettings {
            retarget_cap,
            updated_at: Some(at),
            updated_by: Some(by),
        },
        None => OrgSettings {
            retarget_cap: None,
            updated_at: None,
            updated_by: None,
        },
    })
}

/// Sets the org's retarget cap (`None`: no cap). The caller checks the org exists and the bound.
pub async fn set_retarget_cap(
    pool: &PgPool,
    org_id: &str,
    cap: Option<i64>,
    actor: &str,
) -> Result<OrgSettings, StoreError> {
    sqlx::query(
        "INSERT INTO org_settings (org_id, retarget_cap, updated_by) VALUES ($1, $2, $3) \
         ON CONFLICT (org_id) DO UPDATE SET retarget_cap = $2, updated_by = $3, updated_at = now()",
    )
    .bind(org_id)
    .bind(cap)
    .bind(actor)
    .execute(pool)
    .await?;
    settings(pool, org_id).await
}

/// What a request brings to confirm a change over the cap, and the time it is checked at.
#[derive(Clone, Debug)]
pub struct Confirmation {
    /// The token a dry run answered (`None`: the request brought none).
    pub token: Option<String>,
    /// Unix seconds: tokens expire against this.
    pub now: i64,
}

impl Confirmation {
    /// No token, checked now.
    pub fn none() -> Self {
        Self {
            token: None,
            now: Utc::now().timestamp(),
        }
    }

    /// `token`, checked now.
    pub fn with(token: Option<String>) -> Self {
        Self {
            token,
            ..Self::none()
        }
    }
}

/// A change refused for retargeting more devices than the org's cap, with its impact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapExceeded {
    pub cap: i64,
    /// The change's impact, as computed in the transaction that refused it.
    pub impact: Impact,
    /// What was wrong with the confirmation: none came, it expired, or it confirms something else.
    pub why: Unconfirmed,
}

/// Why the gate did not let a change through.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the change retargets more devices than the org's cap: {}", .0.why)]
    Exceeded(Box<CapExceeded>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for GateError {
    fn from(e: sqlx::Error) -> Self {
        GateError::Store(e.into())
    }
}

/// The secret tokens are signed with: read in the change's transaction; drawn and stored (in its own
/// statement, so a dry run's rollback keeps it) if it is missing.
async fn secret(pool: &PgPool, conn: &mut PgConnection) -> Result<Secret, StoreError> {
    let read = "SELECT secret FROM server_secrets WHERE name = $1";
    let stored: Option<Vec<u8>> = sqlx::query_scalar(read)
        .bind(SECRET_NAME)
        .fetch_optional(&mut *conn)
        .await?;
    let stored = match stored {
        Some(bytes) => bytes,
        None => {
            let mut drawn = [0u8; SECRET_BYTES];
            getrandom::fill(&mut drawn).map_err(|e| {
                StoreError::Permanent(sqlx::Error::Protocol(format!(
                    "no random source for the confirmation secret: {e}"
                )))
            })?;
            sqlx::query(
                "INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(SECRET_NAME)
            .bind(drawn.as_slice())
            .execute(pool)
            .await?;
            sqlx::query_scalar(read)
                .bind(SECRET_NAME)
                .fetch_one(pool)
                .await?
        }
    };
    Secret::from_bytes(&stored).ok_or_else(|| {
        StoreError::Permanent(sqlx::Error::Protocol(
            "the confirmation secret is not 32 bytes".into(),
        ))
    })
}

/// The gate of a change of `org_id` described as `change` (canonically: the same change, the same words),
/// whose `impact` was just computed in `conn`'s transaction. Under the org's cap (or without one) it lets
/// the change through. Over it, a dry run ([`Mode::DryRun`]) is answered a token confirming this change
/// with this impact; a write passes only with such a token, unexpired.
pub async fn gate(
    pool: &PgPool,
    conn: &mut PgConnection,
    org_id: &str,
    change: &str,
    impact: &Impact,
    confirmation: &Confirmation,
    mode: Mode,
) -> Result<Option<String>, GateError> {
    let cap: Option<i64> =
        sqlx::query_scalar("SELECT retarget_cap FROM org_settings WHERE org_id = $1")
            .bind(org_id)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let Some(cap) = cap else { return Ok(None) };
    if impact.changed as i64 <= cap {
        return Ok(None);
    }
    let secret = secret(pool, conn).await?;
    let what = Confirmable {
        org_id,
        change,
        changed: impact.changed,
        transitions: &impact.transitions,
    };
    let checked = match (mode, confirmation.token.as_deref()) {
        (Mode::DryRun, _) => {
            let expires = confirmation.now + confirm::TOKEN_LIFETIME_SECONDS;
            return Ok(Some(confirm::mint(&secret, &what, expires)));
        }
        (Mode::Write, None) => Err(Unconfirmed::Missing),
        (Mode::Write, Some(token)) => confirm::check(&secret, &what, token, confirmation.now),
    };
    match checked {
        Ok(()) => Ok(None),
        Err(why) => Err(GateError::Exceeded(Box::new(CapExceeded {
            cap,
            impact: impact.clone(),
            why,
        }))),
    }
}

/// The confirmation secret as stored (tests mint tokens with it, e.g. one already expired).
pub async fn confirmation_secret(pool: &PgPool) -> Result<Secret, StoreError> {
    let mut conn = pool.acquire().await?;
    secret(pool, &mut conn).await
}
