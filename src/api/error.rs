//! One error shape for every answer that is not a success:
//! `{"error": "bad_request"|"unauthorized"|"not_found"|"conflict"|"rate_limited"|"request_timeout"|"internal_error",
//!   "message": "...", "details": [...]}`.
//!
//! Rejections of axum's extractors (bad JSON, wrong types, unknown fields, bodies over the limit, bad path or
//! query parameters) are mapped here, so a client error is always a 4xx with a clear message. Internal
//! failures are logged with their cause chain and answered with a generic message: no stack trace, no SQL.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::store::api_keys::KeyError;
use crate::store::firmware::ReleaseError;
use crate::store::groups::GroupError;
use crate::store::members::MemberError;
use crate::store::StoreError;

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `not_found`, `conflict`, `rate_limited`, `request_timeout` (the body
    /// did not arrive within `http.request_timeout_ms`) or `internal_error`.
    pub error: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Each problem found (e.g. every filter validation error with its JSON path).
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<Value>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Value>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("Rate limit exceeded; retry after {retry_after} s"),
            )
        }
    }

    /// A failure that is not the client's: logged here with its cause chain, answered generically.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut chain = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            chain.push_str(": ");
            chain.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::error!(error = %chain, "api request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error; it has been logged",
        )
    }

    /// The request's body did not arrive in time (408); the server closes the connection.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", message)
    }

    /// The database is unreachable or overloaded, or the answer was not ready in time: worth retrying (503).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "internal_error", message)
    }

    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = details;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: self.message,
            details: self.details,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Transient(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("The database is unavailable; retry later")
            }
            StoreError::UniqueViolation { .. } => ApiError::conflict("The resource already exists"),
            // SQLSTATE class 22 (data exception): PostgreSQL refused a value the request carried, such as a
            // string holding U+0000 (which neither text nor jsonb can store). The client's to fix, and the
            // statement (and its transaction) did nothing.
            StoreError::Permanent(sqlx::Error::Database(db))
                if db.code().is_some_and(|c| c.starts_with("22")) =>
            {
                // 22021: a text value with a NUL byte; 22P05: a jsonb value with \u0000.
                let hint = match db.code().as_deref() {
                    Some("22021" | "22P05") => " (strings must not contain U+0000)",
                    _ => "",
                };
                ApiError::bad_request(format!(
                    "The request holds a value that cannot be stored{hint}: {}",
                    db.message()
                ))
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Invalid(errors) => {
                let details = errors
                    .iter()
                    .map(|e| json!({"path": e.path, "message": e.message}))
                    .collect();
                // The first problem in the message itself (path and what is wrong, e.g. the limit it
                // exceeds), so a client that shows only the message still says what to fix.
                let message = match errors.as_slice() {
                    [] => "Invalid filter".to_string(),
                    [only] => format!("Invalid filter: {}: {}", only.path, only.message),
                    [first, rest @ ..] => format!(
                        "Invalid filter: {}: {} (and {} more problem{}, see details)",
                        first.path,
                        first.message,
                        rest.len(),
                        if rest.len() == 1 { "" } else { "s" }
                    ),
                };
                ApiError::bad_request(message).with_details(details)
            }
            GroupError::NameTaken => {
                ApiError::conflict("A group with this name already exists in the org")
            }
            GroupError::NotFound => ApiError::not_found("Group not found"),
            GroupError::Refused(message) => ApiError::conflict(message),
            GroupError::BadRequest(message) => ApiError::bad_request(message),
            GroupError::Store(e) => e.into(),
        }
    }
}

impl From<MemberError> for ApiError {
    fn from(e: MemberError) -> Self {
        match e {
            MemberError::GroupNotFound => ApiError::not_found("Group not found"),
            MemberError::DeviceNotFound => ApiError::not_found("Device not found"),
            MemberError::Store(e) => e.into(),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::GroupNotFound => ApiError::not_found("Group not found"),
            ReleaseError::NotFound => ApiError::not_found("Release not found"),
            ReleaseError::Store(e) => e.into(),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnknownOrg(_) => ApiError::bad_request(e.to_string()),
            KeyError::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = rejection.body_text();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "bad_request", "Request body too large");
        }
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return ApiError::new(
                status,
                "bad_request",
                "Expected a JSON body with Content-Type: application/json",
            );
        }
        ApiError::bad_request(message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(status, "bad_request", "Request body too large");
        }
        ApiError::new(status, "bad_request", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

/// `axum::Json`, with rejections in the API's error shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The raw body (for handlers that read it themselves), with rejections — a body over the limit, one that
/// did not arrive — in the API's error shape.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(ApiError::from)
    }
}

/// `axum::extract::Query`, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with rejections in the API's error shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

use axum::extract::FromRequestParts;

/// Refuses a body whose `Content-Type` is not JSON (415), as the [`Json`] extractor does, for handlers
/// that read the body themselves.
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|mime| {
            mime.eq_ignore_ascii_case("application/json")
                || mime
                    .rsplit_once('+')
                    .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
        });
    if json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "Expected a JSON body with Content-Type: application/json",
        ))
    }
}

/// Parses a JSON body read by the handler itself, with the [`Json`] extractor's messages.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let kind = if e.is_data() {
            "Failed to deserialize the JSON body into the target type"
        } else {
            "Failed to parse the request body as JSON"
        };
        ApiError::bad_request(format!("{kind}: {e}"))
    })
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("No such route")
}

/// A known route with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        "Method not allowed on this route",
    )
}
