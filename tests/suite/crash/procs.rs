//! The real `cohort` binary as child processes: two `cohort worker`s (no embedded relay, no API) and one
//! `cohort relay`, configured through `COHORT_*` variables, each with its stderr (and stdout) appended to a
//! log file of its own under the run's directory. They are killed with SIGKILL (`Child::start_kill`) and
//! started again; an exit the test did not cause is a failure, reported with the tail of the process's log.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long a killed child may take to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(30);
/// Lines of a child's log printed when the test fails.
pub const TAIL_LINES: usize = 40;

/// What a child runs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// `cohort worker` number `n` (0 or 1).
    Worker(usize),
    /// `cohort relay`.
    Relay,
}

impl Role {
    /// The name used in the log file's name and in messages.
    pub fn name(self) -> String {
        match self {
            Role::Worker(n) => format!("worker-{n}"),
            Role::Relay => "relay".to_owned(),
        }
    }

    fn subcommand(self) -> &'static str {
        match self {
            Role::Worker(_) => "worker",
            Role::Relay => "relay",
        }
    }
}

/// One child process slot: started, killed and restarted many times.
pub struct Proc {
    pub role: Role,
    /// Where its stdout and stderr go (appended across restarts, with a marker line per start).
    pub log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u64,
    /// How many times the test killed it with SIGKILL.
    pub kills: u64,
}

impl Proc {
    fn new(role: Role, dir: &Path) -> Self {
        Self {
            role,
            log: dir.join(format!("{}.log", role.name())),
            child: None,
            starts: 0,
            kills: 0,
        }
    }

    /// Starts the process with `env`, listening on a port the kernel picks when the child binds
    /// (`COHORT_HTTP_LISTEN=127.0.0.1:0`; the suite never calls it). A port found free here and released
    /// before the child binds could be taken in between, by any outgoing connection's ephemeral port.
    pub fn start(&mut self, env: &BTreeMap<String, String>) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "{} is already running",
            self.role.name()
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("failed to open {}", self.log.display()))?;
        writeln!(log, "=== crash suite: start {} ===", self.starts)?;
        let stderr = log.try_clone()?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_cohort"));
        command
            .arg(self.role.subcommand())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .kill_on_drop(true);
        // The child sees only the configuration given here: any other `COHORT_…` variable in the test's
        // environment (such as this suite's own `COHORT_CRASH_…` sizes) would be refused as an unknown key,
        // and `DATABASE_URL` or `RUST_LOG` would change what it does.
        command.env_clear().envs(cohort_testkit::child::inherited());
        command.envs(env);
        command.env("COHORT_HTTP_LISTEN", "127.0.0.1:0");
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {}", self.role.name()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process with SIGKILL and reaps it. Fails if it had already exited on its own.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.check()?;
        let Some(mut child) = self.child.take() else {
            anyhow::bail!("{} is not running", self.role.name());
        };
        // `start_kill` is SIGKILL on Unix: no shutdown path runs, in-flight transactions are abandoned.
        child
            .start_kill()
            .with_context(|| format!("failed to kill {}", self.role.name()))?;
        tokio::time::timeout(REAP_LIMIT, child.wait())
            .await
            .with_context(|| format!("{} did not die within {REAP_LIMIT:?}", self.role.name()))?
            .with_context(|| format!("failed to reap {}", self.role.name()))?;
        self.kills += 1;
        Ok(())
    }

    /// Fails if the process exited without being killed by the test (a crash of its own is a finding).
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                anyhow::bail!(
                    "{} exited on its own with {status}; the end of its log:\n{}",
                    self.role.name(),
                    self.tail(TAIL_LINES)
                );
            }
        }
        Ok(())
    }

    /// Stops the process at the end of a run (SIGKILL too: its work is done and checked from PostgreSQL).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
        }
        Ok(())
    }

    /// How many lines of the process's log (all its runs) contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// The last `lines` lines of the process's log.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The two workers and the relay.
pub struct Cluster {
    /// The configuration every child gets (`COHORT_*`); each listens on `127.0.0.1:0`.
    env: BTreeMap<String, String>,
    pub workers: Vec<Proc>,
    pub relay: Proc,
}

impl Cluster {
    pub fn new(env: BTreeMap<String, String>, dir: &Path, workers: usize) -> Self {
        Self {
            env,
            workers: (0..workers)
                .map(|n| Proc::new(Role::Worker(n), dir))
                .collect(),
            relay: Proc::new(Role::Relay, dir),
        }
    }

    /// The configuration every child gets.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub fn get(&mut self, role: Role) -> &mut Proc {
        match role {
            Role::Worker(n) => &mut self.workers[n],
            Role::Relay => &mut self.relay,
        }
    }

    /// Starts the slot's process (with the relay's settings for the relay).
    pub fn start(&mut self, role: Role) -> anyhow::Result<()> {
        let mut env = self.env.clone();
        if role != Role::Relay {
            for (key, value) in [
                ("COHORT_WORKER_EMBEDDED_RELAY", "false"),
                ("COHORT_WORKER_EMBEDDED_API", "false"),
                // A killed member holds its partitions until its session expires: keep that short (the
                // mock also makes each rebalance last about session.timeout.ms - 1 s). Not shorter: at
                // 1.5 s, a SyncGroup that waited past its timeout (session + 3 s) on this loaded machine was
                // retried, and the mock cluster aborted the test process on an assertion
                // (`rdkafka_mock_cgrp.c: rd_kafka_mock_cgrp_classic_member_sync_set: !member->resp`).
                ("COHORT_KAFKA_PROPERTY__SESSION_TIMEOUT_MS", "2000"),
                ("COHORT_KAFKA_PROPERTY__HEARTBEAT_INTERVAL_MS", "300"),
            ] {
                env.insert(key.into(), value.into());
            }
        }
        self.get(role).start(&env)
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for n in 0..self.workers.len() {
            self.start(Role::Worker(n))?;
        }
        self.start(Role::Relay)
    }

    /// Fails if any process exited on its own.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            worker.check()?;
        }
        self.relay.check()
    }

    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        for worker in &mut self.workers {
            worker.stop().await?;
        }
        self.relay.stop().await
    }

    /// Kills per process, e.g. `worker-0: 71, worker-1: 66, relay: 70`.
    pub fn kill_summary(&self) -> String {
        self.workers
            .iter()
            .chain(std::iter::once(&self.relay))
            .map(|p| format!("{}: {}", p.role.name(), p.kills))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn total_kills(&self) -> u64 {
        self.workers.iter().map(|w| w.kills).sum::<u64>() + self.relay.kills
    }

    /// Lines containing `needle` in all the children's logs.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.workers
            .iter()
            .chain(std::iter::once(&self.relay))
            .map(|p| p.count_lines(needle))
            .sum()
    }

    /// The tail of every child's log, for a failure message.
    pub fn tails(&self) -> String {
        self.workers
            .iter()
            .chain(std::iter::once(&self.relay))
            .map(|p| {
                format!(
                    "--- {} ({}), last {TAIL_LINES} lines ---\n{}",
                    p.role.name(),
                    p.log.display(),
                    p.tail(TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
