//! The web console in a real headless Chromium, driven through WebDriver: each test starts cohort (API
//! and worker against PostgreSQL and the mock Kafka cluster), its own chromedriver on a free port, and
//! signs in as an operator would. Screenshots of each page go to `target/console-screenshots/` (and to
//! `docs/console/` with `COHORT_UPDATE_SCREENSHOTS=1`).
//!
//! - [`flows`]: building a dynamic group with its live preview, watching it fill, reading why a device
//!   matches; releasing and withdrawing through the confirmation screen.
//! - [`security`]: wrong keys, system keys and other orgs' ids get nothing; the security headers; CSRF.

mod flows;
mod security;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use cohort::store::api_keys;
use cohort_testkit::app::{Harness, LIMIT, ORG};
use cohort_testkit::eventually;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// The chromedriver this suite starts: Debian's, beside its Chromium.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver this test started, leading a process group of its own with the browser it launches.
/// Dropping it ends that process group, and nothing else.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is the driver's own pid (`process_group(0)`). Signalled through kill(2) itself, never
        // a `kill` command (which can read a negative id as an option); and a pid of 0 or 1, whose
        // negative names the caller's group or every process, is never signalled as a group.
        match i32::try_from(self.0.id()) {
            Ok(pid) if pid > 1 => {
                // SAFETY: kill(2) touches no memory of ours; it signals the group this driver leads.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            _ => {
                let _ = self.0.kill();
            }
        }
        let _ = self.0.wait();
    }
}

/// A WebDriver session in a headless Chromium, on a chromedriver of its own.
pub struct Browser {
    pub client: Client,
    _driver: Driver,
}

impl Browser {
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .with_context(|| {
                    format!(
                        "failed to start {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
                    )
                })?,
        );
        eventually(LIMIT, "chromedriver listens", || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        })
        .await?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1000", "--hide-scrollbars"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("failed to open a WebDriver session")?;
        Ok(Browser {
            client,
            _driver: driver,
        })
    }

    /// Ends the session (and so the browser) before the driver.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}

/// cohort with a worker, an org key, and a browser.
pub struct Console {
    pub h: Harness,
    pub addr: SocketAddr,
    pub key: String,
    pub browser: Browser,
}

impl Console {
    pub async fn start() -> anyhow::Result<Self> {
        let h = Harness::start().await?;
        let addr = h.http_address().await?;
        let (_, key) = api_keys::create(h.pool(), Some(ORG), "console").await?;
        let browser = Browser::start().await?;
        Ok(Self {
            h,
            addr,
            key,
            browser,
        })
    }

    pub fn c(&self) -> &Client {
        &self.browser.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn goto(&self, path: &str) -> anyhow::Result<()> {
        self.c().goto(&self.url(path)).await?;
        Ok(())
    }

    /// Signs in with `key` through the sign-in form.
    pub async fn sign_in_with(&self, key: &str) -> anyhow::Result<()> {
        self.goto("/console/sign-in").await?;
        self.c()
            .find(Locator::Id("key"))
            .await?
            .send_keys(key)
            .await?;
        self.c().find(Locator::Id("sign-in")).await?.click().await?;
        Ok(())
    }

    /// Signs in with the org's key and lands on the groups.
    pub async fn sign_in(&self) -> anyhow::Result<()> {
        self.sign_in_with(&self.key.clone()).await?;
        self.wait_text("#org", ORG).await
    }

    /// The text of the element `css`, once the page has one (a click's navigation ends after it returns).
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let c = self.c().clone();
        eventually(LIMIT, &format!("the page has {css}"), || {
            let c = c.clone();
            async move {
                Ok(match c.find(Locator::Css(css)).await {
                    Ok(e) => e.text().await.ok(),
                    Err(_) => None,
                })
            }
        })
        .await
    }

    /// Waits until the element `css` exists and its text is `expected`, reloading nothing.
    pub async fn wait_text(&self, css: &str, expected: &str) -> anyhow::Result<()> {
        let c = self.c().clone();
        let last = std::sync::Mutex::new(None::<String>);
        let what = format!("{css} reads {expected:?}");
        let found = eventually(LIMIT, &what, || {
            let c = c.clone();
            let last = &last;
            async move {
                // An element of the page being left goes stale under the read: read again.
                let text = match c.find(Locator::Css(css)).await {
                    Ok(e) => e.text().await.ok(),
                    Err(_) => None,
                };
                Ok(text.and_then(|text| {
                    let text = text.trim().to_string();
                    let done = text == expected;
                    *last.lock().unwrap() = Some(text);
                    done.then_some(())
                }))
            }
        })
        .await;
        found.with_context(|| format!("last read {:?}", last.lock().unwrap()))
    }

    /// Reloads `path` until the element `css` reads `expected` (the worker applies changes eventually).
    pub async fn reload_until(&self, path: &str, css: &str, expected: &str) -> anyhow::Result<()> {
        let c = self.c().clone();
        let url = self.url(path);
        let what = format!("{css} on {path} reads {expected:?}");
        eventually(LIMIT, &what, || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                c.goto(&url).await?;
                Ok(match c.find(Locator::Css(css)).await {
                    Ok(e) => e
                        .text()
                        .await
                        .ok()
                        .filter(|t| t.trim() == expected)
                        .map(|_| ()),
                    Err(_) => None,
                })
            }
        })
        .await
    }

    /// The session cookie the browser holds.
    pub async fn session_cookie(&self) -> anyhow::Result<String> {
        let cookie = self
            .c()
            .get_named_cookie("cohort_console")
            .await
            .context("the browser holds no session cookie")?;
        Ok(format!("cohort_console={}", cookie.value()))
    }

    /// A screenshot of the page as it is, as `name.png` under `target/console-screenshots/` (and
    /// `docs/console/` with `COHORT_UPDATE_SCREENSHOTS=1`).
    pub async fn shot(&self, name: &str) -> anyhow::Result<()> {
        let png = self.c().screenshot().await?;
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/console-screenshots");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.png")), &png)?;
        if std::env::var("COHORT_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = root.join("docs/console");
            std::fs::create_dir_all(&docs)?;
            std::fs::write(docs.join(format!("{name}.png")), &png)?;
        }
        Ok(())
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        self.browser.close().await?;
        self.h.stop().await
    }
}

/// A plain HTTP answer: status, headers, body text.
pub struct Plain {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One request without a browser: `cookie` as sent, a form body (`application/x-www-form-urlencoded`) or
/// a JSON one, and extra headers.
pub async fn plain(
    addr: SocketAddr,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<(&str, String)>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Plain> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        let mut bytes = Vec::new();
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type);
            bytes = body.into_bytes();
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(bytes)))?)
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Plain {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .context("request timed out")?
}

/// The value of the first `name="csrf"` field in a page.
pub fn csrf_in(page: &str) -> Option<String> {
    let at = page.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let rest = &page[at..];
    Some(rest[..rest.find('"')?].to_string())
}
