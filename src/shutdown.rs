//! The shutdown signal: resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, docker, kill).

use std::future::Future;

/// Install the signal handlers now and return a future that resolves once
/// the process is asked to stop. Call it before announcing readiness: a signal
/// that arrives after the handlers exist is never lost, while one that
/// arrived before would have killed the process the default way.
pub fn listen() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
