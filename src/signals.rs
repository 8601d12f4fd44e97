//! Stop signals: Ctrl-C (SIGINT) and, on Unix, SIGTERM (what systemd,
//! Kubernetes and `timeout` send) and SIGHUP (a closed terminal). The first
//! stops a run as the circuit breaker does (calls in flight are finished
//! and recorded, the ledger ends with `aborted`, exit 3); a second exits at
//! once.

/// Which signals are listened to, set up once.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening (from now on these signals no longer kill the
    /// process by default). Where a handler cannot be installed, that
    /// signal keeps its default action.
    pub fn listen() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Waits for the next stop signal; its name (`Ctrl-C`, `SIGTERM`,
    /// `SIGHUP`).
    pub async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => "Ctrl-C",
                    Err(_) => std::future::pending().await,
                },
                _ = self.term.recv() => "SIGTERM",
                _ = self.hup.recv() => "SIGHUP",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}
