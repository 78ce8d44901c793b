//! The librdkafka settings of every Kafka client cohort runs: the worker's consumer, the relay's producer
//! and the API's registration producer. One builder, one precedence, from lowest to highest:
//!
//! 1. **cohort's defaults** for the client ([`Role`]), which the operator may change: each applies only
//!    when `[kafka.properties]` sets neither its key nor an alias of it;
//! 2. **the operator's `[kafka.properties]`**, passed through unchanged (security, timeouts, tuning);
//! 3. **the settings cohort's guarantees rest on**, set last: they win. An operator property that conflicts
//!    with one — its key or an alias of it (librdkafka's aliases, and `topic.<name>` for topic-level
//!    properties), with a different value — is dropped, and a warning names the key (once per process and
//!    client). An alias with the same value is dropped silently, so no two spellings of one property
//!    reach librdkafka (which would apply them in no defined order).
//!
//! The guarantees: `bootstrap.servers` is always the configured brokers (`kafka.brokers`). The consumer
//! joins `kafka.group_id`, never commits or stores offsets on its own (positions live in PostgreSQL, written
//! with the effects; Kafka's copy is advisory and explicit), reads only committed records (a record of an
//! aborted transaction never happened) and gets no end-of-partition events. Both producers are idempotent
//! with `acks=all` and at most 5 requests in flight (no loss, no duplicate from librdkafka's own retries,
//! per-partition order kept), use Kafka's murmur2 partitioner so a keyed message lands on the partition
//! that owns its device, and are never transactional (cohort produces outside transactions, which a
//! `transactional.id` would refuse). A registration's delivery timeout is the API's answer timeout, so an
//! import answered 503 is not delivered later.
//!
//! docs/configuration.md ("Kafka client properties") lists the same; a test checks that it names every key.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::KafkaConfig;

/// Which client the settings are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The worker's consumer of the input topic.
    Worker,
    /// The relay's producer of outbox rows.
    Relay,
    /// The API's producer of device registrations, answering within `message_timeout`.
    Registrations { message_timeout: Duration },
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker consumer",
            Role::Relay => "relay producer",
            Role::Registrations { .. } => "registration producer",
        }
    }
}

/// librdkafka's `message.timeout.ms` of the relay unless configured: how long one delivery may take,
/// retries included.
pub const RELAY_MESSAGE_TIMEOUT_MS: u64 = 30_000;

/// A setting cohort's guarantees rest on.
struct Guarantee {
    key: &'static str,
    /// Other names librdkafka takes for the same property.
    aliases: &'static [&'static str],
    /// What cohort sets; `None`: the property must stay unset.
    value: Option<String>,
    /// Other spellings of `value` librdkafka reads the same (compared without case).
    same: &'static [&'static str],
}

/// A default of cohort's, which the operator may change.
struct Fallback {
    key: &'static str,
    aliases: &'static [&'static str],
    value: String,
}

const FALSE: &[&str] = &["f", "0"];
const TRUE: &[&str] = &["t", "1"];

fn guarantee(
    key: &'static str,
    aliases: &'static [&'static str],
    value: impl Into<String>,
    same: &'static [&'static str],
) -> Guarantee {
    Guarantee {
        key,
        aliases,
        value: Some(value.into()),
        same,
    }
}

