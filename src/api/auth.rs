//! Authentication (API keys as `Authorization: Bearer <key>`), org scoping and the per-key rate limit.
//!
//! An org key sees only its org: every other org's resources answer 404, exactly as if they did not exist
//! (a 403 would confirm they do). A system key may act on any org and names it (`orgId`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{ApiError, ApiState};
use crate::store::api_keys;

/// Who is calling, as established by [`authenticate`].
#[derive(Clone, Debug)]
pub struct Caller {
    pub key_id: Uuid,
    /// `None` for a system key.
    pub org_id: Option<String>,
}

impl Caller {
    /// Whether resources of `org` exist for this caller.
    pub fn sees(&self, org: &str) -> bool {
        self.org_id.as_deref().is_none_or(|own| own == org)
    }

    /// The org a write acts on: the key's own (a different `requested` org does not exist for it), or, for
    /// a system key, the one it names.
    pub fn org_for(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (&self.org_id, requested) {
            (Some(own), None) => Ok(own.clone()),
            (Some(own), Some(org)) if org == own => Ok(own.clone()),
            (Some(_), Some(_)) => Err(ApiError::not_found("Org not found")),
            (None, Some(org)) => Ok(org.to_string()),
            (None, None) => Err(ApiError::bad_request("orgId is required with a system key")),
        }
    }

    /// The org a listing is restricted to: the key's own, or for a system key the one requested (`None`:
    /// every org).
    pub fn org_filter(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match (&self.org_id, requested) {
            (None, requested) => Ok(requested.map(str::to_string)),
            (Some(_), _) => self.org_for(requested).map(Some),
        }
    }

    /// How changes made with this key are attributed in the membership log and releases.
    pub fn actor(&self) -> String {
        format!("api-key:{}", self.key_id)
    }
}

/// The header ThingSpace's clients send their session token in.
const THINGSPACE_TOKEN: &str = "vz-m2m-token";

/// The key a request presents: `Authorization: Bearer <key>`, or ThingSpace's `VZ-M2M-Token: <key>`.
/// A ThingSpace client sends both (an OAuth token as the bearer, a session token beside it), so a cohort
/// key (`cohort_…`) in either wins; otherwise the bearer is the key presented.
fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let token = headers
        .get(THINGSPACE_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let is_key = |k: &&str| k.starts_with("cohort_");
    bearer
        .filter(is_key)
        .or(token.filter(is_key))
        .or(bearer)
        .or(token)
}

/// Checks the bearer key, applies the rate limit, and hands the [`Caller`] to the handlers.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(presented) = presented_key(request.headers()) else {
        metrics::counter!(crate::metrics::API_UNAUTHORIZED).increment(1);
        return ApiError::unauthorized("Missing API key: send Authorization: Bearer <key>")
            .into_response();
    };
    let scope = match api_keys::authenticate(&state.pool, presented).await {
        Ok(Some(scope)) => scope,
        Ok(None) => {
            metrics::counter!(crate::metrics::API_UNAUTHORIZED).increment(1);
            return ApiError::unauthorized("Invalid or revoked API key").into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    if let Err(retry_after) = state.limiter.check(scope.key_id) {
        metrics::counter!(crate::metrics::API_RATE_LIMITED).increment(1);
        return ApiError::rate_limited(retry_after).into_response();
    }
    request.extensions_mut().insert(Caller {
        key_id: scope.key_id,
        org_id: scope.org_id,
    });
    next.run(request).await
}

/// A token bucket per API key, in this process (with several API processes, each enforces the limit on its
/// own share of the traffic).
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Uuid, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`, or says in how many whole seconds one will be available.
    pub fn check(&self, key: Uuid) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: Uuid, now: Instant) -> Result<(), u64> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, last) = buckets.entry(key).or_insert((self.burst, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_gets_its_burst_then_waits_for_the_refill() {
        let limiter = RateLimiter::new(2, 3);
        let key = Uuid::new_v4();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(key, t0), Ok(()));
        }
        assert_eq!(limiter.check_at(key, t0), Err(1));
        // Half a second refills one token at 2/s.
        assert_eq!(
            limiter.check_at(key, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(limiter
            .check_at(key, t0 + Duration::from_millis(500))
            .is_err());
    }

    #[test]
    fn keys_are_limited_independently() {
        let limiter = RateLimiter::new(1, 1);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(a, t0), Ok(()));
        assert!(limiter.check_at(a, t0).is_err());
        assert_eq!(limiter.check_at(b, t0), Ok(()));
    }

    #[test]
    fn an_org_key_sees_only_its_org() {
        let caller = Caller {
            key_id: Uuid::nil(),
            org_id: Some("a".into()),
        };
        assert!(caller.sees("a"));
        assert!(!caller.sees("b"));
        assert_eq!(caller.org_for(None).unwrap(), "a");
        assert_eq!(caller.org_for(Some("b")).unwrap_err().status, 404);
        let system = Caller {
            key_id: Uuid::nil(),
            org_id: None,
        };
        assert!(system.sees("b"));
        assert_eq!(system.org_for(None).unwrap_err().status, 400);
        assert_eq!(system.org_filter(None).unwrap(), None);
    }
}
