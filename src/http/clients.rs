//! Connections per client: at most `http.max_connections_per_client` open at once from one client, so
//! that one source cannot hold every slot of `http.max_connections` with idle sockets. A client is one
//! IPv4 address, or one IPv6 /64 (a single host is commonly given a whole /64). A connection over the cap
//! is answered 503 and closed at once ([`refuse`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Who a connection counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Client(IpAddr);

impl Client {
    pub(super) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

/// The open connections of every client that has one. Entries exist only while a connection is open, so
/// the map holds at most `http.max_connections` of them.
#[derive(Debug)]
pub(super) struct Clients {
    cap: usize,
    open: Mutex<HashMap<Client, usize>>,
}

impl Clients {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts a new connection of `client`, or `None` when it already has its cap open.
    pub(super) fn admit(self: &Arc<Self>, client: Client) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(Admitted {
            clients: self.clone(),
            client,
        })
    }

    #[cfg(test)]
    fn open(&self, client: Client) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client).copied().unwrap_or(0)
    }
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub(super) struct Admitted {
    clients: Arc<Clients>,
    client: Client,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The answer to a connection over its client's cap: 503 in the API's error shape, `Connection: close`.
pub(super) fn refusal(cap: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": "internal_error",
        "message": format!(
            "Too many connections from this client; retry after closing one \
             (http.max_connections_per_client = {cap})"
        ),
        "details": [],
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `answer` if the socket takes it at once (a new socket's send buffer is empty, so a short answer
/// does), then closes the connection. Nothing is read and nothing waits: refusing costs the accept loop
/// one system call.
pub(super) fn refuse(stream: tokio::net::TcpStream, answer: &[u8]) {
    // `into_std` leaves the socket non-blocking.
    if let Ok(stream) = stream.into_std() {
        let _ = (&stream).write(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(Client::of(ip("10.0.0.1")), Client::of(ip("10.0.0.1")));
        assert_ne!(Client::of(ip("10.0.0.1")), Client::of(ip("10.0.0.2")));
        assert_eq!(
            Client::of(ip("::ffff:10.0.0.1")),
            Client::of(ip("10.0.0.1"))
        );
        assert_eq!(
            Client::of(ip("2001:db8:1:2:aaaa::1")),
            Client::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            Client::of(ip("2001:db8:1:2::1")),
            Client::of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_client_gets_its_cap_and_a_slot_back_when_a_connection_ends() {
        let clients = Clients::new(2);
        let a = Client::of(ip("10.0.0.1"));
        let b = Client::of(ip("10.0.0.2"));
        let first = clients.admit(a).unwrap();
        let second = clients.admit(a).unwrap();
        assert!(clients.admit(a).is_none());
        // Another client is not affected.
        let other = clients.admit(b).unwrap();
        assert_eq!(clients.open(a), 2);
        drop(first);
        assert_eq!(clients.open(a), 1);
        let third = clients.admit(a).unwrap();
        assert!(clients.admit(a).is_none());
        drop((second, third, other));
        assert_eq!(clients.open(a), 0);
        assert!(
            clients.open.lock().unwrap().is_empty(),
            "entries outlived their connections"
        );
    }

    #[test]
    fn the_refusal_is_a_whole_503_that_says_close() {
        let answer = String::from_utf8(refusal(64)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert_eq!(body["details"], serde_json::json!([]));
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("http.max_connections_per_client = 64"));
    }
}
