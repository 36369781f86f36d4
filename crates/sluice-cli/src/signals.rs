//! SIGINT and SIGTERM, alike for every long-running command: the first asks the command to
//! stop in good order (deliver what it sent, commit what it printed, leave its group); a second
//! ends the process at once with status 130. `kill`, `timeout`, systemd and container stops send
//! SIGTERM, Ctrl-C sends SIGINT: both get the same orderly stop.

use std::io::Write as _;

/// Completes at the first SIGINT or SIGTERM received after it is first polled; from then on a
/// second one exits the process at once (status 130). Never completes if the handlers cannot be
/// installed.
pub async fn stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = writeln!(std::io::stderr(), "sluice: a second signal: exiting at once");
        std::process::exit(130);
    });
}