/// What `role` guarantees and defaults, given the configuration.
fn rules(kafka: &KafkaConfig, brokers: &str, role: Role) -> (Vec<Guarantee>, Vec<Fallback>) {
    let mut guarantees = vec![guarantee(
        "bootstrap.servers",
        &["metadata.broker.list"],
        brokers,
        &[],
    )];
    let mut defaults = Vec::new();
    match role {
        Role::Worker => {
            guarantees.extend([
                guarantee("group.id", &[], kafka.group_id.as_str(), &[]),
                guarantee(
                    "enable.auto.commit",
                    &[
                        "auto.commit.enable",
                        "topic.auto.commit.enable",
                        "topic.enable.auto.commit",
                    ],
                    "false",
                    FALSE,
                ),
                guarantee("enable.auto.offset.store", &[], "false", FALSE),
                guarantee("enable.partition.eof", &[], "false", FALSE),
                guarantee("isolation.level", &[], "read_committed", &[]),
            ]);
            defaults.extend([
                Fallback {
                    key: "auto.offset.reset",
                    aliases: &["topic.auto.offset.reset"],
                    value: "earliest".into(),
                },
                // Statistics feed the lag gauge (high watermarks).
                Fallback {
                    key: "statistics.interval.ms",
                    aliases: &[],
                    value: "5000".into(),
                },
            ]);
        }
        Role::Relay | Role::Registrations { .. } => {
            guarantees.extend([
                guarantee("enable.idempotence", &[], "true", TRUE),
                guarantee(
                    "acks",
                    &[
                        "request.required.acks",
                        "topic.acks",
                        "topic.request.required.acks",
                    ],
                    "all",
                    &["-1"],
                ),
                guarantee(
                    "max.in.flight.requests.per.connection",
                    &["max.in.flight"],
                    "5",
                    &[],
                ),
                guarantee("partitioner", &["topic.partitioner"], "murmur2_random", &[]),
                Guarantee {
                    key: "transactional.id",
                    aliases: &[],
                    value: None,
                    same: &[],
                },
            ]);
            const TIMEOUT_ALIASES: &[&str] = &[
                "delivery.timeout.ms",
                "topic.message.timeout.ms",
                "topic.delivery.timeout.ms",
            ];
            match role {
                Role::Registrations { message_timeout } => guarantees.push(guarantee(
                    "message.timeout.ms",
                    TIMEOUT_ALIASES,
                    message_timeout.as_millis().to_string(),
                    &[],
                )),
                _ => defaults.extend([
                    Fallback {
                        key: "client.id",
                        aliases: &[],
                        value: "cohort-relay".into(),
                    },
                    Fallback {
                        key: "message.timeout.ms",
                        aliases: TIMEOUT_ALIASES,
                        value: RELAY_MESSAGE_TIMEOUT_MS.to_string(),
                    },
                ]),
            }
        }
    }
    (guarantees, defaults)
}

/// An operator property dropped because it conflicts with one of cohort's guarantees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overridden {
    /// The key the operator set (the guarantee's key or an alias of it).
    pub key: String,
    /// The value the operator gave.
    pub given: String,
    /// The property cohort sets instead, and its value (`None`: cohort keeps the property unset).
    pub instead: Option<(&'static str, String)>,
}

/// A client's settings, with the operator properties that lost to cohort's guarantees.
#[derive(Debug)]
pub struct Built {
    pub config: ClientConfig,
    pub overridden: Vec<Overridden>,
}

