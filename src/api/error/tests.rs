//! The error shape's bounds: details are objects, at most [`MAX_DETAILS`] and a last one saying there are
//! more; messages and paths are cut; a duplicate key refuses a body.

use axum::body::to_bytes;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use super::*;
use crate::rules::ValidationError;

async fn body_of(error: ApiError) -> (StatusCode, Value, usize) {
    let response = error.into_response();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap(), bytes.len())
}

#[tokio::test]
async fn details_are_capped_with_a_last_one_saying_there_are_more() {
    let built = std::cell::Cell::new(0);
    let many = (0..1_000_000).map(|i| {
        built.set(built.get() + 1);
        Detail::at(format!("deviceIds[{i}]"), "bad")
    });
    let error = ApiError::bad_request("Invalid").with_details(many);
    // Read one past the cap, no further.
    assert_eq!(built.get(), MAX_DETAILS + 1);
    let (_, body, _) = body_of(error).await;
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), MAX_DETAILS + 1);
    assert_eq!(
        details[0],
        json!({"path": "deviceIds[0]", "message": "bad"})
    );
    assert_eq!(details[MAX_DETAILS - 1]["path"], "deviceIds[99]");
    assert_eq!(
        details[MAX_DETAILS],
        json!({"message": "More problems were found; only the first 100 are listed"})
    );

    for n in [0, 1, MAX_DETAILS] {
        let error = ApiError::bad_request("x").with_details((0..n).map(|_| Detail::new("m")));
        assert_eq!(error.details.len(), n);
    }
}

#[tokio::test]
async fn every_string_in_an_error_body_is_bounded() {
    let huge = "x".repeat(1 << 20);
    let error =
        ApiError::bad_request(huge.clone()).with_details((0..10_000).map(|i| match i % 3 {
            0 => Detail::at(huge.clone(), huge.clone()),
            1 => Detail::device(huge.clone(), huge.clone()),
            _ => Detail::new(format!("{huge}\u{1}")),
        }));
    assert!(error.message.len() <= MAX_MESSAGE_BYTES);
    let (_, body, size) = body_of(error).await;
    assert!(size <= MAX_ERROR_BODY_BYTES, "{size} bytes");
    assert!(body["message"].as_str().unwrap().ends_with('…'));
    for detail in body["details"].as_array().unwrap() {
        let object = detail.as_object().unwrap();
        assert!(object["message"].as_str().unwrap().len() <= MAX_DETAIL_MESSAGE_BYTES);
        for key in ["path", "deviceId"] {
            if let Some(v) = object.get(key) {
                assert!(v.as_str().unwrap().len() <= MAX_DETAIL_PATH_BYTES, "{key}");
            }
        }
    }
    // Control characters are the widest to escape; the documented bound holds for them too.
    let control = "\u{1}".repeat(1 << 16);
    let error = ApiError::bad_request(control.clone()).with_details((0..1000).map(|_| Detail {
        path: Some(bounded_path(control.clone())),
        device_id: Some(bounded(control.clone(), MAX_DETAIL_PATH_BYTES)),
        message: bounded(control.clone(), MAX_DETAIL_MESSAGE_BYTES),
    }));
    let (_, _, size) = body_of(error).await;
    assert!(size <= MAX_ERROR_BODY_BYTES, "{size} bytes");
}

#[test]
fn cut_strings_end_at_a_character_boundary() {
    let s = "é".repeat(100);
    let cut = bounded(s.clone(), 51);
    assert!(cut.len() <= 51 && cut.ends_with('…'), "{cut}");
    assert_eq!(bounded("short".into(), 51), "short");
    let path = bounded_path(format!("$.{}", "é".repeat(1000)));
    assert!(
        path.len() <= MAX_DETAIL_PATH_BYTES && path.starts_with("$…"),
        "{path}"
    );
    assert_eq!(snippet("abcdef", 3), "abc…");
    assert_eq!(snippet("abc", 3), "abc");
}

#[tokio::test]
async fn an_invalid_filter_lists_its_problems_as_objects() {
    let errors: Vec<ValidationError> = (0..=crate::rules::filter::MAX_ERRORS)
        .map(|i| ValidationError {
            path: format!("$.conditions[{i}].field"),
            message: "Unknown field: x".into(),
        })
        .collect();
    let (status, body, _) = body_of(GroupError::Invalid(errors).into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "Invalid filter: $.conditions[0].field: Unknown field: x (and at least 100 more"
        ),
        "{message}"
    );
    let details = body["details"].as_array().unwrap();
    assert_eq!(details.len(), MAX_DETAILS + 1);
    assert!(details.iter().all(|d| d["message"].is_string()));

    let two = vec![
        ValidationError {
            path: "$.a".into(),
            message: "m".into(),
        },
        ValidationError {
            path: "$.b".into(),
            message: "n".into(),
        },
    ];
    let (_, body, _) = body_of(GroupError::Invalid(two).into()).await;
    assert_eq!(
        body["message"],
        "Invalid filter: $.a: m (and 1 more problem, see details)"
    );
    assert_eq!(
        body["details"],
        json!([{"path": "$.a", "message": "m"}, {"path": "$.b", "message": "n"}])
    );
}

#[tokio::test]
async fn parse_json_refuses_a_duplicate_key_and_says_where() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        filter: Value,
    }
    let refused =
        parse_json::<Body>(br#"{"filter": {"operator": "AND", "operator": "OR"}}"#).unwrap_err();
    let (status, body, _) = body_of(refused).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["message"],
        "Duplicate key \"operator\" at $.filter.operator: each key may appear once per object"
    );
    assert_eq!(
        body["details"],
        json!([{"path": "$.filter.operator", "message": "Duplicate key \"operator\": each key may appear once per object"}])
    );
    // Without a duplicate, the typed parse decides, with its usual words.
    assert!(parse_json::<Body>(br#"{"filter": {"a": 1}}"#).is_ok());
    let syntax = parse_json::<Body>(br#"{"filter": "#).unwrap_err();
    assert!(
        syntax
            .message
            .starts_with("Failed to parse the request body as JSON"),
        "{}",
        syntax.message
    );
}

#[tokio::test]
async fn the_json_extractor_refuses_a_duplicate_key() {
    use axum::extract::FromRequest;
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        #[serde(rename = "deviceIds")]
        device_ids: Vec<String>,
    }
    let request = |body: &'static str| {
        axum::http::Request::builder()
            .method("POST")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let refused =
        Json::<Batch>::from_request(request(r#"{"deviceIds": ["a"], "deviceIds": ["b"]}"#), &())
            .await
            .err()
            .unwrap();
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused
            .message
            .contains("Duplicate key \"deviceIds\" at $.deviceIds"),
        "{}",
        refused.message
    );
    let Json(batch) = Json::<Batch>::from_request(request(r#"{"deviceIds": ["a"]}"#), &())
        .await
        .unwrap();
    assert_eq!(batch.device_ids, ["a"]);
    // The extractor's other answers are as before: wrong types name the path, and the content type is
    // checked.
    let wrong = Json::<Batch>::from_request(request(r#"{"deviceIds": 1}"#), &())
        .await
        .err()
        .unwrap();
    assert!(
        wrong
            .message
            .starts_with("Failed to deserialize the JSON body into the target type"),
        "{}",
        wrong.message
    );
    let untyped = axum::http::Request::builder()
        .method("POST")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let refused = Json::<Batch>::from_request(untyped, &())
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}
