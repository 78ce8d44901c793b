//! What the console gives to whom: nothing without a valid org key, nothing of another org, nothing
//! changed without the session's CSRF token; and the headers every answer carries.

use cohort::store::{api_keys, groups};
use hyper::{Method, StatusCode};
use serde_json::json;

use super::{csrf_in, plain, Console};

const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn a_wrong_key_or_a_system_key_opens_no_session() -> anyhow::Result<()> {
    let console = Console::start().await?;
    console
        .sign_in_with("cohort_000000000000_not-a-key")
        .await?;
    console
        .wait_text("#problem", "Invalid or revoked API key")
        .await?;
    console.shot("sign-in-refused").await?;
    assert!(console
        .c()
        .get_named_cookie("cohort_console")
        .await
        .is_err());
    // Every page still sends the browser to the sign-in form.
    console.goto("/console/groups").await?;
    console.wait_text("h1", "Sign in").await?;
    assert_eq!(console.c().current_url().await?.path(), "/console/sign-in");

    let (_, system) = api_keys::create(console.h.pool(), None, "system").await?;
    console.sign_in_with(&system).await?;
    let problem = console.text("#problem").await?;
    assert!(problem.contains("system key"), "{problem}");
    console.goto("/console/releases").await?;
    console.wait_text("h1", "Sign in").await?;

    // A revoked key's session ends with it.
    console.sign_in().await?;
    let (keys, _) = (api_keys::list(console.h.pool()).await?, ());
    let own = keys.iter().find(|k| k.name == "console").unwrap();
    assert!(api_keys::revoke(console.h.pool(), &own.id.to_string()).await?);
    console.goto("/console/groups").await?;
    console.wait_text("h1", "Sign in").await?;
    console.finish().await
}

#[tokio::test]
async fn another_orgs_ids_answer_not_found() -> anyhow::Result<()> {
    let mut console = Console::start().await?;
    groups::create_org(console.h.pool(), "globex", "Globex").await?;
    let theirs = groups::create_group(
        console.h.pool(),
        &console.h.catalogue,
        &groups::NewGroup {
            org_id: "globex".into(),
            name: "theirs".into(),
            filter: None,
            ..Default::default()
        },
    )
    .await?
    .group_id;
    let event = json!({"eventId": "g-1", "orgId": "globex", "deviceId": "globex-dev",
        "sequence": 1, "attributes": {"osType": "linux"}});
    console.h.produce("globex-dev", event.to_string()).await?;
    console.h.applied("globex-dev", 1).await?;
    console
        .h
        .send("own-dev", json!({"osType": "linux"}))
        .await?;

    console.sign_in().await?;
    let cookie = console.session_cookie().await?;
    let cookie = Some(cookie.as_str());
    let addr = console.addr;
    let page = plain(addr, Method::GET, "/console/groups", cookie, None, &[]).await?;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("theirs"),
        "another org's group is listed"
    );
    let csrf = csrf_in(&page.body).expect("the page carries the session's token");
    for path in [
        format!("/console/groups/{theirs}"),
        format!("/console/groups/{theirs}/edit"),
        "/console/devices/globex-dev".to_string(),
    ] {
        let answer = plain(addr, Method::GET, &path, cookie, None, &[]).await?;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            answer.body
        );
        assert!(!answer.body.contains("globex"), "{path}: {}", answer.body);
    }
    let pin = plain(
        addr,
        Method::POST,
        &format!("/console/groups/{theirs}/members"),
        cookie,
        Some((FORM, format!("csrf={csrf}&action=add&device_ids=own-dev"))),
        &[],
    )
    .await?;
    assert_eq!(pin.status, StatusCode::NOT_FOUND, "{}", pin.body);
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM device_group_memberships WHERE group_id = $1")
            .bind(theirs)
            .fetch_one(console.h.pool())
            .await?;
    assert_eq!(members, 0);
    // The same in the browser: a page saying there is no such group.
    console.goto(&format!("/console/groups/{theirs}")).await?;
    console.wait_text("#problem", "Group not found").await?;
    console.shot("not-found").await?;
    console.finish().await
}

