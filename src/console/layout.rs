//! The page shell, error pages and the small rendering helpers the console's pages share.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::session::Signed;
use crate::api::ApiError;
use crate::store::StoreError;

/// A page in the console's shell: its stylesheet and script, the navigation and, when signed in, the
/// sign-out form.
pub fn page(title: &str, signed: &Signed, body: Markup) -> Response {
    page_with_status(StatusCode::OK, title, Some(signed), body)
}

/// [`page`] with a status, signed in or not.
pub fn page_with_status(
    status: StatusCode,
    title: &str,
    signed: Option<&Signed>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · cohort" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/console/groups" { "cohort" }
                    @if let Some(signed) = signed {
                        nav {
                            a href="/console/groups" { "Groups" }
                            a href="/console/releases" { "Releases" }
                            form.inline method="get" action="/console/devices" {
                                input #find-device type="search" name="id" placeholder="Device id" required;
                                button type="submit" { "Open device" }
                            }
                        }
                        span.org { "Organisation " strong #org { (signed.org_id) } }
                        form.inline method="post" action="/console/sign-out" {
                            input type="hidden" name="csrf" value=(signed.csrf);
                            button #sign-out type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    (status, markup).into_response()
}

/// An error page, outside any session's shell.
pub fn error_page(status: StatusCode, message: &str, details: Option<&[String]>) -> Response {
    let body = html! {
        section.narrow {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.error #problem { (message) }
            @if let Some(details) = details {
                ul.details { @for d in details { li { (d) } } }
            }
            p { a href="/console/groups" { "Back to the groups" } }
        }
    };
    page_with_status(status, "Error", None, body)
}

/// A request the console refuses, rendered as an error page with its status.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
    details: Vec<String>,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The problems listed under the message.
    pub fn details(&self) -> &[String] {
        &self.details
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Self {
            status: e.status,
            details: e.details.iter().map(|d| d.summary()).collect(),
            message: e.message,
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error_page(self.status, &self.message, Some(&self.details))
    }
}

/// A form body that could not be read (400).
pub fn bad_form(e: axum::extract::rejection::FormRejection) -> Failure {
    Failure::new(
        StatusCode::BAD_REQUEST,
        format!("The form could not be read: {}", e.body_text()),
    )
}

/// A path segment with every byte outside the unreserved set percent-encoded (device ids are any text).
pub fn seg(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An instant as people read it (UTC, to the second).
pub fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A JSON value as compact text: strings bare, the rest as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_string(),
        other => other.to_string(),
    }
}

/// A filter as a readable tree: each group says whether all or any of its conditions must hold.
pub fn filter_tree(filter: &Value) -> Markup {
    let conditions = filter["conditions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if filter.get("conditions").is_some() {
        let all = filter["operator"].as_str() != Some("OR");
        html! {
            div.tree-group {
                span.op { @if all { "All of (AND)" } @else { "Any of (OR)" } }
                ul { @for c in conditions { li { (filter_tree(c)) } } }
            }
        }
    } else {
        html! {
            span.cond {
                code { (text(&filter["field"])) } " "
                em { (text(&filter["operator"])) }
                @if filter.get("value").is_some_and(|v| !v.is_null()) { " " code { (text(&filter["value"])) } }
            }
        }
    }
}

/// An explanation node as a tree: each condition with its result and the reason.
pub fn explanation_tree(node: &Value) -> Markup {
    let ok = node["result"].as_bool().unwrap_or(false);
    let mark = if ok { "✓" } else { "✗" };
    let class = if ok { "yes" } else { "no" };
    if node["kind"] == "group" {
        let all = node["operator"].as_str() != Some("OR");
        html! {
            div.tree-group {
                span class=(class) { (mark) } " "
                span.op { @if all { "All of (AND)" } @else { "Any of (OR)" } }
                ul { @for c in node["conditions"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    li { (explanation_tree(c)) }
                } }
            }
        }
    } else {
        html! {
            span.cond {
                span class=(class) { (mark) } " "
                code { (text(&node["field"])) } " " em { (text(&node["operator"])) } " "
                @if !node["value"].is_null() { code { (text(&node["value"])) } " " }
                span.reason { "— " (text(&node["reason"])) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_keeps_only_unreserved_bytes() {
        assert_eq!(seg("dev-01.a_b~"), "dev-01.a_b~");
        assert_eq!(seg("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[test]
    fn markup_is_escaped() {
        let tree = filter_tree(&serde_json::json!(
            {"field": "<script>", "operator": "equals", "value": "\"&"}
        ))
        .into_string();
        assert!(tree.contains("&lt;script&gt;"), "{tree}");
        assert!(!tree.contains("<script>"), "{tree}");
    }
}
