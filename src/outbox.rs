//! An outgoing Kafka message as the transactional outbox holds it: a topic, a key, a value and headers.
//! Pure: no IO.
//!
//! Every message cohort publishes is one: rollout-target events
//! ([`crate::firmware::RolloutTarget::message`]) and dead letters ([`crate::event::dead_letter`]). The
//! worker writes them to the `outbox` table in its batch transaction ([`crate::store::outbox::insert`]),
//! and the relay ([`crate::relay`]) reads them back ([`crate::store::outbox::fetch_unpublished`]) and
//! produces them as they are, adding only the `cohort-outbox-id` header.
//!
//! Headers are kept in name order, at most one per name: the `headers` column stores them as one JSON
//! object, which reads back in name order, so that is the order in which they are published. Keeping the
//! message in that form makes a message read from its row equal to the one written.

/// One Kafka header of an outgoing message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The header's name.
    pub name: String,
    /// Its value, or `None` for a header without one. Text, because the `headers` column holds a JSON
    /// object of strings (and `null`).
    pub value: Option<String>,
}

/// A message for the transactional outbox: written to the `outbox` table in the same transaction as the
/// effect that caused it, and published to Kafka by the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The Kafka topic to publish to.
    pub topic: String,
    /// The Kafka key; `None` publishes to a partition chosen at random. Messages of one key stay in
    /// order.
    pub key: Option<Vec<u8>>,
    /// The Kafka value.
    pub payload: Vec<u8>,
    /// In name order, one per name (see the module docs); set through [`Message::with_header`].
    headers: Vec<Header>,
}

impl Message {
    /// A message without headers.
    pub fn new(topic: impl Into<String>, key: Option<Vec<u8>>, payload: Vec<u8>) -> Self {
        Self {
            topic: topic.into(),
            key,
            payload,
            headers: Vec::new(),
        }
    }

    /// The message with the header `name` set to `value` (replacing a header of that name).
    pub fn with_header(mut self, name: impl Into<String>, value: Option<String>) -> Self {
        let name = name.into();
        match self
            .headers
            .binary_search_by(|h| h.name.as_str().cmp(&name))
        {
            Ok(at) => self.headers[at].value = value,
            Err(at) => self.headers.insert(at, Header { name, value }),
        }
        self
    }

    /// The headers, in name order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The value of the header named `name`; `None` when there is no such header or it has no value.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .binary_search_by(|h| h.name.as_str().cmp(name))
            .ok()
            .and_then(|at| self.headers[at].value.as_deref())
    }

    /// The headers as (name, value) pairs, in name order.
    pub fn header_pairs(&self) -> Vec<(&str, Option<&str>)> {
        self.headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_deref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_kept_in_name_order_one_per_name() {
        let message = Message::new("t", Some(b"k".to_vec()), b"v".to_vec())
            .with_header("b", Some("1".into()))
            .with_header("a", None)
            .with_header("c", Some("3".into()))
            .with_header("b", Some("2".into()));
        let names: Vec<&str> = message.headers().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(message.header_value("b"), Some("2"));
        assert_eq!(message.header_value("a"), None);
        assert_eq!(message.header_value("d"), None);
        assert_eq!(
            message.headers()[0],
            Header {
                name: "a".into(),
                value: None
            }
        );
    }
}
