//! `[database]`: how to reach PostgreSQL, and the redaction of its URL.

use std::fmt;

use serde::Deserialize;

use super::REDACTED;

/// `[database]`: how to reach PostgreSQL.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Connection URL (`postgres://user:password@host:port/db?…`); it may hold the password, so it is
    /// only ever shown redacted.
    pub url: String,
    /// Pool size. At least 2: a worker holds one connection for LISTEN on the control log while
    /// batches commit on others.
    pub max_connections: u32,
    /// How long to wait for a connection (at start-up and from the pool) before reporting the
    /// database as unavailable, which is a transient failure the caller retries.
    pub connect_timeout_ms: u64,
    /// The WAL compression cohort asks for on its own sessions (`wal_compression`, a superuser
    /// setting: granted with `GRANT SET ON PARAMETER wal_compression TO …` on PostgreSQL 15+). A
    /// worker's random device and membership writes are mostly full-page images, which lz4 shrinks
    /// about threefold. Where the role may not set it, cohort logs a warning once and uses the server's.
    pub wal_compression: WalCompression,
}

/// `database.wal_compression`: what cohort's sessions set `wal_compression` to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WalCompression {
    /// Leave the server's setting alone.
    Server,
    /// No compression.
    Off,
    /// PostgreSQL's built-in compressor (slow; every build has it).
    Pglz,
    /// lz4 (cheap; PostgreSQL 15+ built with lz4, as the Debian and official images are).
    Lz4,
    /// zstd (smaller, more CPU; PostgreSQL 15+ built with zstd).
    Zstd,
}

impl WalCompression {
    /// The value given to `wal_compression`, or `None` for [`WalCompression::Server`].
    pub fn setting(self) -> Option<&'static str> {
        match self {
            WalCompression::Server => None,
            WalCompression::Off => Some("off"),
            WalCompression::Pglz => Some("pglz"),
            WalCompression::Lz4 => Some("lz4"),
            WalCompression::Zstd => Some("zstd"),
        }
    }

    /// The configured name (`server`, `off`, `pglz`, `lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        self.setting().unwrap_or("server")
    }
}

impl std::str::FromStr for WalCompression {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(WalCompression::Server),
            "off" => Ok(WalCompression::Off),
            "pglz" => Ok(WalCompression::Pglz),
            "lz4" => Ok(WalCompression::Lz4),
            "zstd" => Ok(WalCompression::Zstd),
            _ => Err(()),
        }
    }
}

impl fmt::Display for WalCompression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/cohort".to_owned(),
            max_connections: 8,
            connect_timeout_ms: 5000,
            wal_compression: WalCompression::Lz4,
        }
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out of the output unnoticed.
        let DatabaseConfig {
            url,
            max_connections,
            connect_timeout_ms,
            wal_compression,
        } = self;
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_database_url(url))
            .field("max_connections", max_connections)
            .field("connect_timeout_ms", connect_timeout_ms)
            .field("wal_compression", wal_compression)
            .finish()
    }
}

/// The database URL with its password (in the user info, or a `password`-like query parameter)
/// replaced by `***`, for logs and messages.
pub fn redact_database_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL; it could be a bare key=value connection string, so show nothing of it.
        return if url.is_empty() {
            String::new()
        } else {
            REDACTED.to_owned()
        };
    };
    let rest_start = scheme_end + 3;
    let authority_end = url[rest_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| rest_start + i);
    let authority = &url[rest_start..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &url[authority_end..];
    match tail.find('?') {
        Some(q) => {
            out.push_str(&tail[..=q]);
            let (query, fragment) = match tail[q + 1..].find('#') {
                Some(h) => (&tail[q + 1..q + 1 + h], &tail[q + 1 + h..]),
                None => (&tail[q + 1..], ""),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                        format!("{name}={REDACTED}")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
}
