//! Smoke tests of the integration-test harness itself: databases come and go, messages round-trip,
//! consumer groups resume, the mock cluster takes faults, and the Docker probe never hangs.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cohort_testkit::db::{database_exists, TEST_DATABASE_PREFIX};
use cohort_testkit::docker::{ping, DockerEndpoint};
use cohort_testkit::{blocking, random_suffix, ConsumedMessage, Rng, TestDatabase, TestKafka};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn each_test_gets_a_fresh_database_that_is_dropped_afterwards() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let name = db.name().to_owned();
    let admin_url = db.admin_url().to_owned();
    assert!(name.starts_with(TEST_DATABASE_PREFIX), "{name}");
    assert!(db.url().contains(&name), "the url names the test database");

    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(db.pool())
    .await?;
    assert_eq!(tables, 0, "a fresh database is empty");

    sqlx::raw_sql("CREATE TABLE devices (id text PRIMARY KEY); INSERT INTO devices VALUES ('d-1')")
        .execute(db.pool())
        .await?;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(db.pool())
        .await?;
    assert_eq!(current, name);
    assert!(database_exists(&admin_url, &name).await?);

    drop(db);
    assert!(
        !database_exists(&admin_url, &name).await?,
        "dropping the TestDatabase drops the database"
    );
    Ok(())
}

#[tokio::test]
async fn cleanup_drops_the_database_even_while_connections_to_it_are_open() -> anyhow::Result<()> {
    let db = TestDatabase::new().await?;
    let name = db.name().to_owned();
    let admin_url = db.admin_url().to_owned();
    let mut held = db.pool().acquire().await?;
    sqlx::query("SELECT 1").execute(&mut *held).await?;

    db.cleanup().await?;
    assert!(!database_exists(&admin_url, &name).await?);
    assert!(
        sqlx::query("SELECT 1").execute(&mut *held).await.is_err(),
        "the server ended the connection that was still open"
    );
    Ok(())
}

#[tokio::test]
async fn test_databases_do_not_see_each_other() -> anyhow::Result<()> {
    let first = TestDatabase::new().await?;
    let second = TestDatabase::new().await?;
    assert_ne!(first.name(), second.name());
    sqlx::raw_sql("CREATE TABLE only_in_first (id int)")
        .execute(first.pool())
        .await?;
    let visible: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_first')::text")
        .fetch_one(second.pool())
        .await?;
    assert_eq!(visible, None);
    first.cleanup().await?;
    second.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn messages_round_trip_through_the_broker_with_keys_and_headers() -> anyhow::Result<()> {
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("round-trip");
    kafka.create_topic(&topic, 3).await?;

    let mut sent = Vec::new();
    for (key, payload, trace) in [
        ("device-1", r#"{"seq":1}"#, "t-1"),
        ("device-2", r#"{"seq":1}"#, "t-2"),
        ("device-1", r#"{"seq":2}"#, "t-3"),
    ] {
        let position = kafka
            .produce_with_headers(
                &topic,
                key,
                payload,
                &[("trace-id", trace.as_bytes()), ("schema", b"v1")],
            )
            .await?;
        sent.push((position, key, payload, trace));
    }
    assert_eq!(
        sent[0].0 .0, sent[2].0 .0,
        "one key always goes to one partition"
    );

    let mut received = kafka.read_all(&topic).await?;
    received.sort_by_key(|m| (m.partition, m.offset));
    sent.sort_by_key(|s| s.0);
    assert_eq!(received.len(), sent.len());
    for (message, ((partition, offset), key, payload, trace)) in received.iter().zip(&sent) {
        assert_eq!((message.partition, message.offset), (*partition, *offset));
        assert_eq!(message.key_str(), Some(*key));
        assert_eq!(message.payload_str(), Some(*payload));
        assert_eq!(message.header("trace-id"), Some(trace.as_bytes()));
        assert_eq!(message.header("schema"), Some(&b"v1"[..]));
        assert_eq!(message.headers.len(), 2);
    }
    Ok(())
}

#[tokio::test]
async fn consume_until_waits_for_messages_produced_after_it_started() -> anyhow::Result<()> {
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("late");
    kafka.create_topic(&topic, 2).await?;

    // Order holds only within a partition, so wait for the count, not for the last one sent.
    let reader = kafka.consume_until(&topic, LIMIT, |messages| messages.len() >= 6);
    let writer = async {
        for i in 0..5 {
            kafka.produce(&topic, format!("k-{i}"), "x").await?;
        }
        kafka.produce(&topic, "last", "done").await
    };
    let (read, written) = tokio::join!(reader, writer);
    written?;
    let read = read?;
    assert_eq!(read.len(), 6);
    assert!(read.iter().any(|m| m.key_str() == Some("last")));
    Ok(())
}

/// Joins `group`, reads `count` messages of `topic` and, when `commit` is set, commits the position
/// after the last one and waits until the broker reports it. Leaves the group on return.
fn read_in_group(
    config: ClientConfig,
    topic: &str,
    count: usize,
    commit: bool,
) -> anyhow::Result<Vec<ConsumedMessage>> {
    let deadline = Instant::now() + LIMIT;
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    let mut read = Vec::new();
    let mut last_error = None;
    while read.len() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read {} of {count} messages before the deadline (last error: {last_error:?})",
            read.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => read.push(ConsumedMessage::from_message(&message)),
            Some(Err(err)) => last_error = Some(err),
            None => {}
        }
    }
    if commit {
        let last = read.last().context("nothing to commit")?;
        // The committed offset is the next one to read (exclusive), not the last one processed.
        let next_offset = last.offset + 1;
        let mut position = TopicPartitionList::new();
        position.add_partition_offset(topic, last.partition, Offset::Offset(next_offset))?;
        // Async, then confirmed with a bounded query: a sync commit has no timeout of its own.
        consumer.commit(&position, CommitMode::Async)?;
        loop {
            anyhow::ensure!(Instant::now() < deadline, "the commit was never confirmed");
            let committed = consumer.committed_offsets(position.clone(), Duration::from_secs(2))?;
            let stored = committed
                .find_partition(topic, last.partition)
                .map(|p| p.offset());
            if stored == Some(Offset::Offset(next_offset)) {
                break;
            }
            let _ = consumer.poll(Duration::from_millis(100));
        }
    }
    drop(consumer);
    Ok(read)
}

#[tokio::test]
async fn a_consumer_group_with_manual_commits_resumes_from_its_committed_offset(
) -> anyhow::Result<()> {
    let kafka = TestKafka::new().await?;
    let topic = kafka.unique_topic("resume");
    kafka.create_topic(&topic, 1).await?;
    for i in 0..10 {
        kafka
            .produce(&topic, "device-1", format!("event-{i}"))
            .await?;
    }
    let group = format!("resume-{}", cohort_testkit::random_suffix());

    let config = kafka.consumer_config(&group);
    let t = topic.clone();
    let first = blocking(
        LIMIT + Duration::from_secs(10),
        "read in the group",
        move || read_in_group(config, &t, 4, true),
    )
    .await?;
    let offsets: Vec<i64> = first.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3]);

    let config = kafka.consumer_config(&group);
    let t = topic.clone();
    let second = blocking(
        LIMIT + Duration::from_secs(10),
        "resume in the group",
        move || read_in_group(config, &t, 6, false),
    )
    .await?;
    let offsets: Vec<i64> = second.iter().map(|m| m.offset).collect();
    assert_eq!(
        offsets,
        [4, 5, 6, 7, 8, 9],
        "resumed after the committed offset"
    );
    assert_eq!(second[0].payload_str(), Some("event-4"));
    Ok(())
}

