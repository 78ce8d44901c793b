//! The relay's unit tests: the headers it sends and the producer settings that carry its guarantee.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use super::round::header_pairs;
use super::{delivery_wait, DELIVERY_MARGIN, UNBOUNDED_MESSAGE_WAIT};
use crate::config::KafkaConfig;
use crate::kafka::client::{client_config, Role};
use crate::outbox::Message;

fn producer_config(kafka: &KafkaConfig, brokers: &str) -> ClientConfig {
    client_config(kafka, brokers, Role::Relay)
}

#[test]
fn headers_keep_the_messages_in_name_order_and_add_the_outbox_id_last() {
    let message = Message::new("t", None, Vec::new())
        .with_header("cohort-outbox-id", Some("forged".into()))
        .with_header("empty", None)
        .with_header("cohort-dead-letter-reason", Some("malformed_json".into()));
    assert_eq!(
        header_pairs(42, &message),
        vec![
            (
                "cohort-dead-letter-reason",
                Some(b"malformed_json".to_vec())
            ),
            ("empty", None),
            ("cohort-outbox-id", Some(b"42".to_vec())),
        ]
    );
    assert_eq!(
        header_pairs(7, &Message::new("t", None, Vec::new())),
        vec![("cohort-outbox-id", Some(b"7".to_vec()))]
    );
}

#[test]
fn the_producer_settings_that_carry_the_guarantee_cannot_be_overridden() {
    let mut kafka = KafkaConfig::default();
    for (k, v) in [
        ("acks", "1"),
        ("enable.idempotence", "false"),
        ("partitioner", "consistent_random"),
        ("max.in.flight.requests.per.connection", "50"),
        ("message.timeout.ms", "3000"),
        ("compression.type", "zstd"),
    ] {
        kafka.properties.insert(k.into(), v.into());
    }
    let config = producer_config(&kafka, "k:9092");
    assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
    assert_eq!(config.get("acks"), Some("all"));
    assert_eq!(config.get("enable.idempotence"), Some("true"));
    assert_eq!(config.get("partitioner"), Some("murmur2_random"));
    assert_eq!(
        config.get("max.in.flight.requests.per.connection"),
        Some("5")
    );
    assert_eq!(config.get("compression.type"), Some("zstd"));
    assert_eq!(config.get("message.timeout.ms"), Some("3000"));
    assert_eq!(
        delivery_wait(&config),
        Duration::from_secs(3) + DELIVERY_MARGIN
    );
}

#[test]
fn the_delivery_wait_follows_the_message_timeout_or_its_alias() {
    let config = producer_config(&KafkaConfig::default(), "k:9092");
    assert_eq!(config.get("message.timeout.ms"), Some("30000"));
    assert_eq!(
        delivery_wait(&config),
        Duration::from_secs(30) + DELIVERY_MARGIN
    );

    let mut kafka = KafkaConfig::default();
    kafka
        .properties
        .insert("delivery.timeout.ms".into(), "1000".into());
    let config = producer_config(&kafka, "k:9092");
    assert_eq!(config.get("message.timeout.ms"), None);
    assert_eq!(
        delivery_wait(&config),
        Duration::from_secs(1) + DELIVERY_MARGIN
    );

    let mut kafka = KafkaConfig::default();
    kafka
        .properties
        .insert("message.timeout.ms".into(), "0".into());
    assert_eq!(
        delivery_wait(&producer_config(&kafka, "k:9092")),
        UNBOUNDED_MESSAGE_WAIT
    );
}
