//! Whether a Docker daemon answers, decided once per test binary.
//!
//! testcontainers blocks for about 120 s against a daemon that accepts connections but never answers,
//! so we ping first (`GET /_ping`, 2 s in all) and only use containers when the answer is `OK`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The whole ping, connect included, must finish within this.
pub const PING_LIMIT: Duration = Duration::from_secs(2);

/// Where the daemon is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// A unix socket (`/var/run/docker.sock`, or `DOCKER_HOST=unix://…`).
    Unix(PathBuf),
    /// `DOCKER_HOST=tcp://host:port` (plain HTTP only; a TLS daemon does not answer the ping and is
    /// treated as absent).
    Tcp(String),
    /// A `DOCKER_HOST` we cannot ping (ssh://, npipe://): treated as absent.
    Unsupported(String),
}

/// The endpoint named by `DOCKER_HOST`, or the default unix socket.
pub fn docker_endpoint() -> DockerEndpoint {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => {
            if let Some(path) = host.strip_prefix("unix://") {
                DockerEndpoint::Unix(PathBuf::from(path))
            } else if let Some(addr) = host.strip_prefix("tcp://") {
                DockerEndpoint::Tcp(addr.trim_end_matches('/').to_owned())
            } else {
                DockerEndpoint::Unsupported(host)
            }
        }
        _ => DockerEndpoint::Unix(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Whether a Docker daemon answered `OK` to a ping; asked once per process.
pub fn docker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let endpoint = docker_endpoint();
        let available = ping(&endpoint, PING_LIMIT);
        if !available {
            eprintln!(
                "test support: no docker daemon answered at {endpoint:?}, not using testcontainers"
            );
        }
        available
    })
}

/// Pings the daemon; `true` only for an HTTP 200 answer whose body is `OK`, within `limit`.
pub fn ping(endpoint: &DockerEndpoint, limit: Duration) -> bool {
    let endpoint = endpoint.clone();
    let (tx, rx) = mpsc::channel();
    // Even connect can block (a unix socket with a full backlog), so the whole exchange runs on its
    // own thread and we stop waiting at the limit; a stuck thread is abandoned, not joined.
    let spawned = std::thread::Builder::new()
        .name("docker-ping".to_owned())
        .spawn(move || {
            let deadline = Instant::now() + limit;
            let answer = match &endpoint {
                DockerEndpoint::Unix(path) => ping_unix(path, deadline),
                DockerEndpoint::Tcp(addr) => ping_tcp(addr, deadline),
                DockerEndpoint::Unsupported(_) => Ok(false),
            };
            let _ = tx.send(answer.unwrap_or(false));
        });
    if spawned.is_err() {
        return false;
    }
    rx.recv_timeout(limit).unwrap_or(false)
}

fn ping_unix(path: &Path, deadline: Instant) -> std::io::Result<bool> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let remaining = remaining(deadline)?;
    stream.set_read_timeout(Some(remaining))?;
    stream.set_write_timeout(Some(remaining))?;
    exchange(stream, deadline)
}

fn ping_tcp(addr: &str, deadline: Instant) -> std::io::Result<bool> {
    use std::net::ToSocketAddrs;
    let Some(addr) = addr.to_socket_addrs()?.next() else {
        return Ok(false);
    };
    let stream = std::net::TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
    let remaining = remaining(deadline)?;
    stream.set_read_timeout(Some(remaining))?;
    stream.set_write_timeout(Some(remaining))?;
    exchange(stream, deadline)
}

fn remaining(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Sends the ping and reads the answer. HTTP/1.0, so the daemon answers without chunking and closes.
fn exchange(mut stream: impl Read + Write, deadline: Instant) -> std::io::Result<bool> {
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        remaining(deadline)?;
        match stream.read(&mut buf)? {
            0 => break,
            n => response.extend_from_slice(&buf[..n]),
        }
        if response.len() > 16 * 1024 {
            return Ok(false);
        }
    }
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Ok(false);
    };
    let status_ok = head
        .lines()
        .next()
        .is_some_and(|status| status.split_whitespace().nth(1) == Some("200"));
    Ok(status_ok && body.trim() == "OK")
}
