//! The `sluice` binary: streaming jobs from a job file, and everyday Kafka tools.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]
#![forbid(unsafe_code)]

mod checkpoint;
mod cli;
mod consume;
mod duration;
mod error;
mod format;
mod generate;
mod job;
mod metrics;
mod offsets;
mod pipeline;
mod produce;
mod run;
mod security;
mod signals;
mod topics;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use cli::{Cli, Command};
use error::CliError;
use sluice_client::{Client, ClientConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    report_events(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return report(&CliError::Failed(format!("starting the runtime: {e}"))),
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Tasks still waiting on the network must not hold the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

async fn dispatch(command: Command) -> error::CliResult {
    match command {
        Command::Run(args) => run::run(args).await,
        Command::Produce(args) => produce::produce(args).await,
        Command::Consume(args) => consume::consume(args).await,
        Command::Topics(args) => topics::topics(args).await,
        Command::Offsets(args) => offsets::offsets(args).await,
        Command::Checkpoint(args) => checkpoint::checkpoint(args),
        Command::Generate(args) => generate::generate(args).await,
    }
}

/// Prints the library crates' events (reconnects, retries, rebalances, data loss, slow syncs) on
/// stderr: warnings by default, more with each -v; RUST_LOG, when set and no -v is given, says
/// which (as env_logger and tracing users write it).
fn report_events(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if verbose == 0 && !directives.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                let _ = writeln!(
                    std::io::stderr(),
                    "sluice: RUST_LOG={directives:?} is not understood ({e}); warnings only"
                );
                tracing_subscriber::EnvFilter::new(level)
            })
        }
        _ => tracing_subscriber::EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn report(error: &CliError) -> ExitCode {
    if let Some(message) = error.message() {
        let _ = writeln!(std::io::stderr(), "sluice: {message}");
    }
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(1))
}

/// Connects to the bootstrap brokers, with the TLS and SASL the flags ask for.
async fn connect(args: &cli::BrokerArgs) -> error::CliResult<Client> {
    let security = security::Security::new(None, &args.security)?;
    let brokers = security.brokers.as_ref().unwrap_or(&args.brokers);
    let mut config = ClientConfig::new(brokers.iter().cloned());
    security.apply(&mut config.connection)?;
    Client::connect(config).await.map_err(|e| match e {
        sluice_client::Error::Tls { .. } | sluice_client::Error::Authentication { .. } => {
            CliError::Failed(e.to_string())
        }
        e => CliError::Failed(format!("{e} (are the brokers {} right and running?)", brokers.join(","))),
    })
}

/// Writes to stdout; a closed pipe (`| head`) is [`CliError::Closed`], which ends the command
/// quietly (exit 0).
fn out(text: &str) -> error::CliResult {
    out_bytes(text.as_bytes())
}

/// [`out`] for bytes, which need not be UTF-8.
fn out_bytes(bytes: &[u8]) -> error::CliResult {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::Closed),
        Err(e) => Err(CliError::Failed(format!("writing to stdout: {e}"))),
    }
}
