//! Where log lines go: the node's own log file always, stderr too with `-v`, so they never scribble
//! over the prompt unless asked to.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;

/// Default filter when `RUST_LOG` is unset: our own events, and only openraft's warnings.
const DEFAULT_FILTER: &str = "info,openraft=warn";

/// Installs the global subscriber. Keep the returned guard alive: dropping it flushes and stops
/// the background writer.
pub fn init(log_file: &Path, verbose: bool) -> std::io::Result<WorkerGuard> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let to_file = fmt::layer()
        .with_ansi(false)
        .with_writer(writer)
        .with_filter(filter());
    let to_stderr = verbose.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(to_file)
        .with(to_stderr)
        .init();
    Ok(guard)
}