/// The settings of `role`'s client: see the module documentation for the precedence. Pure: reports the
/// overridden properties instead of logging them ([`client_config`] logs them).
pub fn build(kafka: &KafkaConfig, brokers: &str, role: Role) -> Built {
    let (guarantees, defaults) = rules(kafka, brokers, role);
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for default in &defaults {
        let operator_sets = std::iter::once(default.key)
            .chain(default.aliases.iter().copied())
            .any(|k| kafka.properties.contains_key(k));
        if !operator_sets {
            settings.insert(default.key.to_owned(), default.value.clone());
        }
    }
    settings.extend(kafka.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut overridden = Vec::new();
    for g in &guarantees {
        for key in std::iter::once(g.key).chain(g.aliases.iter().copied()) {
            let Some(given) = settings.remove(key) else {
                continue;
            };
            let agrees = g.value.as_deref().is_some_and(|value| {
                let given = given.trim();
                given.eq_ignore_ascii_case(value)
                    || g.same.iter().any(|s| given.eq_ignore_ascii_case(s))
            });
            if !agrees {
                overridden.push(Overridden {
                    key: key.to_owned(),
                    given,
                    instead: g.value.clone().map(|v| (g.key, v)),
                });
            }
        }
        if let Some(value) = &g.value {
            settings.insert(g.key.to_owned(), value.clone());
        }
    }
    let mut config = ClientConfig::new();
    for (key, value) in settings {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    Built { config, overridden }
}

/// (client, key) pairs already warned about in this process.
static WARNED: Mutex<Option<HashSet<(&'static str, String)>>> = Mutex::new(None);

/// The settings of `role`'s client (see [`build`]); each operator property dropped for a guarantee is
/// reported by a warning, once per process and client.
pub fn client_config(kafka: &KafkaConfig, brokers: &str, role: Role) -> ClientConfig {
    let built = build(kafka, brokers, role);
    for o in &built.overridden {
        let first = WARNED
            .lock()
            .map(|mut warned| {
                warned
                    .get_or_insert_with(HashSet::new)
                    .insert((role.name(), o.key.clone()))
            })
            .unwrap_or(true);
        if !first {
            continue;
        }
        let given = if crate::config::is_secret_property(&o.key) {
            "***"
        } else {
            o.given.as_str()
        };
        match &o.instead {
            Some((key, value)) => tracing::warn!(
                client = role.name(),
                property = %o.key,
                given,
                "kafka.properties.{} is ignored: cohort's guarantees need {key}={value}",
                o.key
            ),
            None => tracing::warn!(
                client = role.name(),
                property = %o.key,
                given,
                "kafka.properties.{} is ignored: cohort's guarantees need it unset",
                o.key
            ),
        }
    }
    built.config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> KafkaConfig {
        let mut kafka = KafkaConfig::default();
        for (k, v) in properties {
            kafka.properties.insert((*k).into(), (*v).into());
        }
        kafka
    }

    const REGISTRATIONS: Role = Role::Registrations {
        message_timeout: Duration::from_secs(10),
    };
    const ROLES: [Role; 3] = [Role::Worker, Role::Relay, REGISTRATIONS];

    #[test]
    fn operator_properties_pass_through_to_every_client() {
        let k = kafka(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("socket.timeout.ms", "7000"),
        ]);
        for role in ROLES {
            let built = build(&k, "k:9092", role);
            assert_eq!(built.config.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(built.config.get("sasl.mechanism"), Some("PLAIN"));
            assert_eq!(built.config.get("socket.timeout.ms"), Some("7000"));
            assert_eq!(built.config.get("bootstrap.servers"), Some("k:9092"));
            assert!(
                built.overridden.is_empty(),
                "{role:?}: {:?}",
                built.overridden
            );
        }
    }

    #[test]
    fn the_consumer_settings_that_positions_rest_on_win_and_are_reported() {
        let k = kafka(&[
            ("enable.auto.commit", "true"),
            ("isolation.level", "read_uncommitted"),
            ("enable.partition.eof", "true"),
            ("group.id", "elsewhere"),
            ("fetch.min.bytes", "1024"),
        ]);
        let built = build(&k, "k:9092", Role::Worker);
        let c = &built.config;
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("enable.partition.eof"), Some("false"));
        assert_eq!(c.get("group.id"), Some("cohort-worker"));
        assert_eq!(c.get("fetch.min.bytes"), Some("1024"));
        let mut keys: Vec<&str> = built.overridden.iter().map(|o| o.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "enable.auto.commit",
                "enable.partition.eof",
                "group.id",
                "isolation.level"
            ]
        );
        let commit = built
            .overridden
            .iter()
            .find(|o| o.key == "enable.auto.commit")
            .expect("reported");
        assert_eq!(commit.given, "true");
        assert_eq!(
            commit.instead,
            Some(("enable.auto.commit", "false".to_owned()))
        );
    }

    #[test]
    fn the_consumer_defaults_may_be_changed() {
        let built = build(&KafkaConfig::default(), "k:9092", Role::Worker);
        assert_eq!(built.config.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(built.config.get("statistics.interval.ms"), Some("5000"));
        let k = kafka(&[
            ("auto.offset.reset", "latest"),
            ("statistics.interval.ms", "1000"),
        ]);
        let built = build(&k, "k:9092", Role::Worker);
        assert_eq!(built.config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(built.config.get("statistics.interval.ms"), Some("1000"));
        assert!(built.overridden.is_empty());
    }

    #[test]
    fn the_producer_settings_that_delivery_rests_on_win_under_any_alias() {
        let k = kafka(&[
            ("request.required.acks", "1"),
            ("topic.partitioner", "consistent_random"),
            ("max.in.flight", "50"),
            ("enable.idempotence", "false"),
            ("transactional.id", "tx"),
            ("metadata.broker.list", "other:9092"),
            ("compression.type", "zstd"),
        ]);
        for role in [Role::Relay, REGISTRATIONS] {
            let built = build(&k, "k:9092", role);
            let c = &built.config;
            assert_eq!(c.get("acks"), Some("all"));
            assert_eq!(c.get("request.required.acks"), None);
            assert_eq!(c.get("partitioner"), Some("murmur2_random"));
            assert_eq!(c.get("topic.partitioner"), None);
            assert_eq!(c.get("max.in.flight.requests.per.connection"), Some("5"));
            assert_eq!(c.get("max.in.flight"), None);
            assert_eq!(c.get("enable.idempotence"), Some("true"));
            assert_eq!(c.get("transactional.id"), None);
            assert_eq!(c.get("bootstrap.servers"), Some("k:9092"));
            assert_eq!(c.get("metadata.broker.list"), None);
            assert_eq!(c.get("compression.type"), Some("zstd"));
            assert_eq!(built.overridden.len(), 6, "{:?}", built.overridden);
            let tx = built
                .overridden
                .iter()
                .find(|o| o.key == "transactional.id")
                .expect("reported");
            assert_eq!(tx.instead, None);
        }
    }

    #[test]
    fn a_property_that_agrees_with_a_guarantee_is_not_reported() {
        let k = kafka(&[
            ("acks", "-1"),
            ("enable.idempotence", "TRUE"),
            ("topic.acks", "all"),
        ]);
        let built = build(&k, "k:9092", Role::Relay);
        assert!(built.overridden.is_empty(), "{:?}", built.overridden);
        assert_eq!(built.config.get("acks"), Some("all"));
        assert_eq!(built.config.get("topic.acks"), None);
    }

    #[test]
    fn the_relay_message_timeout_is_a_default_and_the_registration_one_a_guarantee() {
        let relay = build(&KafkaConfig::default(), "k:9092", Role::Relay);
        assert_eq!(relay.config.get("message.timeout.ms"), Some("30000"));
        assert_eq!(relay.config.get("client.id"), Some("cohort-relay"));

        let k = kafka(&[("delivery.timeout.ms", "1000"), ("client.id", "mine")]);
        let relay = build(&k, "k:9092", Role::Relay);
        assert_eq!(relay.config.get("message.timeout.ms"), None);
        assert_eq!(relay.config.get("delivery.timeout.ms"), Some("1000"));
        assert_eq!(relay.config.get("client.id"), Some("mine"));
        assert!(relay.overridden.is_empty());

        let registrations = build(&k, "k:9092", REGISTRATIONS);
        assert_eq!(
            registrations.config.get("message.timeout.ms"),
            Some("10000")
        );
        assert_eq!(registrations.config.get("delivery.timeout.ms"), None);
        assert_eq!(registrations.overridden.len(), 1);
        assert_eq!(registrations.overridden[0].key, "delivery.timeout.ms");
    }

    #[test]
    fn every_client_can_be_created_from_its_settings() {
        // librdkafka checks the settings at creation (unknown keys, bad values, idempotence limits).
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::producer::BaseProducer;
        let k = kafka(&[("max.in.flight", "50"), ("linger.ms", "5")]);
        let _: BaseConsumer = client_config(&k, "127.0.0.1:1", Role::Worker)
            .create()
            .expect("the consumer settings are valid");
        for role in [Role::Relay, REGISTRATIONS] {
            let _: BaseProducer = client_config(&k, "127.0.0.1:1", role)
                .create()
                .expect("the producer settings are valid");
        }
    }

    #[test]
    fn the_configuration_document_names_every_key_cohort_sets() {
        // Read when the test runs, not built in: the crate's build reads nothing of docs/.
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .expect("docs/configuration.md is readable");
        let section = doc
            .split("## Kafka client properties")
            .nth(1)
            .expect("docs/configuration.md has a \"Kafka client properties\" section");
        let section = section.split("\n## ").next().unwrap_or(section);
        for role in ROLES {
            let (guarantees, defaults) = rules(&KafkaConfig::default(), "k:9092", role);
            let keys = guarantees
                .iter()
                .map(|g| g.key)
                .chain(defaults.iter().map(|d| d.key));
            for key in keys {
                assert!(
                    section.contains(&format!("`{key}")),
                    "the section does not name {key}"
                );
            }
        }
    }
}
