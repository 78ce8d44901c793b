//! Errors injected on the Kafka requests cohort makes: Produce on the relay's broker, Fetch on the input
//! leaders, and the consumer group's requests on the coordinator.

use std::time::{Duration, Instant};

use cohort_testkit::faults::{
    advisory_offsets_match, all_processed, errors_served, partitions_owned, push_broker_errors,
    settle_and_check, start_on_mock, Edits, Layout, Load, PATIENCE,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::{errors_served_now, report, settled, under_way};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_retriable_or_not_lose_no_rollout_event_or_dead_letter() -> anyhow::Result<()>
{
    use RDKafkaRespErr::*;
    let started = Instant::now();
    let layout = Layout {
        brokers: 3,
        input: vec![1, 2],
        outputs: 3,
        coordinator: 1,
    };
    let h = start_on_mock(&layout, |_| {}).await?;
    let mut edits = Edits::new(&h).await?;
    let mut load = Load::new(&h, 40, 0x5EED_0005)?;
    load.burst(100).await?;
    under_way(&h).await?;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
        RD_KAFKA_RESP_ERR__TRANSPORT,
        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
        RD_KAFKA_RESP_ERR__TRANSPORT,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    ];
    let faults = push_broker_errors(&h, 3, RDKafkaApiKey::Produce, &errors)?;
    // The release and the edits make rollout events; the poison makes dead letters: all produced by the
    // relay into the errors.
    for _ in 0..3 {
        edits.several(&h, 2).await?;
        load.burst(100).await?;
        load.poison().await?;
    }
    errors_served(&h, 3, RDKafkaApiKey::Produce).await?;
    edits.several(&h, 2).await?;
    load.burst(100).await?;
    let figures = settle_and_check(&h, &load).await?;
    assert!(
        figures.relay_failures > 0,
        "the non-retriable errors failed deliveries, retried by later rounds"
    );
    report("produce errors", faults, started, &figures);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_errors_retriable_or_not_lose_and_repeat_nothing() -> anyhow::Result<()> {
    use RDKafkaRespErr::*;
    let started = Instant::now();
    let layout = Layout {
        brokers: 3,
        input: vec![1, 2],
        outputs: 3,
        coordinator: 3,
    };
    let h = start_on_mock(&layout, |_| {}).await?;
    let mut edits = Edits::new(&h).await?;
    edits.next(&h).await?;
    let mut load = Load::new(&h, 40, 0x5EED_0006)?;
    load.burst(150).await?;
    under_way(&h).await?;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
        RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        RD_KAFKA_RESP_ERR__TRANSPORT,
        RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH,
        RD_KAFKA_RESP_ERR_UNKNOWN,
        RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE,
    ];
    let mut faults = 0;
    for broker in [1, 2] {
        faults += push_broker_errors(&h, broker, RDKafkaApiKey::Fetch, &errors)?;
    }
    for _ in 0..3 {
        load.burst(150).await?;
        edits.several(&h, 2).await?;
        load.poison().await?;
    }
    for broker in [1, 2] {
        errors_served(&h, broker, RDKafkaApiKey::Fetch).await?;
    }
    load.burst(100).await?;
    let figures = settle_and_check(&h, &load).await?;
    report("fetch errors", faults, started, &figures);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_request_errors_lose_nothing_and_leave_kafkas_offsets_right() -> anyhow::Result<()> {
    use RDKafkaRespErr::*;
    let started = Instant::now();
    let layout = Layout {
        brokers: 3,
        input: vec![1, 2],
        outputs: 1,
        coordinator: 3,
    };
    let mut h = start_on_mock(&layout, |_| {}).await?;
    let mut edits = Edits::new(&h).await?;
    edits.next(&h).await?;
    h.add_worker().await?;
    settled(&h, 2).await?;
    let mut load = Load::new(&h, 40, 0x5EED_0007)?;
    load.burst(150).await?;
    under_way(&h).await?;
    let mut faults = 0;
    faults += push_broker_errors(
        &h,
        3,
        RDKafkaApiKey::OffsetCommit,
        &[
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
            RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
            RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        ],
    )?;
    faults += push_broker_errors(
        &h,
        3,
        RDKafkaApiKey::Heartbeat,
        &[
            RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
            RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID,
        ],
    )?;
    faults += push_broker_errors(
        &h,
        3,
        RDKafkaApiKey::JoinGroup,
        &[RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS],
    )?;
    faults += push_broker_errors(
        &h,
        3,
        RDKafkaApiKey::SyncGroup,
        &[RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS],
    )?;
    for _ in 0..3 {
        load.burst(150).await?;
        edits.several(&h, 2).await?;
        load.poison().await?;
    }
    for api in [
        RDKafkaApiKey::OffsetCommit,
        RDKafkaApiKey::Heartbeat,
        RDKafkaApiKey::JoinGroup,
        RDKafkaApiKey::SyncGroup,
    ] {
        // Each commit, heartbeat, join and sync consumes one; keep the stream going until all are.
        let served = async {
            loop {
                if errors_served_now(&h, api)? {
                    return anyhow::Ok(());
                }
                load.burst(20).await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        cohort_testkit::within(PATIENCE, &format!("every {api:?} error is served"), served).await?;
    }
    partitions_owned(&h, 2).await?;
    load.burst(100).await?;
    let figures = settle_and_check(&h, &load).await?;
    advisory_offsets_match(&h).await?;

    // The last commit of a stream fails (a permanent error, not retried by the client): Kafka's copy
    // of the positions must still catch up, though no later batch changes them.
    faults += push_broker_errors(
        &h,
        3,
        RDKafkaApiKey::OffsetCommit,
        &[RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    )?;
    load.burst(20).await?;
    all_processed(&h, &load).await?;
    errors_served(&h, 3, RDKafkaApiKey::OffsetCommit).await?;
    advisory_offsets_match(&h).await?;
    report("group request errors", faults, started, &figures);
    h.stop().await
}
