//! Signing in and out, the session cookie, the CSRF token, and the headers every console answer carries.
//!
//! Signing in takes an org's API key (system keys are refused: a console session is one org's view, and
//! a system key acts on every org). The server checks the key as the API does, opens a session in
//! PostgreSQL (only the digest of its token is stored) and gives the browser the token in a cookie that
//! lives as long as the browser session: no `Max-Age` or `Expires`, `HttpOnly`, `SameSite=Strict`,
//! `Path=/console`. The key itself is never stored, put in a page or a URL, or logged. Every request
//! after that finds its session by the cookie, restarts its idle time, and is refused once the session
//! has been idle for [`IDLE_SECS`] or its key was revoked. Each session has a CSRF token: every
//! state-changing request must carry it (a form's `csrf` field, or the `X-CSRF-Token` header), and it is
//! compared in constant time. The sign-in form itself carries a token bound to a short-lived cookie of
//! its own, so no other site can sign a browser in.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::layout::{self, Failure};
use crate::api::auth::Caller;
use crate::api::ApiState;
use crate::store::{api_keys, console_sessions};

/// The session cookie.
pub const COOKIE: &str = "cohort_console";
/// The cookie binding a sign-in form to the browser that loaded it.
const SIGN_IN_COOKIE: &str = "cohort_console_sign_in";
/// A session idle this long (seconds) is closed.
pub const IDLE_SECS: i64 = 30 * 60;
/// The header a script's request carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The Content-Security-Policy of every console answer: the console's own script and stylesheet only,
/// nothing inline, no frames, forms posting back to the console only.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every console answer.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The value of cookie `name` in the request, if it sent one.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Whether `presented` is `expected`, in time independent of where they differ.
fn same(presented: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// A signed-in request: the caller as the API knows it (the session's key, scoped to its org), and the
/// session's CSRF token.
#[derive(Clone, Debug)]
pub struct Signed {
    pub caller: Caller,
    pub org_id: String,
    pub csrf: String,
}

impl Signed {
    /// Refuses a state-changing request whose CSRF token is not the session's (403).
    pub fn check(&self, presented: &str) -> Result<(), Failure> {
        if same(presented, &self.csrf) {
            Ok(())
        } else {
            Err(Failure::new(
                StatusCode::FORBIDDEN,
                "The form's security token is missing or wrong: reload the page and try again",
            ))
        }
    }

    /// Refuses a script's request whose `X-CSRF-Token` header is not the session's token (403).
    pub fn check_header(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.check(presented)
    }
}

impl FromRequestParts<ApiState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let refuse = |parts: &Parts| {
            if parts.method == axum::http::Method::GET {
                Redirect::to("/console/sign-in").into_response()
            } else {
                Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "Not signed in, or the session has ended: sign in again",
                )
                .into_response()
            }
        };
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(refuse(parts));
        };
        let session = match console_sessions::touch(&state.pool, token, IDLE_SECS).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(refuse(parts)),
            Err(e) => return Err(Failure::from(e).into_response()),
        };
        if let Err(retry_after) = state.limiter.check(session.key_id) {
            metrics::counter!(crate::metrics::API_RATE_LIMITED).increment(1);
            let mut response = Failure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests with this key: wait a moment and try again",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return Err(response);
        }
        Ok(Signed {
            caller: Caller {
                key_id: session.key_id,
                org_id: Some(session.org_id.clone()),
            },
            org_id: session.org_id,
            csrf: session.csrf_token,
        })
    }
}

/// `Set-Cookie` for `name`: a browser-session cookie (no `Max-Age` or `Expires`), or, with `value` empty,
/// one that deletes it.
fn set_cookie(name: &str, value: &str) -> HeaderValue {
    let lifetime = if value.is_empty() { "; Max-Age=0" } else { "" };
    let cookie = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/console{lifetime}");
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The sign-in form, with a fresh token bound to a cookie of its own.
pub async fn sign_in_page() -> Response {
    sign_in_form(StatusCode::OK, None)
}

fn sign_in_form(status: StatusCode, problem: Option<&str>) -> Response {
    let token = console_sessions::random_token();
    let body = html! {
        section.narrow {
            h1 { "Sign in" }
            p { "Sign in with your organisation's API key. The key is checked, then forgotten: the \
                 browser keeps only a session cookie until you sign out or close it." }
            @if let Some(problem) = problem { p.error #problem { (problem) } }
            form method="post" action="/console/sign-in" {
                input type="hidden" name="csrf" value=(token);
                label for="key" { "API key" }
                input #key type="password" name="key" autocomplete="off" required;
                button #sign-in type="submit" { "Sign in" }
            }
        }
    };
    let mut response = layout::page_with_status(status, "Sign in", None, body);
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, &token));
    response
}

/// The sign-in form's fields.
#[derive(Deserialize)]
pub struct SignInForm {
    key: String,
    #[serde(default)]
    csrf: String,
}

/// Checks the key and opens a session.
pub async fn sign_in(
    State(state): State<ApiState>,
    headers: HeaderMap,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Failure> {
    let axum::Form(form) = form.map_err(layout::bad_form)?;
    let bound = cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if !same(&form.csrf, bound) {
        return Ok(sign_in_form(
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or was not this console's: try again"),
        ));
    }
    let scope = match api_keys::authenticate(&state.pool, form.key.trim()).await? {
        Some(scope) => scope,
        None => {
            metrics::counter!(crate::metrics::API_UNAUTHORIZED).increment(1);
            return Ok(sign_in_form(
                StatusCode::UNAUTHORIZED,
                Some("Invalid or revoked API key"),
            ));
        }
    };
    let Some(org_id) = scope.org_id else {
        return Ok(sign_in_form(
            StatusCode::FORBIDDEN,
            Some(
                "The console takes an organisation's key: a system key acts on every organisation; \
                 use it through the API",
            ),
        ));
    };
    let opened = console_sessions::open(&state.pool, scope.key_id, &org_id, IDLE_SECS).await?;
    let mut response = Redirect::to("/console/groups").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(COOKIE, &opened.token));
    headers.append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, ""));
    Ok(response)
}

/// A form that carries only the CSRF token.
#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    pub csrf: String,
}

/// Closes the session and deletes the cookie.
pub async fn sign_out(
    State(state): State<ApiState>,
    signed: Signed,
    headers: HeaderMap,
    form: Result<axum::Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, Failure> {
    let axum::Form(form) = form.map_err(layout::bad_form)?;
    signed.check(&form.csrf)?;
    if let Some(token) = cookie(&headers, COOKIE) {
        console_sessions::close(&state.pool, token).await?;
    }
    let mut response = Redirect::to("/console/sign-in").into_response();
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, ""));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("cohort_console_sign_in=a; cohort_console=b"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("b"));
        assert_eq!(cookie(&headers, SIGN_IN_COOKIE), Some("a"));
        assert_eq!(cookie(&headers, "other"), None);
    }

    #[test]
    fn an_empty_token_never_matches() {
        assert!(!same("", ""));
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
    }

    #[test]
    fn the_session_cookie_lives_for_the_browser_session_only() {
        let value = set_cookie(COOKIE, "t");
        let value = value.to_str().unwrap();
        assert_eq!(
            value,
            "cohort_console=t; HttpOnly; SameSite=Strict; Path=/console"
        );
        assert!(!value.contains("Max-Age") && !value.contains("Expires"));
    }
}
