//! CPU time spent during a phase, from `/proc`: this process's threads by role, and the PostgreSQL server's
//! processes when the server runs on this machine. On a 2-core machine shared by the worker, the broker and
//! the server, the worker's rate is bound by the CPU its own threads leave to PostgreSQL, so the report
//! gives both per event.
//!
//! `/proc` counts in USER_HZ ticks, which Linux fixes at 100 per second for every architecture's user
//! ABI. A server process that exits during a phase is still counted: the postmaster reaps its backends,
//! so their time is in its children's counters (`cutime`, `cstime`), which are read too.

use std::path::Path;

/// Ticks per second in `/proc/*/stat`.
const USER_HZ: f64 = 100.0;

/// CPU seconds used so far, by role.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSample {
    /// This process's tokio worker threads: the worker's decoding, computing and encoding (and the
    /// ceiling writer's encoding).
    pub worker: f64,
    /// This process's other threads: librdkafka's consumer and producer, the in-process mock broker,
    /// the bench's producer.
    pub other: f64,
    /// Every process named `postgres` (with the time of the children they reaped); 0 for a server on
    /// another machine.
    pub postgres: f64,
}

impl CpuSample {
    /// Now.
    pub fn now() -> Self {
        let mut sample = CpuSample::default();
        for (comm, own, _) in stats(Path::new("/proc/self/task")) {
            if comm == "tokio-rt-worker" {
                sample.worker += own;
            } else {
                sample.other += own;
            }
        }
        sample.postgres = stats(Path::new("/proc"))
            .filter(|(comm, _, _)| comm == "postgres")
            .map(|(_, own, children)| own + children)
            .sum();
        sample
    }

    /// Microseconds per event of each role between `self` (earlier) and `later`.
    pub fn per_event(&self, later: &CpuSample, events: u64) -> CpuPerEvent {
        let per = |a: f64, b: f64| (b - a).max(0.0) * 1e6 / events.max(1) as f64;
        CpuPerEvent {
            worker_us: per(self.worker, later.worker),
            other_us: per(self.other, later.other),
            postgres_us: per(self.postgres, later.postgres),
        }
    }
}

/// CPU microseconds per event, by role (see [`CpuSample`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuPerEvent {
    pub worker_us: f64,
    pub other_us: f64,
    pub postgres_us: f64,
}

/// (command name, own CPU seconds, reaped children's CPU seconds) of every numbered entry under `dir`
/// whose `stat` can be read (processes and threads come and go while it is read).
fn stats(dir: &Path) -> impl Iterator<Item = (String, f64, f64)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
}

/// Parses a `stat` line: `pid (comm) state ppid … utime stime cutime cstime …` (fields 14–17). The name
/// may hold spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<(String, f64, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let tick = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let own = tick(14)? + tick(15)?;
    let children = tick(16)? + tick(17)?;
    Some((comm, own / USER_HZ, children / USER_HZ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_times_even_with_parentheses_in_the_name() {
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 250 50 30 20 20 0 4 0 100 0 0";
        assert_eq!(
            parse_stat(line),
            Some(("tokio (rt) 1".to_string(), 3.0, 0.5))
        );
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
    }

    #[test]
    fn per_event_figures_are_the_differences_in_microseconds() {
        let before = CpuSample {
            worker: 1.0,
            other: 2.0,
            postgres: 3.0,
        };
        let after = CpuSample {
            worker: 1.5,
            other: 2.25,
            postgres: 5.0,
        };
        let per = before.per_event(&after, 10_000);
        assert_eq!(per.worker_us, 50.0);
        assert_eq!(per.other_us, 25.0);
        assert_eq!(per.postgres_us, 200.0);
    }

    #[test]
    fn this_process_is_seen_using_cpu() {
        let total = |s: &CpuSample| s.worker + s.other;
        let before = CpuSample::now();
        let mut x = 0u64;
        // Burns CPU until a tick is counted (bounded, so a system without /proc fails rather than hangs).
        for _ in 0..100_000 {
            for _ in 0..100_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            if total(&CpuSample::now()) > total(&before) {
                return;
            }
        }
        panic!("no CPU time counted after {x} additions");
    }
}
