//! Stop signals: Ctrl-C (SIGINT) and, on Unix, SIGTERM (what systemd,
//! Kubernetes and `timeout` send) and SIGHUP (a closed terminal). They are
//! listened to from the start of a command that sends ([`install`]), so
//! that none kills the process with its default action:
//!
//! - while a job is being prepared (nothing sent, no ledger begun yet), a
//!   signal ends the process at once, exit 3 (unless the command said it
//!   stops by itself between jobs, as `sync` does between files);
//! - while a job runs, the first stops it as the circuit breaker does
//!   (calls in flight are finished and recorded, the ledger ends with
//!   `aborted`, exit 3), through the handler the run registered
//!   ([`Stopper::while_running`]); a second exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What a stop signal does now.
type Handler = Box<dyn Fn(&'static str) + Send>;

/// The process's stop-signal listener.
pub struct Stopper {
    handler: Mutex<Option<Handler>>,
    /// A stop signal came.
    stopped: AtomicBool,
    /// With no run in hand, a signal is only noted (the command stops by
    /// itself, as `sync` does between files), rather than ending the
    /// process.
    stops_by_itself: AtomicBool,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper").finish_non_exhaustive()
    }
}

static STOPPER: OnceLock<Arc<Stopper>> = OnceLock::new();

/// Starts listening (once per process; later calls return the same
/// listener). Must be called within the async runtime.
pub fn install() -> Arc<Stopper> {
    STOPPER
        .get_or_init(|| {
            let stopper = Arc::new(Stopper {
                handler: Mutex::new(None),
                stopped: AtomicBool::new(false),
                stops_by_itself: AtomicBool::new(false),
            });
            match Signals::listen() {
                Ok(signals) => {
                    tokio::spawn(listen(signals, stopper.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "Cannot listen for stop signals."),
            }
            stopper
        })
        .clone()
}

impl Stopper {
    /// While a run goes on: the first signal calls `handler` (the run
    /// stops cleanly); a second exits at once. Until [`Stopper::done`]. A
    /// signal that came before is handled at once.
    pub fn while_running(&self, handler: impl Fn(&'static str) + Send + 'static) {
        // Checked and set under the lock the listener takes: a signal
        // arriving now is either seen here or finds the handler.
        let mut slot = self.handler.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped() {
            drop(slot);
            handler("a stop signal");
            return;
        }
        *slot = Some(Box::new(handler));
    }

    /// Whether a stop signal came.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// The command stops by itself between runs (checking
    /// [`Stopper::stopped`]): a signal with no run in hand is only noted.
    pub fn stops_by_itself(&self) {
        self.stops_by_itself.store(true, Ordering::SeqCst);
    }

    /// The run is over: a signal ends the process again.
    pub fn done(&self) {
        self.handler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

async fn listen(mut signals: Signals, stopper: Arc<Stopper>) {
    let first = signals.next().await;
    let handler = {
        let mut slot = stopper.handler.lock().unwrap_or_else(|e| e.into_inner());
        stopper.stopped.store(true, Ordering::SeqCst);
        slot.take()
    };
    match handler {
        Some(stop) => stop(first),
        None if stopper.stops_by_itself.load(Ordering::SeqCst) => {
            eprintln!("{first}: stopping after what is in hand");
        }
        None => {
            eprintln!("Stopped ({first}): exiting now; nothing was being sent.");
            std::process::exit(i32::from(crate::Exit::Aborted.code()));
        }
    }
    let second = signals.next().await;
    eprintln!("Second stop signal ({second}): exiting now; `retry` resumes from the ledger.");
    std::process::exit(i32::from(crate::Exit::Aborted.code()));
}

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
