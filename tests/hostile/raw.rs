//! A raw HTTP/1.1 client: the request is written byte for byte as built, so it may carry a bad content
//! type, a body that is not JSON or not UTF-8, a chunked body, or a path a client library would refuse.
//! [`send`] opens one connection per request (`Connection: close`); a [`Connection`] carries requests one
//! after another, as a keep-alive client does, may come from another loopback address, and may write a
//! request in parts. Every exchange is bounded by [`EXCHANGE_LIMIT`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// The longest one exchange may take before it counts as a hang.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);

/// A request to send.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: &'static str,
    /// The request target exactly as sent (path and query; may hold any byte but space and CR/LF).
    pub target: Vec<u8>,
    /// Header lines beyond Host, Connection and Content-Length.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
    /// Leave out `Connection: close`, so that the connection may carry the next request.
    pub keep_alive: bool,
}

impl Request {
    pub fn new(method: &'static str, target: impl Into<Vec<u8>>) -> Self {
        Self {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: None,
            chunked: false,
            keep_alive: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A body sent as `application/json`.
    pub fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/json").body(body)
    }

    /// A body with whatever content type the headers give (or none).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }

    /// The request's bytes as sent to `addr`.
    pub fn encoded(&self, addr: SocketAddr) -> Vec<u8> {
        self.encode(addr)
    }

    fn encode(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
        if !self.keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        match (&self.body, self.chunked) {
            (Some(body), true) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                for chunk in body.chunks(16 * 1024) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            (Some(body), false) => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            (None, _) => out.extend_from_slice(b"\r\n"),
        }
        out
    }
}

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the answer says the connection closes after it (`Connection: close`).
    pub fn says_close(&self) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// A short description for assertion messages.
    pub fn describe(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(600).collect();
        format!("{} {body}", self.status)
    }
}

/// Sends `request` on a fresh connection and reads the answer. The request is written while the answer
/// is read, so a server that answers before reading a large body (413) is heard, not deadlocked.
pub async fn send(addr: SocketAddr, request: &Request) -> anyhow::Result<Reply> {
    let bytes = request.encode(addr);
    let exchange = async move {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut reader, mut writer) = stream.into_split();
        // A write error (the server closed after answering early) is not the test's concern: the
        // answer is.
        let write = tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
            let _ = writer.flush().await;
            // Keep the write half open until the answer is read: a half-close would let the server drop
            // the request as abandoned.
            writer
        });
        let mut received = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    if complete(&received) {
                        break;
                    }
                }
                // A reset after the answer arrived (the server closed with our body unread) still leaves
                // a whole answer to parse.
                Err(_) if !received.is_empty() => break,
                Err(e) => return Err(anyhow::Error::new(e).context("reading the answer")),
            }
        }
        write.abort();
        parse(&received)
    };
    tokio::time::timeout(EXCHANGE_LIMIT, exchange)
        .await
        .with_context(|| {
            format!(
                "{} {} got no answer within {EXCHANGE_LIMIT:?}",
                request.method,
                String::from_utf8_lossy(&request.target)
            )
        })?
        .with_context(|| {
            format!(
                "{} {} failed",
                request.method,
                String::from_utf8_lossy(&request.target)
            )
        })
}

