//! What the process tells its operator on standard error: logging set-up (`tracing`, filtered by `RUST_LOG`,
//! default `info`; interactive commands such as `cohort demo` default to `warn` so their own output stays
//! readable) and how a failed command is reported (once, plainly, each cause once, and a database failure
//! naming the server it tried).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::store::StoreError;

/// Installs the global `tracing` subscriber with `default` as the filter unless `RUST_LOG` is set; a second
/// call is a no-op. Colours only when standard error is a terminal (and `NO_COLOR` is not set): a log file
/// or a pipe gets plain text.
pub fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours_on_stderr())
        .try_init();
}

/// Whether standard error is a terminal that may get colours.
fn colours_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A failed command's error as one line of text (more only if a message has lines of its own): the
/// outermost message, then each cause, separated by `: `, each shown once.
///
/// Libraries often repeat their source's text in their own message (`database unavailable: error
/// communicating with database: Connection refused` over `error communicating with database: Connection
/// refused` over `Connection refused`), so printing the chain as it is repeats the root cause once per
/// level. Here a message that ends with a later cause's text keeps only its own part, and a cause whose
/// text was already shown is left out.
pub fn render_error(error: &anyhow::Error) -> String {
    let messages: Vec<String> = error.chain().map(ToString::to_string).collect();
    render_chain(&messages)
}

fn render_chain(messages: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let message = message.trim();
        if message.is_empty() || parts.iter().any(|p| p.contains(message)) {
            continue;
        }
        let own = messages[i + 1..]
            .iter()
            .map(|later| later.trim())
            .filter(|later| !later.is_empty() && later.len() < message.len())
            .find_map(|later| message.strip_suffix(later))
            .map_or(message, |head| {
                head.trim_end_matches([':', ' ', '\n', '\t'])
            });
        if !own.is_empty() {
            parts.push(own);
        }
    }
    parts.join(": ")
}

/// Where a PostgreSQL URL (or key=value connection string) points: `host:port`, or the Unix socket's path;
/// never the user, password or database. `None` if it cannot be parsed.
pub fn database_address(url: &str) -> Option<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    let port = options.get_port();
    Some(match options.get_socket() {
        Some(dir) => format!("{}", dir.join(format!(".s.PGSQL.{port}")).display()),
        None => {
            let host = options.get_host();
            if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    })
}

/// How to name the server of `url` in a message: its address, or the URL with its password hidden.
pub fn database_label(url: &str) -> String {
    database_address(url).unwrap_or_else(|| crate::config::redact_database_url(url))
}

/// A database failure for the operator: a connection that could not be made says so and names the address
/// it tried (`cannot connect to PostgreSQL at 127.0.0.1:5432: Connection refused (os error 111)`); other
/// failures name the server too.
pub fn database_error(url: &str, error: StoreError) -> anyhow::Error {
    let at = database_label(url);
    match error {
        StoreError::Transient(sqlx::Error::Io(io)) => {
            anyhow::Error::new(io).context(format!("cannot connect to PostgreSQL at {at}"))
        }
        StoreError::Transient(other) => {
            anyhow::Error::new(other).context(format!("cannot reach PostgreSQL at {at}"))
        }
        other => anyhow::Error::new(other).context(format!("PostgreSQL at {at}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(messages: &[&str]) -> String {
        render_chain(&messages.iter().map(|m| m.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_cause_repeated_by_each_level_appears_once() {
        assert_eq!(
            chain(&[
                "database unavailable: error communicating with database: Connection refused (os error 111)",
                "error communicating with database: Connection refused (os error 111)",
                "Connection refused (os error 111)",
            ]),
            "database unavailable: error communicating with database: Connection refused (os error 111)"
        );
    }

    #[test]
    fn distinct_causes_are_all_shown_in_order() {
        assert_eq!(
            chain(&[
                "failed to apply migrations",
                "migration failed",
                "pool timed out"
            ]),
            "failed to apply migrations: migration failed: pool timed out"
        );
    }

    #[test]
    fn a_cause_already_shown_inside_a_message_is_left_out() {
        assert_eq!(
            chain(&[
                "the worker stopped (Connection reset by peer) while starting",
                "Connection reset by peer"
            ]),
            "the worker stopped (Connection reset by peer) while starting"
        );
    }

    #[test]
    fn lines_of_a_message_are_kept_as_lines() {
        let out = chain(&["no PostgreSQL answers.\nStart one, then run again"]);
        assert_eq!(out, "no PostgreSQL answers.\nStart one, then run again");
        assert!(!out.contains("\\n"));
    }

    #[test]
    fn a_connection_refused_names_the_address_once_and_never_the_password() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = database_error(
            "postgres://cohort:s3cret@127.0.0.1:1/cohort",
            StoreError::Transient(sqlx::Error::Io(io)),
        );
        let text = render_error(&error);
        assert_eq!(
            text,
            "cannot connect to PostgreSQL at 127.0.0.1:1: Connection refused"
        );
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn addresses_name_host_and_port_only() {
        assert_eq!(
            database_address("postgres://u:pw@db.example:6543/x").as_deref(),
            Some("db.example:6543")
        );
        assert_eq!(
            database_address("postgres://u:pw@[::1]:5433/x").as_deref(),
            Some("[::1]:5433")
        );
        assert!(!database_label("not a url at all: pw").contains("pw"));
    }
}
