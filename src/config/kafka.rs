//! `[kafka]`: the cluster, the topics, the consumer group and the librdkafka pass-through properties.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::REDACTED;
/// `[kafka]`: the cluster, the topics and the consumer group.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,…`). Empty means "not configured": the demo then embeds a broker.
    pub brokers: String,
    /// Where device attribute changes arrive (key = device id).
    pub input_topic: String,
    /// Where rollout-target events are published for the OTA dispatcher.
    pub output_topic: String,
    /// Where inputs that can never be processed go, with the reason, so their offsets can advance.
    pub dead_letter_topic: String,
    /// The consumer group of the workers; its members share the input partitions.
    pub group_id: String,
    /// librdkafka properties passed through unchanged (security, tuning), e.g. `sasl.mechanism`.
    /// Properties that cohort sets itself (`bootstrap.servers`, `group.id`, `enable.auto.commit`)
    /// are refused here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            input_topic: "device-attribute-changes".to_owned(),
            output_topic: "rollout-targets".to_owned(),
            dead_letter_topic: "device-attribute-changes.dead-letter".to_owned(),
            group_id: "cohort-worker".to_owned(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The configured bootstrap servers, or `None` when none are configured (the demo embeds a broker).
    pub fn brokers(&self) -> Option<&str> {
        let brokers = self.brokers.trim();
        (!brokers.is_empty()).then_some(brokers)
    }
}

/// The pass-through properties, with secret values shown as `***`.
struct RedactedProperties<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedProperties<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, value)| (name, redact_property(name, value))),
            )
            .finish()
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured so that a new field cannot be left out of the output unnoticed.
        let KafkaConfig {
            brokers,
            input_topic,
            output_topic,
            dead_letter_topic,
            group_id,
            properties,
        } = self;
        f.debug_struct("KafkaConfig")
            .field("brokers", brokers)
            .field("input_topic", input_topic)
            .field("output_topic", output_topic)
            .field("dead_letter_topic", dead_letter_topic)
            .field("group_id", group_id)
            .field("properties", &RedactedProperties(properties))
            .finish()
    }
}

/// Checks Kafka's rule for topic names: 1–249 characters of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub(super) fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 249 {
        return Err("it is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

/// Properties cohort sets itself, with what to do instead.
pub(super) fn owned_property(name: &str) -> Option<&'static str> {
    match name {
        "bootstrap.servers" | "metadata.broker.list" => Some("use kafka.brokers"),
        "group.id" => Some("use kafka.group_id"),
        "enable.auto.commit" | "enable.auto.offset.store" => {
            Some("cohort stores positions in postgresql and controls commits itself")
        }
        _ => None,
    }
}

/// Whether a librdkafka property holds a credential and must never be shown.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "sasl.jaas"]
        .iter()
        .any(|marker| name.contains(marker))
}

pub(super) fn redact_property<'a>(name: &str, value: &'a str) -> &'a str {
    if is_secret_property(name) {
        REDACTED
    } else {
        value
    }
}
