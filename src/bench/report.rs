//! `cohort bench`'s report: what each phase measured, the goals met or not, and the report as text (the
//! same fields are printed as JSON with `--json`).

use std::fmt::Write as _;

use serde::Serialize;

use super::ceiling::CeilingReport;
use super::changes::{Change, ChangesReport, LISTING_PAGE};
use super::cpu;
use super::server::ServerActivity;
use super::verify::Correctness;
use crate::synthetic::fleet::Mix;
use crate::synthetic::seed::SeedReport;

/// The goals the benchmark checks (BENCHMARKS.md, "Goals").
const GOAL_CEILING_SHARE: f64 = 0.70;
const GOAL_P99_MS: u64 = 250;
const GOAL_BYTES_PER_DEVICE: f64 = 1024.0;
const GOAL_PEAK_BYTES_PER_DEVICE: f64 = 1200.0;

/// Everything measured, and the check.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub broker: String,
    pub partitions: i32,
    /// What the events changed (`--mix`).
    pub mix: Mix,
    /// Whether a rollout was under way (`--rollout`): every device targeted by a release keeping progress.
    pub rollout: bool,
    pub cpus: usize,
    /// `/proc/loadavg`'s one-minute figure when the run started and ended (the machine is shared).
    pub load_average_start: f64,
    pub load_average_end: f64,
    /// The PostgreSQL settings that pace its writes (checkpoints, WAL volume, commit flushes), as a
    /// session of the worker sees them: the benchmark changes no server setting; `wal_compression` is
    /// the session's own (`--wal-compression`, as the worker's `database.wal_compression`).
    pub postgres_settings: String,
    /// `backend_flush_after` of a caught-up partition's batches, in kB (0: never set).
    pub caught_up_flush_after_kb: u32,
    pub seed: SeedReport,
    pub load: LoadReport,
    pub throughput: ThroughputReport,
    pub latency: LatencyReport,
    /// The database server's WAL, checkpoints and backend writes during the throughput and the latency
    /// phase (`None` where the server does not offer its counters).
    pub server_throughput: Option<ServerActivity>,
    pub server_latency: Option<ServerActivity>,
    /// The process's peak resident memory from the end of the load to the worker's stop (`VmHWM`, reset
    /// once the partitions are loaded), the in-process broker's retained messages included.
    pub peak_rss_bytes: u64,
    /// The API's reads, previews and group changes under events at the paced rate (`None` with
    /// `--skip-changes`).
    pub changes: Option<ChangesReport>,
    pub ceiling: CeilingReport,
    /// Sustained rate ÷ the one-connection ceiling.
    pub share_of_one_connection: f64,
    /// Sustained rate ÷ the one-connection-per-partition ceiling.
    pub share_of_many_connections: f64,
    pub goals: Goals,
    pub correctness: Correctness,
    pub seconds: f64,
}

/// Loading the partitions.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub seconds: f64,
    pub devices: usize,
    /// Resident memory just before the worker started, and once it held every device.
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub bytes_per_device: f64,
}

impl LoadReport {
    /// Resident memory `rss` less what the process held before the worker started, per device.
    pub fn per_device(&self, rss: u64) -> f64 {
        rss.saturating_sub(self.rss_before_bytes) as f64 / self.devices.max(1) as f64
    }
}

/// The sustained rate.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    pub events: usize,
    /// Time to produce them all.
    pub produce_seconds: f64,
    /// Events committed between 10% and 90% of the phase, and how long that took.
    pub window_events: u64,
    pub window_seconds: f64,
    pub events_per_second: f64,
    /// All events ÷ the time from the first produce to the last commit.
    pub overall_events_per_second: f64,
    pub batches: u64,
    /// Of those, the batches computed while an earlier batch of their partition was committing.
    pub batches_pipelined: u64,
    /// Of those, the batches of a caught-up partition (written with `backend_flush_after`).
    pub batches_caught_up: u64,
    /// CPU per event over the whole phase: the worker's threads, this process's others (Kafka clients,
    /// mock broker, producer) and the PostgreSQL server's processes (when on this machine).
    pub cpu: cpu::CpuPerEvent,
    /// Membership log rows written per event over the phase (one per membership change), from the log's
    /// highest id before and after, to set beside the ceiling's: the ceiling's events come later in the
    /// stream, and this shows whether they were as heavy as the worker's.
    pub log_rows_per_event: Option<f64>,
    /// Resident memory once the phase's events are committed, and how many distinct devices the events
    /// reached by then (a heartbeat or realistic stream reaches every device once `--events` is at least
    /// `--devices`; a churn stream picks devices at random).
    pub rss_after_bytes: u64,
    pub devices_reported: usize,
}

