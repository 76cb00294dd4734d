//! The gateway's side listeners (the control socket, the metrics listener): connections
//! accepted one at a time, at most `at_once` served together (more wait in the listen
//! queue), each by a task of its own, until the gateway stops.

use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::sync::{Semaphore, broadcast};
use tracing::warn;

use super::runtime::Shutdown;

/// Accepts with `accept` and hands each connection to `handle`, `at_once` at most, until
/// `stop`. A failed accept (out of descriptors) is logged and retried after a pause.
pub(super) async fn serve_each<S, A, F, H, Fut>(
    what: &'static str,
    at_once: usize,
    mut accept: A,
    mut stop: broadcast::Receiver<Shutdown>,
    handle: H,
) where
    A: FnMut() -> F,
    F: Future<Output = io::Result<S>>,
    H: Fn(S) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(at_once));
    loop {
        let permit = tokio::select! {
            _ = stop.recv() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            _ = stop.recv() => return,
            accepted = accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let served = handle(stream);
        tokio::spawn(async move {
            let _permit = permit;
            served.await;
        });
    }
}
