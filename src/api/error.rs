//! One error shape for every answer that is not a success:
//! `{"error": "bad_request"|"unauthorized"|"not_found"|"conflict"|"retarget_cap_exceeded"|"rate_limited"|
//!   "request_timeout"|"internal_error", "message": "...", "details": [...]}` (`retarget_cap_exceeded` adds
//! `cap` and `impact`).
//!
//! Rejections of axum's extractors (bad JSON, wrong types, unknown fields, bodies over the limit, bad path or
//! query parameters) are mapped here, so a client error is always a 4xx with a clear message. Internal
//! failures are logged with their cause chain and answered with a generic message: no stack trace, no SQL.
//!
//! Every answer is bounded whatever the request: `details` lists at most [`MAX_DETAILS`] problems (then one
//! last detail saying more were found), and every message and path is cut to a bounded length, so a
//! request full of mistakes costs a few dozen KiB to answer (at most about [`MAX_ERROR_BODY_BYTES`]).
//!
//! Every JSON body the API reads goes through [`Json`] or [`parse_json`], which refuse a duplicate object
//! key anywhere in the document (see [`find_duplicate_key`]) before the typed parse.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::api_keys::KeyError;
use crate::store::firmware::{Impact, ReleaseError};
use crate::store::groups::GroupError;
use crate::store::members::MemberError;
use crate::store::StoreError;

mod duplicate_keys;

pub use duplicate_keys::{find_duplicate_key, DuplicateKey};

/// Most problems listed in `details`; when there are more, one last detail says so.
pub const MAX_DETAILS: usize = 100;
/// Longest error message, in bytes (longer ones are cut at a character boundary and end with `…`).
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// Longest detail message, in bytes.
pub const MAX_DETAIL_MESSAGE_BYTES: usize = 512;
/// Longest detail path or device id, in bytes.
pub const MAX_DETAIL_PATH_BYTES: usize = 256;
/// An upper bound on an error body's size, in bytes: the message and every listed detail at their longest,
/// each character escaped as JSON at its widest (`\u0001`, six bytes for one), and the punctuation and key
/// names around them. In practice a body of 100 details is a few dozen KiB.
pub const MAX_ERROR_BODY_BYTES: usize = 6
    * (MAX_MESSAGE_BYTES
        + (MAX_DETAILS + 1) * (MAX_DETAIL_MESSAGE_BYTES + 2 * MAX_DETAIL_PATH_BYTES))
    + 64 * (MAX_DETAILS + 2);

// The filter validator reports enough problems to fill `details` and to show that there are more.
const _: () = assert!(crate::rules::filter::MAX_ERRORS >= MAX_DETAILS);

/// One problem with a request: what is wrong, and where (a JSON path into the body, or the device it is
/// about). Always an object with at least `message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// Where in the request body, e.g. `$.conditions[1].value` or `deviceIds[3]` (absent, never null, when
    /// the problem has no place).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, max_length = 256)]
    pub path: Option<String>,
    /// The device the problem is about (a batch's unknown device, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, max_length = 256)]
    pub device_id: Option<String>,
    /// What is wrong, for a person.
    #[schema(max_length = 512)]
    pub message: String,
}

// The schema's lengths (characters, each at least a byte) are the bounds the constructors apply.
const _: () = assert!(
    MAX_MESSAGE_BYTES == 2048 && MAX_DETAIL_MESSAGE_BYTES == 512 && MAX_DETAIL_PATH_BYTES == 256
);

impl Detail {
    /// A problem with no particular place.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            path: None,
            device_id: None,
            message: bounded(message.into(), MAX_DETAIL_MESSAGE_BYTES),
        }
    }

    /// A problem at a path in the request body.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: Some(bounded_path(path.into())),
            ..Self::new(message)
        }
    }

    /// A problem about one device.
    pub fn device(device_id: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            device_id: Some(bounded(device_id.into(), MAX_DETAIL_PATH_BYTES)),
            ..Self::new(message)
        }
    }

    /// `path: message`, or the message alone.
    pub fn summary(&self) -> String {
        match (&self.path, &self.device_id) {
            (Some(path), _) => format!("{path}: {}", self.message),
            (None, Some(device)) => format!("{device}: {}", self.message),
            (None, None) => self.message.clone(),
        }
    }
}

/// The last detail of a list cut at [`MAX_DETAILS`].
fn more_problems() -> Detail {
    Detail::new(format!(
        "More problems were found; only the first {MAX_DETAILS} are listed"
    ))
}