/// Latency at the paced rate (half the sustained rate unless `--rate`).
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub events: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Where the latency went: p50, p99 and max of each stage over the same period.
    pub stages: Vec<StageReport>,
    /// Events produced at the same rate before the measurement, and for how long.
    pub warmup_events: usize,
    pub warmup_seconds: u64,
    /// p99 of the events committed in each 10 seconds of the phase, warm-up included (ms; `None` for a
    /// window in which nothing committed).
    pub window_p99_ms: Vec<Option<u64>>,
    /// Batches committed in the phase, and how many of them were a caught-up partition's.
    pub batches: u64,
    pub batches_caught_up: u64,
}

/// One stage of the latency ([`crate::worker::Stages`]).
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub stage: &'static str,
    pub unit: &'static str,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// The benchmark's goals, met or not.
#[derive(Clone, Debug, Serialize)]
pub struct Goals {
    /// Sustained rate ≥ 70% of the minimal writer's best ceiling.
    pub throughput: bool,
    /// p99 < 250 ms at the paced rate.
    pub latency: bool,
    /// Less than 1 KiB resident per device once loaded.
    pub memory: bool,
    /// Less than 1 KiB resident per device once every device has reported (`None` when the throughput
    /// phase's events did not reach every device).
    pub memory_reported: Option<bool>,
    /// Less than 1,200 B resident per device at the peak from the load to the stop (group changes
    /// included).
    pub memory_peak: bool,
}

impl Goals {
    /// The goals judged on the measured figures.
    pub fn judge(
        throughput: &ThroughputReport,
        latency: &LatencyReport,
        load: &LoadReport,
        ceiling: &CeilingReport,
        peak_rss_bytes: u64,
    ) -> Self {
        let best = ceiling.one_connection.max(ceiling.many_connections);
        Self {
            throughput: throughput.events_per_second >= GOAL_CEILING_SHARE * best,
            latency: latency.p99_ms < GOAL_P99_MS,
            memory: load.bytes_per_device < GOAL_BYTES_PER_DEVICE,
            memory_reported: (throughput.devices_reported >= load.devices)
                .then(|| load.per_device(throughput.rss_after_bytes) < GOAL_BYTES_PER_DEVICE),
            memory_peak: load.per_device(peak_rss_bytes) < GOAL_PEAK_BYTES_PER_DEVICE,
        }
    }
}

