//! A private PostgreSQL cluster for a test that stops and restarts its server: created with `initdb` in a
//! folder of its own under the temporary directory, listening on a free port of 127.0.0.1 only (trust
//! authentication), and stopped and removed when dropped — also when the test fails. No other test, and
//! no other client of the machine's servers, ever sees it go down.
//!
//! The newest PostgreSQL installed under `/usr/lib/postgresql/<version>/bin` is used, else the one
//! `pg_config --bindir` names. `initdb` and the server refuse to run as root, so when the tests run as
//! root every command runs as the `postgres` OS user (`runuser -u postgres --`), which owns the folder.
//! [`PrivateCluster::create`] says why it cannot make a cluster ([`Unavailable`]) when there are no
//! binaries or, as root, no `postgres` user; a failure past that point is an error.
//!
//! A test run killed before the guard runs leaves its cluster behind; the next cluster created sweeps
//! every `cohort-pg-*` folder whose owning process is gone (stops its server, removes the folder).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::{blocking, db, random_suffix};

/// Folders of private clusters are named `<temp>/cohort-pg-<random>`.
const FOLDER_PREFIX: &str = "cohort-pg-";
/// Seconds `pg_ctl` waits for a start or a stop.
const PG_CTL_WAIT: &str = "60";
/// Bound on one `initdb` or `pg_ctl` call from async code.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Why no private cluster can be made here (the caller falls back to something else).
#[derive(Debug)]
pub struct Unavailable(pub String);

/// How the PostgreSQL commands are run: directly, or as the `postgres` user when this process is root.
#[derive(Clone, Debug)]
enum Runner {
    Direct,
    AsPostgres { uid: u32, gid: u32 },
}

/// A running private cluster (see the module docs). Dropping it stops the server and removes the folder.
pub struct PrivateCluster {
    control: Control,
}

/// What it takes to run a cluster's commands; cloned onto the threads that run them.
#[derive(Clone, Debug)]
struct Control {
    bin: PathBuf,
    folder: PathBuf,
    runner: Runner,
    port: u16,
}

impl PrivateCluster {
    /// Creates and starts a cluster (blocking work on a thread of its own, bounded).
    pub async fn create() -> anyhow::Result<Result<Self, Unavailable>> {
        blocking(COMMAND_LIMIT, "create a private postgresql cluster", || {
            Self::create_blocking()
        })
        .await
    }

    fn create_blocking() -> anyhow::Result<Result<Self, Unavailable>> {
        let Some(bin) = binaries() else {
            return Ok(Err(Unavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or from \
                 pg_config"
                    .into(),
            )));
        };
        let runner = match runner() {
            Ok(runner) => runner,
            Err(why) => return Ok(Err(why)),
        };
        sweep_abandoned(&bin, &runner);
        let folder = std::env::temp_dir().join(format!("{FOLDER_PREFIX}{}", random_suffix()));
        std::fs::create_dir(&folder)
            .with_context(|| format!("failed to create {}", folder.display()))?;
        // From here on the guard removes the folder, whatever fails next.
        let mut cluster = Self {
            control: Control {
                bin,
                folder,
                runner,
                port: 0,
            },
        };
        cluster.control.init()?;
        cluster.control.start_on_a_free_port()?;
        Ok(Ok(cluster))
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let control = self.control.clone();
        blocking(COMMAND_LIMIT, "stop the private postgresql", move || {
            control.stop_blocking("fast")
        })
        .await
    }

    /// Starts the server again on the same port, waiting until it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        let control = self.control.clone();
        blocking(COMMAND_LIMIT, "start the private postgresql", move || {
            control.start_blocking()
        })
        .await
    }

    /// Stops the server and starts it again (not `pg_ctl restart`, which would send the server's output
    /// to this process instead of the log file).
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start().await
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.control.port
    }

    /// A URL of the `postgres` database, to create and drop test databases.
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            self.control.port
        )
    }

    /// The cluster's folder (data, log and socket).
    pub fn folder(&self) -> &Path {
        &self.control.folder
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let control = &self.control;
        if control.data().join("postmaster.pid").exists() {
            if let Err(err) = control.stop_blocking("immediate") {
                eprintln!("test support: failed to stop the private postgresql: {err:#}");
            }
        }
        if let Err(err) = std::fs::remove_dir_all(&control.folder) {
            eprintln!(
                "test support: failed to remove {}: {err}",
                control.folder.display()
            );
        }
    }
}