#[tokio::test]
async fn a_fault_injected_into_the_mock_cluster_reaches_its_clients() -> anyhow::Result<()> {
    let kafka = TestKafka::mock(1)?;
    let topic = kafka.unique_topic("faults");
    kafka.create_topic(&topic, 1).await?;
    kafka.produce(&topic, "k", "before").await?;

    let mock = kafka.mock_cluster().context("a mock cluster")?;
    mock.topic_error(
        &topic,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )?;
    // A fresh producer so the error is met on its first metadata request.
    let producer: rdkafka::producer::FutureProducer = kafka.producer_config().create()?;
    let refused = tokio::time::timeout(
        LIMIT,
        producer.send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key("k")
                .payload("during"),
            Duration::from_secs(10),
        ),
    )
    .await
    .context("the refused produce did not finish")?;
    let (err, _) = refused.expect_err("the broker refuses the topic");
    assert!(
        err.to_string().to_lowercase().contains("authoriz"),
        "unexpected error: {err}"
    );
    Ok(())
}

#[test]
fn a_docker_daemon_that_accepts_but_never_answers_is_treated_as_absent() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cohort-ping-{}", cohort_testkit::random_suffix()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("docker.sock");
    // Connections queue in the backlog but nobody reads or writes.
    let _listener = UnixListener::bind(&socket)?;
    let answered = ping(&DockerEndpoint::Unix(socket), Duration::from_millis(500));
    std::fs::remove_dir_all(&dir).ok();
    assert!(!answered);
    Ok(())
}

#[test]
fn a_docker_daemon_answering_ok_is_detected_and_a_missing_socket_is_not() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cohort-ping-{}", cohort_testkit::random_suffix()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("docker.sock");
    let listener = UnixListener::bind(&socket)?;
    let daemon = std::thread::spawn(move || -> std::io::Result<String> {
        let (mut stream, _) = listener.accept()?;
        let mut request = [0u8; 256];
        let n = stream.read(&mut request)?;
        stream.write_all(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nOK",
        )?;
        Ok(String::from_utf8_lossy(&request[..n]).into_owned())
    });
    let answered = ping(
        &DockerEndpoint::Unix(socket.clone()),
        Duration::from_secs(2),
    );
    let request = daemon.join().expect("fake daemon")?;
    assert!(answered);
    assert!(request.starts_with("GET /_ping "), "{request}");

    std::fs::remove_dir_all(&dir).ok();
    assert!(!ping(&DockerEndpoint::Unix(socket), Duration::from_secs(2)));
    Ok(())
}

#[tokio::test]
async fn blocking_work_that_overruns_its_limit_fails_instead_of_hanging() {
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let outcome = blocking(Duration::from_millis(200), "finish stuck work", move || {
        // Stands for a librdkafka call that never returns.
        let _ = stuck.recv();
        Ok(())
    })
    .await;
    let err = outcome.expect_err("the limit is enforced");
    assert!(err.to_string().contains("timed out"), "{err}");
    // The abandoned thread must not hold up the end of the test (its runtime's shutdown); let it go.
    drop(release);
}

#[test]
fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn draws_stay_in_range_and_split_streams_differ() {
    let mut rng = Rng::new(1);
    assert!((0..1000).all(|_| rng.below(7) < 7));
    assert_eq!(rng.seed(), 1);
    let (mut a, mut b) = (rng.split(1), rng.split(2));
    assert_ne!(a.next_u64(), b.next_u64());
}

#[test]
fn random_suffixes_are_sixteen_hex_digits_and_distinct() {
    let names: std::collections::BTreeSet<String> = (0..1000).map(|_| random_suffix()).collect();
    assert_eq!(names.len(), 1000);
    assert!(names
        .iter()
        .all(|n| n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit())));
}