pub(super) fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn mark(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// The report as text.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let c = &r.correctness;
    let _ = writeln!(
        s,
        "cohort bench: {} devices, {} orgs, {} dynamic groups ({} time-dependent, {} site-scoped), {} partitions, {} events{}",
        thousands(r.seed.devices as f64),
        r.seed.orgs,
        thousands(r.seed.groups as f64),
        r.seed.time_dependent_groups,
        r.seed.site_scoped_groups,
        r.partitions,
        r.mix.name(),
        if r.rollout {
            ", a rollout under way (every device targeted by a release keeping progress)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "broker: {}; {} CPUs; load average {:.1} at the start, {:.1} at the end; {:.0} s in all",
        r.broker, r.cpus, r.load_average_start, r.load_average_end, r.seconds
    );
    let _ = writeln!(s, "postgres: {}", r.postgres_settings);
    let _ = writeln!(
        s,
        "seeded in {:.1} s: {} memberships ({:.1} per device)",
        r.seed.seconds,
        thousands(r.seed.memberships as f64),
        r.seed.memberships as f64 / r.seed.devices as f64
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| measure | value | goal |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| sustained throughput (10–90% of {} events) | {} events/s | |",
        thousands(r.throughput.events as f64),
        thousands(r.throughput.events_per_second)
    );
    let _ = writeln!(
        s,
        "| ceiling, minimal writer, 1 connection | {} events/s | |",
        thousands(r.ceiling.one_connection)
    );
    let _ = writeln!(
        s,
        "| ceiling, minimal writer, {} connections | {} events/s | |",
        r.ceiling.connections,
        thousands(r.ceiling.many_connections)
    );
    let _ = writeln!(
        s,
        "| worker ÷ ceiling | {:.0}% of 1 connection, {:.0}% of {} | ≥ 70% of the best: {} |",
        r.share_of_one_connection * 100.0,
        r.share_of_many_connections * 100.0,
        r.ceiling.connections,
        mark(r.goals.throughput)
    );
    let _ = writeln!(
        s,
        "| latency, produce → commit, at {} events/s | p50 {} ms, p99 {} ms, max {} ms | p99 < 250 ms: {} |",
        thousands(r.latency.achieved_rate),
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.max_ms,
        mark(r.goals.latency)
    );
    let windows: Vec<String> = r
        .latency
        .window_p99_ms
        .iter()
        .map(|p| p.map_or("–".to_owned(), |ms| ms.to_string()))
        .collect();
    let _ = writeln!(
        s,
        "| — after a warm-up of {} s ({} events); p99 of each 10 s from the warm-up's start | {} ms | |",
        r.latency.warmup_seconds,
        thousands(r.latency.warmup_events as f64),
        windows.join(", ")
    );
    for stage in &r.latency.stages {
        let _ = writeln!(
            s,
            "| — {} | p50 {} {unit}, p99 {} {unit}, max {} {unit} | |",
            stage.stage,
            stage.p50,
            stage.p99,
            stage.max,
            unit = stage.unit
        );
    }
    let _ = writeln!(
        s,
        "| resident memory per device held | {} B | < 1,024 B: {} |",
        thousands(r.load.bytes_per_device),
        mark(r.goals.memory)
    );
    match r.goals.memory_reported {
        Some(met) => {
            let _ = writeln!(
                s,
                "| — once every device has reported | {} B | < 1,024 B: {} |",
                thousands(r.load.per_device(r.throughput.rss_after_bytes)),
                mark(met)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "| — after the throughput phase ({} of {} devices reported) | {} B | |",
                thousands(r.throughput.devices_reported as f64),
                thousands(r.load.devices as f64),
                thousands(r.load.per_device(r.throughput.rss_after_bytes)),
            );
        }
    }
    let _ = writeln!(
        s,
        "| — at the peak from the load to the stop (VmHWM: {} MiB, in-process broker included) | {} B | < 1,200 B: {} |",
        thousands(r.peak_rss_bytes as f64 / 1_048_576.0),
        thousands(r.load.per_device(r.peak_rss_bytes)),
        mark(r.goals.memory_peak)
    );
    let _ = writeln!(
        s,
        "| partition load | {} devices in {:.1} s | |",
        thousands(r.load.devices as f64),
        r.load.seconds
    );
    if let Some(changes) = &r.changes {
        let _ = writeln!(s);
        render_changes(changes, &mut s);
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "ceiling's writes per event: {:.2} device rows, {:.2} membership inserts/deletes, {:.2} log rows; {} batches per ceiling run{}",
        r.ceiling.device_rows_per_event,
        r.ceiling.membership_writes_per_event,
        r.ceiling.log_rows_per_event,
        r.ceiling.batches,
        r.throughput
            .log_rows_per_event
            .map(|l| format!("; the throughput phase wrote {l:.2} log rows per event"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "throughput phase: produced in {:.1} s; {:.0} events/s overall; {} batches, {} of them computed while their partition's previous batch committed, {} caught up",
        r.throughput.produce_seconds,
        r.throughput.overall_events_per_second,
        r.throughput.batches,
        r.throughput.batches_pipelined,
        r.throughput.batches_caught_up
    );
    let (w, wc) = (&r.throughput.cpu, &r.ceiling.cpu_many_connections);
    let _ = writeln!(
        s,
        "CPU per event (µs): throughput phase: worker threads {:.1}, Kafka clients, mock broker and producer {:.1}, PostgreSQL {:.1}; ceiling with {} connections: writer {:.1}, PostgreSQL {:.1}",
        w.worker_us,
        w.other_us,
        w.postgres_us,
        r.ceiling.connections,
        wc.worker_us,
        wc.postgres_us
    );
    let _ = writeln!(
        s,
        "latency phase: {} batches, {} of them caught up (written with backend_flush_after={} kB; 0: never set)",
        r.latency.batches, r.latency.batches_caught_up, r.caught_up_flush_after_kb
    );
    let one = "the ceiling with 1 connection";
    let many = format!("the ceiling with {} connections", r.ceiling.connections);
    for (phase, activity) in [
        ("the throughput phase", &r.server_throughput),
        ("the latency phase", &r.server_latency),
        (many.as_str(), &r.ceiling.server_many_connections),
        (one, &r.ceiling.server_one_connection),
    ] {
        if let Some(activity) = activity {
            let _ = writeln!(s, "postgres during {phase}: {}", activity.describe());
        }
    }
    let _ = writeln!(
        s,
        "check ({}): {} of {} events committed, stored offsets add up to {}; {} devices checked: {} wrong sequences, {} misplaced, {} re-homed; memberships {} stored, {} expected ({} missing, {} extra); log {} rows, {} repeats, {} disagreements; {} groups with a wrong member count; {} group changes whose settled deviceCount differed from their memberships",
        if c.ok() { "passed" } else { "FAILED" },
        thousands(c.records_committed as f64),
        thousands(c.events_produced as f64),
        thousands(c.stored_offsets as f64),
        thousands(c.devices_checked as f64),
        c.wrong_sequence,
        c.misplaced,
        c.rehomed,
        thousands(c.memberships_stored as f64),
        thousands(c.memberships_expected as f64),
        c.memberships_missing,
        c.memberships_extra,
        thousands(c.log_rows as f64),
        c.log_repeats,
        c.log_disagreements,
        c.wrong_counts,
        c.changes_wrong_counts
    );
    s.trim_end().to_string()
}

/// The group-changes phase as a section of the text report.
fn render_changes(c: &ChangesReport, s: &mut String) {
    let n = thousands;
    let _ = writeln!(
        s,
        "group changes and reads in {} ({} devices), with events at {} events/s (asked: {}):",
        c.org_id,
        n(c.org_devices as f64),
        n(c.achieved_rate),
        n(c.target_rate)
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "| measure | value |");
    let _ = writeln!(s, "|---|---|");
    let _ = writeln!(
        s,
        "| GET a dynamic group (with its deviceCount) | {} |",
        c.group_reads.describe()
    );
    let listed = if c.listed < LISTING_PAGE {
        format!(
            " (the org has {} groups: the page held {})",
            c.org_groups, c.listed
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "| GET a page of {LISTING_PAGE} groups{listed} | {} |",
        c.listings.describe()
    );
    let p = &c.previews;
    let share = |count: u64| 100.0 * count as f64 / c.org_devices.max(1) as f64;
    let _ = writeln!(
        s,
        "| preview, one field: {} matched ({:.1}%) | {} |",
        n(p.one_field_matched as f64),
        share(p.one_field_matched),
        p.one_field.describe()
    );
    let _ = writeln!(
        s,
        "| preview, five fields in nested AND/OR: {} matched ({:.1}%) | {} |",
        n(p.five_fields_matched as f64),
        share(p.five_fields_matched),
        p.five_fields.describe()
    );
    let _ = writeln!(
        s,
        "| {} one-field previews at once | {:.0} ms until the last answer: {} answered 200, {} refused 429, {} other |",
        p.concurrent, p.concurrent_wall_ms, p.concurrent_answered, p.concurrent_refused, p.concurrent_other
    );
    let r = &c.release_dry_run;
    let _ = writeln!(
        s,
        "| release dry run ({}) to the created group | {:.1} ms: {} examined, {} would change target, {} would download |",
        r.version,
        r.ms,
        n(r.examined as f64),
        n(r.changed as f64),
        n(r.impacted as f64)
    );
    let members = |c: &Change| n(c.memberships as f64);
    for (what, change) in [
        (
            format!(
                "create a group matching {} devices ({:.1}%)",
                members(&c.create),
                share(c.create.memberships as u64)
            ),
            &c.create,
        ),
        (
            format!(
                "edit its filter: {} → {} members",
                members(&c.create),
                members(&c.edit)
            ),
            &c.edit,
        ),
        ("delete it".to_owned(), &c.delete),
    ] {
        let ms = |v: Option<u64>| v.map_or("–".to_owned(), |v| v.to_string());
        let _ = writeln!(
            s,
            "| {what} | answered in {:.1} ms, settled in {:.2} s; deviceCount {}, {} membership rows ({}); {} events committed meanwhile: p50 {} ms, p99 {} ms, max {} ms (the second before: p50 {} ms, p99 {} ms); longest without a commit {:.0} ms |",
            change.request_ms,
            change.settle_seconds,
            change
                .device_count
                .map_or("– (gone)".to_owned(), |count| n(count as f64)),
            members(change),
            if change.counts_agree() { "equal" } else { "NOT equal" },
            n(change.events as f64),
            ms(change.p50_ms),
            ms(change.p99_ms),
            ms(change.max_ms),
            ms(change.before_p50_ms),
            ms(change.before_p99_ms),
            change.longest_gap_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }
}
