//! What a gateway does differently when it shares its sessions with others through the
//! Redis store (docs/gateway.md, "A cluster: the Redis store"): leases taken in the store
//! before an address is offered, sessions adopted from the store on resume, copies dropped
//! when another gateway takes a session, and host routes for the sessions connected here.
//! With the embedded store every function here is the single gateway's plain behaviour.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Lease,
    redis_store::Claim,
    runtime::Ctx,
    store::{CookieKey, StoredSession},
    table::{Moment, Resumable},
};
use crate::sys::netconf::{Netlink, Route, Via};

/// What a client is told when the store cannot decide its login or resume.
pub(super) const STORE_UNAVAILABLE: &str =
    "The session store is unavailable. Try again in a moment.";

/// The longest an address another gateway holds stays taken in the local pool before it is
/// tried again (its lease's own expiry when sooner; a lease without one is held this long).
const FOREIGN_HOLD: Duration = Duration::from_secs(600);

/// Addresses tried for one login before it is refused (each held by another gateway; one
/// round trip to Redis each). Addresses found held stay out of the local pool meanwhile, so
/// the next login does not try them again.
const CLAIM_TRIES: usize = 4096;

/// An address for a new login's session `key`: from the realm's pool, and in a cluster
/// taken in the store too. Err: what the client is told.
pub(super) async fn lease_for_login(
    ctx: &Ctx,
    realm: &str,
    key: &CookieKey,
) -> Result<Lease, &'static str> {
    for _ in 0..CLAIM_TRIES {
        let Ok(Ok(lease)) = ctx.pool.lock().map(|mut p| p.allocate(realm)) else {
            warn!(%realm, "address pool exhausted");
            return Err("No address available");
        };
        let Some(shared) = ctx.store.shared() else {
            return Ok(lease);
        };
        match shared.claim(key, &lease).await {
            Ok(Claim::Taken) => return Ok(lease),
            Ok(Claim::Held(remaining)) => {
                debug!(ipv4 = %lease.ipv4, "address held by another gateway: trying the next");
                let hold = remaining.map_or(FOREIGN_HOLD, |r| r.min(FOREIGN_HOLD));
                if let Ok(mut foreign) = ctx.foreign.lock() {
                    foreign.push((lease, Instant::now() + hold));
                }
            }
            Err(e) => {
                if let Ok(mut pool) = ctx.pool.lock() {
                    pool.release(&lease);
                }
                warn!(error = %e, "login refused: no address can be leased without the session store");
                return Err(STORE_UNAVAILABLE);
            }
        }
    }
    warn!(%realm, tries = CLAIM_TRIES, "login refused: every address tried is held by another gateway");
    Err("No address available")
}

/// Gives back to the local pool the addresses other gateways held a while ago, so they are
/// tried again.
pub(super) fn release_foreign(ctx: &Ctx, now: Instant) {
    let Ok(mut foreign) = ctx.foreign.lock() else {
        return;
    };
    let Ok(mut pool) = ctx.pool.lock() else {
        return;
    };
    foreign.retain(|(lease, until)| {
        let due = now >= *until;
        if due {
            pool.release(lease);
        }
        !due
    });
}

/// A session another gateway held (its record taken from the store): resumable here with
/// its address, once the address is this gateway's in its pool and in the store.
pub(super) async fn adopt(ctx: &Ctx, record: &StoredSession) -> Option<Resumable> {
    let lease = record.lease();
    let claimed = {
        let mut pool = ctx.pool.lock().ok()?;
        // An address tried for a login while the other gateway held it is taken locally
        // already: it is this session's.
        if let Ok(mut foreign) = ctx.foreign.lock()
            && let Some(i) = foreign.iter().position(|(l, _)| *l == lease)
        {
            foreign.swap_remove(i);
            pool.release(&lease);
        }
        pool.claim(&record.realm, &lease)
    };
    if let Err(e) = claimed {
        warn!(user = %record.user, ipv4 = %record.ipv4, error = %e, "resume refused: the session's address is not this gateway's to give");
        return None;
    }
    let confirmed = match ctx.store.shared() {
        Some(shared) => shared.claim(&record.key, &lease).await,
        None => Ok(Claim::Taken),
    };
    if !matches!(confirmed, Ok(Claim::Taken)) {
        if let Ok(mut pool) = ctx.pool.lock() {
            pool.release(&lease);
        }
        warn!(user = %record.user, ipv4 = %record.ipv4, outcome = ?confirmed, "resume refused: the session's address could not be confirmed in the store");
        return None;
    }
    let now = Moment::now();
    let config = &ctx.settings().config;
    let window_end = now.at + config.idle_timeout.unwrap_or(config.session_lifetime);
    info!(user = %record.user, ipv4 = %record.ipv4, "session taken over from the cluster");
    Some(Resumable::restored(record, now, window_end))
}

/// Drops this gateway's copy of the session `key` (another gateway took it over, or it
/// ended there) without touching the store: a connection of it is closed, its address
/// given back to the local pool.
pub(super) fn drop_local_copy(ctx: &Ctx, key: &CookieKey) {
    if let Some(shared) = ctx.store.shared() {
        shared.forget(key);
    }
    if let Some(r) = ctx.table.remove_parked(key) {
        if let Ok(mut pool) = ctx.pool.lock() {
            pool.release(&r.lease);
        }
        info!(user = %r.user, "parked session held by another gateway now: dropped here");
        return;
    }
    if let Some(live) = ctx.table.live_by_key(key) {
        // Its task ends as superseded: no store write, no release; done here.
        live.superseded
            .store(true, std::sync::atomic::Ordering::Relaxed);
        live.wake.notify_one();
        ctx.table.remove(&live);
        route_session(ctx, &live.lease, false);
        if let Ok(mut pool) = ctx.pool.lock() {
            pool.release(&live.lease);
        }
        info!(user = %live.user, "session ended or taken over by another gateway: connection closed here");
    }
}

/// Drops the copies of the sessions the store says this gateway no longer holds.
pub(super) async fn follow_lost(ctx: Arc<Ctx>, mut lost: mpsc::UnboundedReceiver<CookieKey>) {
    while let Some(key) = lost.recv().await {
        drop_local_copy(&ctx, &key);
    }
}

/// In a cluster, routes the session's addresses to this gateway's TUN device while it is
/// connected here (`add`), or stops (gateways on one host may share a pool).
pub(super) fn route_session(ctx: &Ctx, lease: &Lease, add: bool) {
    if ctx.store.shared().is_none() {
        return;
    }
    let result = Netlink::open().and_then(|mut nl| {
        for a in lease.addrs() {
            let route = Route {
                dst: a.into(),
                via: Via::Dev(ctx.tun_index),
                metric: None,
                mtu: None,
            };
            if add {
                nl.route_replace(&route)?;
            } else if let Err(e) = nl.route_del(&route) {
                // Gone with the device, or replaced by another gateway's on this host.
                debug!(%a, error = %e, "no host route to delete");
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        warn!(ipv4 = %lease.ipv4, error = %e, "the session's host route could not be added: its packets from the network do not reach it");
    }
}
