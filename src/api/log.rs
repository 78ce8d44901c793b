//! The membership log of a group, newest first, with the fields Breeze's log lists (`id` and `groupId` as
//! UUIDs, `deviceId`, `hostname`, `displayName`, `action`, `reason`, `createdAt`) and cohort's additions
//! (`cause`, `groupVersion`, cursor paging).
//!
//! Entries are numbered in the database (an identity column, the order they were written in); an entry's
//! `id` is that number written as a UUID (version 8, the number in its last 62 bits), so it has the type the
//! contract names and still says the order. `before` takes either form.

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::auth::Caller;
use super::error::{ErrorBody, Json, Path, Query};
use super::groups::visible;
use super::{next_cursor, page, ApiError, ApiState};
use crate::store::api as queries;

/// `/{id}/membership-log`, under each group family's base path.
pub fn routes() -> Router<ApiState> {
    Router::new().route("/{id}/membership-log", get(membership_log))
}

/// The UUID form of a log entry's number.
pub fn entry_uuid(number: i64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&(number as u64).to_be_bytes());
    // Version 8 (custom) in byte 6's high nibble; RFC variant `10` in byte 8's two high bits, which a
    // number below 2^62 leaves free.
    bytes[6] = 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// The entry number of a log entry's UUID (`None` for a UUID that names no entry).
pub fn entry_number(id: &Uuid) -> Option<i64> {
    let bytes = id.as_bytes();
    if bytes[..6].iter().any(|b| *b != 0) || bytes[6] != 0x80 || bytes[7] != 0 {
        return None;
    }
    if bytes[8] & 0xc0 != 0x80 {
        return None;
    }
    let mut number = [0u8; 8];
    number.copy_from_slice(&bytes[8..]);
    number[0] &= 0x3f;
    Some(i64::from_be_bytes(number))
}

/// `before`: an entry's `id` (UUID) or its number.
fn cursor(raw: &str) -> Result<i64, ApiError> {
    let number = match Uuid::parse_str(raw) {
        Ok(id) => entry_number(&id),
        Err(_) => raw.parse::<i64>().ok(),
    };
    match number {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "before must be an entry id (a page's nextBefore), got {:?}",
            raw.chars().take(64).collect::<String>()
        ))),
    }
}

/// A membership change's direction.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogAction {
    Added,
    Removed,
}

/// Filters of the membership log.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    #[serde(alias = "device_id")]
    pub device_id: Option<String>,
    /// `added` or `removed`.
    #[param(value_type = Option<LogAction>)]
    pub action: Option<String>,
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Entries to skip (after `before`); prefer `before` for deep pages.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// Only entries older than this one: a page's `nextBefore` (an entry's `id`).
    pub before: Option<String>,
}

/// One membership change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEntryView {
    /// The entry's id (its number in the log, as a UUID).
    pub id: Uuid,
    pub group_id: Uuid,
    pub device_id: String,
    /// The device's hostname, as it is now.
    pub hostname: Option<String>,
    pub display_name: Option<String>,
    /// `added` or `removed`.
    pub action: String,
    /// `manual`, `filter_match`, `filter_unmatch`, `pinned` or `unpinned`.
    pub reason: String,
    /// What led to it: an event (`eventId`, `partition`, `offset`), a control-log entry, a timer, or an API
    /// call.
    #[schema(value_type = Object)]
    pub cause: Value,
    /// The group's definition version the change was computed with.
    pub group_version: i64,
    pub created_at: DateTime<Utc>,
}

/// A page of the membership log, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPage {
    pub entries: Vec<LogEntryView>,
    pub limit: i64,
    pub offset: i64,
    /// The `before` of the next page (the last entry's id) when this page is full; absent at the log's
    /// start. Entries written meanwhile never shift a page read so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<Uuid>,
}

/// The membership log of a group, newest first.
#[utoipa::path(get, path = "/api/v1/groups/{id}/membership-log", tag = "groups",
    params(("id" = String, Path), LogParams),
    responses((status = 200, body = LogPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn membership_log(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<LogParams>,
) -> Result<Json<LogPage>, ApiError> {
    let (limit, offset) = page(params.limit, params.offset, 50, 500)?;
    if let Some(action) = &params.action {
        if action != "added" && action != "removed" {
            return Err(ApiError::bad_request(format!(
                "action must be added or removed, got {:?}",
                action.chars().take(32).collect::<String>()
            )));
        }
    }
    let before = params.before.as_deref().map(cursor).transpose()?;
    let group = visible(&state, &caller, &id).await?;
    let filter = queries::LogFilter {
        device_id: params.device_id.as_deref(),
        action: params.action.as_deref(),
        before,
    };
    let rows = queries::membership_log(&state.pool, group.id, filter, limit, offset).await?;
    let next_before = next_cursor(&rows, limit, |last| entry_uuid(last.id));
    Ok(Json(LogPage {
        entries: rows
            .into_iter()
            .map(|r| LogEntryView {
                id: entry_uuid(r.id),
                group_id: group.id,
                device_id: r.device_id,
                hostname: r.hostname,
                display_name: r.display_name,
                action: r.action,
                reason: r.reason,
                cause: r.cause,
                group_version: r.group_version,
                created_at: r.created_at,
            })
            .collect(),
        limit,
        offset,
        next_before,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_number_round_trips_through_its_uuid() {
        for n in [1, 2, 255, 1 << 40, (1 << 62) - 1] {
            let id = entry_uuid(n);
            assert_eq!(id.get_version_num(), 8, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(entry_number(&id), Some(n), "{id}");
        }
        assert_eq!(
            entry_uuid(1234).to_string(),
            "00000000-0000-8000-8000-0000000004d2"
        );
    }

    #[test]
    fn a_uuid_that_is_no_entry_number_names_no_entry() {
        assert_eq!(entry_number(&Uuid::new_v4()), None);
        assert_eq!(entry_number(&Uuid::nil()), None);
    }

    #[test]
    fn the_cursor_takes_either_form() {
        assert_eq!(
            cursor("00000000-0000-8000-8000-0000000004d2").unwrap(),
            1234
        );
        assert_eq!(cursor("1234").unwrap(), 1234);
        assert!(cursor("0").is_err());
        assert!(cursor("grp_abc").is_err());
        assert!(cursor(&Uuid::new_v4().to_string()).is_err());
    }
}