/// `s` cut to at most `max` bytes at a character boundary, ending with `…` when cut.
pub fn bounded(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A path of at most [`MAX_DETAIL_PATH_BYTES`]: a longer one keeps its end, the part nearest the problem
/// (`$…[0][0].b`).
pub fn bounded_path(path: String) -> String {
    if path.len() <= MAX_DETAIL_PATH_BYTES {
        return path;
    }
    let mut start = path.len() - (MAX_DETAIL_PATH_BYTES - "$…".len());
    while !path.is_char_boundary(start) {
        start += 1;
    }
    format!("$…{}", &path[start..])
}

/// At most the first `max` characters of `s` (an untrusted string quoted in a message), with `…` when cut.
pub fn snippet(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]).into(),
        None => s.into(),
    }
}

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// `bad_request`, `unauthorized`, `not_found`, `conflict`, `retarget_cap_exceeded` (a change over the
    /// org's retarget cap, without a dry run's token confirming it), `rate_limited`, `request_timeout` (the
    /// body did not arrive within `http.request_timeout_ms`) or `internal_error`.
    pub error: &'static str,
    /// What went wrong, for a person.
    #[schema(max_length = 2048)]
    pub message: String,
    /// Each problem found (e.g. every filter validation error with its JSON path), at most 100; when there
    /// are more, a last detail (with only a `message`) says so.
    #[schema(max_items = 101)]
    pub details: Vec<Detail>,
    /// Only with `retarget_cap_exceeded`: the org's retarget cap the change exceeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub cap: Option<i64>,
    /// Only with `retarget_cap_exceeded`: the change's impact, as a dry run answers it (its `sample` at
    /// most 20 devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    pub impact: Option<Impact>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// At most [`MAX_DETAILS`] + 1 (see [`ApiError::with_details`]).
    pub details: Vec<Detail>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
    /// A change over the org's retarget cap: the cap and the change's impact (409).
    pub cap: Option<Box<(i64, Impact)>>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: bounded(message.into(), MAX_MESSAGE_BYTES),
            details: Vec::new(),
            retry_after: None,
            cap: None,
        }
    }

    /// A change that retargets more devices than the org's cap, with the cap and the impact (409).
    pub fn cap_exceeded(message: impl Into<String>, cap: i64, impact: Impact) -> Self {
        Self {
            cap: Some(Box::new((cap, impact))),
            ..Self::new(StatusCode::CONFLICT, "retarget_cap_exceeded", message)
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

    /// Lists the problems: the first [`MAX_DETAILS`], then (when the iterator holds more) one last detail
    /// saying there are more. The iterator is read no further than one past the cap, so a lazy one never
    /// builds the problems that are not listed.
    pub fn with_details(mut self, details: impl IntoIterator<Item = Detail>) -> Self {
        let mut details = details.into_iter();
        self.details = details.by_ref().take(MAX_DETAILS).collect();
        if details.next().is_some() {
            self.details.push(more_problems());
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The fields are public: bound them again here, where every answer passes.
        let mut details = self.details;
        details.truncate(MAX_DETAILS + 1);
        let (cap, impact) = match self.cap {
            Some(refused) => (Some(refused.0), Some(refused.1)),
            None => (None, None),
        };
        let body = ErrorBody {
            error: self.code,
            message: bounded(self.message, MAX_MESSAGE_BYTES),
            details,
            cap,
            impact,
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
                // The first problem in the message itself (path and what is wrong, e.g. the limit it
                // exceeds), so a client that shows only the message still says what to fix. The validator
                // stops once it has found more than `MAX_DETAILS` problems, so past that the count is a
                // lower bound.
                let message = match errors.as_slice() {
                    [] => "Invalid filter".to_string(),
                    [only] => format!("Invalid filter: {}: {}", only.path, only.message),
                    [first, rest @ ..] if errors.len() > MAX_DETAILS => format!(
                        "Invalid filter: {}: {} (and at least {} more problems; details lists the first \
                         {MAX_DETAILS})",
                        first.path,
                        first.message,
                        rest.len().min(MAX_DETAILS),
                    ),
                    [first, rest @ ..] => format!(
                        "Invalid filter: {}: {} (and {} more problem{}, see details)",
                        first.path,
                        first.message,
                        rest.len(),
                        if rest.len() == 1 { "" } else { "s" }
                    ),
                };
                ApiError::bad_request(message)
                    .with_details(errors.into_iter().map(|e| Detail::at(e.path, e.message)))
            }
            GroupError::NameTaken => {
                ApiError::conflict("A group with this name already exists in the org")
            }
            GroupError::NotFound => ApiError::not_found("Group not found"),
            GroupError::Refused(message) => ApiError::conflict(message),
            GroupError::BadRequest(message) => ApiError::bad_request(message),
            GroupError::CapExceeded(refused) => super::retarget_cap::refusal(*refused),
            GroupError::Store(e) => e.into(),
        }
    }
}

impl From<MemberError> for ApiError {
    fn from(e: MemberError) -> Self {
        match e {
            MemberError::GroupNotFound => ApiError::not_found("Group not found"),
            MemberError::DeviceNotFound => ApiError::not_found("Device not found"),
            MemberError::CapExceeded(refused) => super::retarget_cap::refusal(*refused),
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
            ReleaseError::CapExceeded(refused) => super::retarget_cap::refusal(*refused),
            ReleaseError::State(message) => ApiError::conflict(message),
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

/// `axum::Json`, with rejections in the API's error shape, that also refuses a duplicate object key
/// anywhere in the body (400, naming the key and where it is). Like `axum::Json`, it checks the content
/// type (415) before it reads the body.
pub struct Json<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        let RawBody(body) = RawBody::from_request(request, state).await?;
        parse_json(&body).map(Json)
    }
}

/// 400 when the body holds an object with a repeated key. A body that is not JSON passes: the typed parse
/// that follows reports its syntax error in the usual words.
fn refuse_duplicate_keys(body: &[u8]) -> Result<(), ApiError> {
    match find_duplicate_key(body) {
        Some(duplicate) => Err(ApiError::bad_request(duplicate.to_string())
            .with_details([Detail::at(duplicate.path.clone(), duplicate.message())])),
        None => Ok(()),
    }
}

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

/// Parses a JSON body: what the [`Json`] extractor does once it has the body, and what handlers that read
/// the body themselves call (a duplicate object key anywhere is refused; the other messages are axum's).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    refuse_duplicate_keys(body)?;
    let axum::Json(value) = axum::Json::<T>::from_bytes(body)?;
    Ok(value)
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

#[cfg(test)]
mod tests;