impl Control {
    fn data(&self) -> PathBuf {
        self.folder.join("data")
    }

    fn log(&self) -> PathBuf {
        self.folder.join("server.log")
    }

    fn init(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&self.folder, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(
            self.folder.join("owner.pid"),
            std::process::id().to_string(),
        )?;
        if let Runner::AsPostgres { uid, gid } = self.runner {
            for path in [self.folder.clone(), self.folder.join("owner.pid")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("failed to give {} to postgres", path.display()))?;
            }
        }
        let data = self.data();
        self.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // Only 127.0.0.1, a socket in the cluster's own folder, and no fsync (the folder is thrown away).
        let settings = format!(
            "\n# private test cluster\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 100\n",
            self.folder.display()
        );
        self.append_setting(&settings)
    }

    /// Appends to `postgresql.conf` (a later line overrides an earlier one).
    fn append_setting(&self, text: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let path = self.data().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Starts the server on a port found free; another process may take that port before the server
    /// binds it, so a failed start is tried again on another port, a few times.
    fn start_on_a_free_port(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            self.append_setting(&format!("port = {}\n", self.port))?;
            match self.start_blocking() {
                Ok(()) => return Ok(()),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt to start")))
    }

    fn start_blocking(&self) -> anyhow::Result<()> {
        let (data, log) = (self.data(), self.log());
        self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT.as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
            ],
        )
        .map_err(|err| err.context(format!("server log:\n{}", self.log_tail())))
    }

    fn stop_blocking(&self, mode: &str) -> anyhow::Result<()> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                PG_CTL_WAIT.as_ref(),
                "-m".as_ref(),
                mode.as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        )
    }

    /// Runs `<bin>/<program> args` (as `postgres` when this process is root), with only `PATH` and a C
    /// locale in its environment; fails with its output unless it succeeds.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        run(&self.bin, &self.runner, program, args)
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn run(
    bin: &Path,
    runner: &Runner,
    program: &str,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<()> {
    let path = bin.join(program);
    let mut command = match runner {
        Runner::Direct => Command::new(&path),
        Runner::AsPostgres { .. } => {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        }
    };
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    let output = command
        .output()
        .with_context(|| format!("failed to run {}", path.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{program} {} failed ({}): {}{}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The `bin` folder of the newest PostgreSQL with `initdb` and `pg_ctl`.
fn binaries() -> Option<PathBuf> {
    let complete = |bin: &Path| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file();
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| complete(bin))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin);
    newest.or_else(|| {
        let output = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        (output.status.success() && complete(&bin)).then_some(bin)
    })
}

fn runner() -> Result<Runner, Unavailable> {
    let id = |args: &[&str]| -> Option<u32> {
        let output = Command::new("id").args(args).output().ok()?;
        if !output.status.success() {
            return None;
        }
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    if id(&["-u"]) != Some(0) {
        return Ok(Runner::Direct);
    }
    let (Some(uid), Some(gid)) = (id(&["-u", "postgres"]), id(&["-g", "postgres"])) else {
        return Err(Unavailable(
            "running as root, and there is no `postgres` user to run initdb as".into(),
        ));
    };
    if Command::new("runuser").arg("--help").output().is_err() {
        return Err(Unavailable(
            "running as root, and `runuser` is not installed".into(),
        ));
    }
    Ok(Runner::AsPostgres { uid, gid })
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Stops and removes the clusters of test processes that no longer run (killed before their guard ran).
/// Only where `/proc` tells which processes run; a folder without a readable owner is left alone.
fn sweep_abandoned(bin: &Path, runner: &Runner) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(FOLDER_PREFIX)
        {
            continue;
        }
        let folder = entry.path();
        let Some(owner) = std::fs::read_to_string(folder.join("owner.pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let data = folder.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = run(
                bin,
                runner,
                "pg_ctl",
                &[
                    "stop".as_ref(),
                    "-w".as_ref(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-D".as_ref(),
                    data.as_os_str(),
                ],
            );
        }
        if std::fs::remove_dir_all(&folder).is_ok() {
            eprintln!(
                "test support: removed an abandoned private cluster, {}",
                folder.display()
            );
        }
    }
}

/// `pg_postmaster_start_time()` of the server at `admin_url`: changes exactly when the server restarts.
pub async fn server_start_time(admin_url: &str) -> anyhow::Result<String> {
    let mut connection = db::connect(admin_url).await?;
    let started: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&mut connection)
        .await
        .context("failed to read the server's start time")?;
    Ok(started)
}