#[tokio::test]
async fn every_answer_carries_the_security_headers_and_a_change_needs_the_csrf_token(
) -> anyhow::Result<()> {
    let console = Console::start().await?;
    let addr = console.addr;
    let group = console.h.static_group("picked").await?;
    console
        .h
        .send_with_sequence("dev-a", 1, json!({"osType": "linux"}))
        .await?;
    console.h.applied("dev-a", 1).await?;

    // Signed out: the sign-in page and the assets carry the headers too.
    for path in [
        "/console/sign-in",
        "/console/assets/console.js",
        "/console/nowhere",
    ] {
        let answer = plain(addr, Method::GET, path, None, None, &[]).await?;
        let h = &answer.headers;
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
    }
    // A method a page does not take is refused with the same headers.
    let put = plain(addr, Method::PUT, "/console/groups", None, None, &[]).await?;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(put.headers.contains_key("content-security-policy"));
    let sign_in = plain(addr, Method::GET, "/console/sign-in", None, None, &[]).await?;
    assert!(!sign_in.body.contains("<script>") && !sign_in.body.contains("style="));

    // The session cookie as docs/console.md describes it: browser session only, HttpOnly, Strict.
    let form_cookie = sign_in.headers["set-cookie"]
        .to_str()?
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let token = csrf_in(&sign_in.body).unwrap();
    let body = format!("csrf={token}&key={}", console.key);
    let without_form_cookie = plain(
        addr,
        Method::POST,
        "/console/sign-in",
        None,
        Some((FORM, body.clone())),
        &[],
    )
    .await?;
    assert_eq!(without_form_cookie.status, StatusCode::FORBIDDEN);
    let signed = plain(
        addr,
        Method::POST,
        "/console/sign-in",
        Some(&form_cookie),
        Some((FORM, body)),
        &[],
    )
    .await?;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.body);
    let set = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("cohort_console="))
        .unwrap();
    let mut parts = set.split("; ");
    let cookie = parts.next().unwrap().to_string();
    let attributes: Vec<&str> = parts.collect();
    assert_eq!(attributes, ["HttpOnly", "SameSite=Strict", "Path=/console"]);
    // The session is stored by its token's digest.
    use sha2::Digest as _;
    let token_value = cookie.trim_start_matches("cohort_console=");
    let digest = sha2::Sha256::digest(token_value.as_bytes()).to_vec();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM console_sessions WHERE token_digest = $1")
            .bind(digest)
            .fetch_one(console.h.pool())
            .await?;
    assert_eq!(stored, 1);

    let cookie = Some(cookie.as_str());
    let page = plain(
        addr,
        Method::GET,
        &format!("/console/groups/{group}"),
        cookie,
        None,
        &[],
    )
    .await?;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = csrf_in(&page.body).unwrap();
    let path = format!("/console/groups/{group}/members");
    let add = |csrf: &str| format!("csrf={csrf}&action=add&device_ids=dev-a");
    for refused in [String::new(), add(""), add("wrong")] {
        let answer = plain(
            addr,
            Method::POST,
            &path,
            cookie,
            Some((FORM, refused.clone())),
            &[],
        )
        .await?;
        assert_eq!(
            answer.status,
            StatusCode::FORBIDDEN,
            "{refused}: {}",
            answer.body
        );
    }
    assert!(console.h.members(group).await?.is_empty());
    let preview = plain(
        addr,
        Method::POST,
        "/console/preview",
        cookie,
        Some((
            "application/json",
            json!({"filterConditions": {"operator": "AND", "conditions": [
            {"field": "osType", "operator": "equals", "value": "linux"}]}})
            .to_string(),
        )),
        &[],
    )
    .await?;
    assert_eq!(preview.status, StatusCode::FORBIDDEN, "{}", preview.body);
    // With the token, the same request is made.
    let done = plain(
        addr,
        Method::POST,
        &path,
        cookie,
        Some((FORM, add(&csrf))),
        &[],
    )
    .await?;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(
        console.h.members(group).await?,
        [("dev-a".to_string(), false)]
    );

    // Signing out needs the token too, and ends the session for good.
    let out = plain(
        addr,
        Method::POST,
        "/console/sign-out",
        cookie,
        Some((FORM, "csrf=".into())),
        &[],
    )
    .await?;
    assert_eq!(out.status, StatusCode::FORBIDDEN);
    let out = plain(
        addr,
        Method::POST,
        "/console/sign-out",
        cookie,
        Some((FORM, format!("csrf={csrf}"))),
        &[],
    )
    .await?;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let after = plain(addr, Method::GET, "/console/groups", cookie, None, &[]).await?;
    assert_eq!(after.status, StatusCode::SEE_OTHER);
    assert_eq!(after.headers["location"], "/console/sign-in");
    console.finish().await
}