/// One connection carrying requests one after another.
pub struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read past the last answer.
    unread: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            stream: TcpStream::connect(addr).await?,
            unread: Vec::new(),
        })
    }

    /// Opens a connection to `addr` from the local address `from` (Linux routes all of 127/8 to the
    /// loopback interface, so 127.0.0.2 is a second client on the same machine).
    pub async fn open_from(from: IpAddr, addr: SocketAddr) -> anyhow::Result<Self> {
        let socket = match from {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding a client socket to {from}"))?;
        Ok(Self {
            addr,
            stream: socket.connect(addr).await?,
            unread: Vec::new(),
        })
    }

    /// Writes `bytes` (a request, or part of one) and nothing else.
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        tokio::time::timeout(EXCHANGE_LIMIT, self.stream.write_all(bytes))
            .await
            .context("writing took longer than the exchange limit")?
            .context("writing to the connection")
    }

    /// Reads the next answer, whatever was written before.
    pub async fn reply(&mut self) -> anyhow::Result<Reply> {
        let (mut reader, _) = self.stream.split();
        tokio::time::timeout(EXCHANGE_LIMIT, read_answer(&mut reader, &mut self.unread))
            .await
            .with_context(|| format!("no answer within {EXCHANGE_LIMIT:?}"))?
    }

    /// Sends `request` (built with [`Request::keep_alive`] to keep the connection) and reads its answer.
    /// The request is written while the answer is read, so an answer given before the body was read is
    /// heard. An answer that does not say `Connection: close` promises the connection carries the next
    /// request, so the rest of this one is then written in full.
    pub async fn exchange(&mut self, request: &Request) -> anyhow::Result<Reply> {
        let bytes = request.encode(self.addr);
        let (mut reader, mut writer) = self.stream.split();
        let unread = &mut self.unread;
        let exchange = async {
            let write = writer.write_all(&bytes);
            let read = read_answer(&mut reader, unread);
            tokio::pin!(write, read);
            let mut written = None;
            let reply = loop {
                tokio::select! {
                    result = &mut write, if written.is_none() => written = Some(result),
                    reply = &mut read => break reply?,
                };
            };
            if !reply.says_close() {
                match written {
                    Some(result) => result,
                    None => write.await,
                }
                .context("writing the rest of a request whose answer kept the connection")?;
            }
            Ok(reply)
        };
        tokio::time::timeout(EXCHANGE_LIMIT, exchange)
            .await
            .with_context(|| {
                format!(
                    "{} {} got no answer within {EXCHANGE_LIMIT:?}",
                    request.method,
                    String::from_utf8_lossy(&request.target)
                )
            })?
    }

    /// Whether the server ends the connection (end of stream, or a reset) rather than sending more.
    pub async fn closed(mut self) -> anyhow::Result<bool> {
        if !self.unread.is_empty() {
            return Ok(false);
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(EXCHANGE_LIMIT, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) => Ok(n == 0),
            Ok(Err(_)) => Ok(true),
            Err(_) => Ok(false),
        }
    }
}

/// Reads one answer, keeping in `unread` what follows it.
async fn read_answer(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    unread: &mut Vec<u8>,
) -> anyhow::Result<Reply> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(length) = answer_length(unread) {
            let reply = parse(&unread[..length])?;
            unread.drain(..length);
            return Ok(reply);
        }
        let n = reader.read(&mut buf).await.context("reading an answer")?;
        anyhow::ensure!(
            n > 0,
            "the connection closed without a complete answer ({} bytes: {:?})",
            unread.len(),
            String::from_utf8_lossy(&unread[..unread.len().min(200)])
        );
        unread.extend_from_slice(&buf[..n]);
    }
}

/// The length of the whole answer at the start of `bytes`, once it is all there (its body framed by
/// `Content-Length` or chunked; neither means no body).
fn answer_length(bytes: &[u8]) -> Option<usize> {
    let end = head_end(bytes)?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|v| v == "chunked") {
        return chunked_length(&bytes[end..]).map(|length| end + length);
    }
    let length = header("content-length").map_or(Some(0), |v| v.parse::<usize>().ok())?;
    (bytes.len() >= end + length).then_some(end + length)
}

/// The length of a whole chunked body (without trailers) at the start of `raw`, once it is all there.
fn chunked_length(raw: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = raw[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[at..at + line]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line + 2 + size + 2;
        if raw.len() < at {
            return None;
        }
        if size == 0 {
            return Some(at);
        }
    }
}

/// Where the head ends (the index just past the blank line).
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Whether `bytes` hold a whole answer with a `Content-Length` (chunked answers are read to EOF).
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = head_end(bytes) else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]);
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + len)
}

fn parse(bytes: &[u8]) -> anyhow::Result<Reply> {
    let end = head_end(bytes).with_context(|| {
        format!(
            "the connection closed without a complete answer ({} bytes: {:?})",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })?;
    let head = std::str::from_utf8(&bytes[..end]).context("the answer's head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &bytes[end..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(raw)?
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, len)) => {
                let len: usize = len.parse()?;
                anyhow::ensure!(raw.len() >= len, "the answer's body was cut short");
                raw[..len].to_vec()
            }
            None => raw.to_vec(),
        }
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line is cut short")?;
        let size_text = std::str::from_utf8(&raw[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(raw.len() >= size + 2, "a chunk is cut short");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
