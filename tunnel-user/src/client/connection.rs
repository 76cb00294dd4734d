//! One VPN connection, from first login to sign-out: the daemon's [`Handle`] on it, and the
//! reconnect loop that runs its sessions (`super::session`) one after another.
//!
//! ```text
//!  spawn ─▶ session ─▶ Done ─────────────────────────────────▶ end (tunnel down, event)
//!             ▲  │ ─▶ Failed ──────────────────────────────────▶ end, status Failed
//!             │  │ ─▶ Suspended ─▶ tunnel down ─▶ wait for Resume
//!             │  └──▶ Lost ─▶ back-off (gives up after disconnectTimeoutInSeconds)
//!             └──────── next URL, DSID resume ◀─┘
//! ```
//!
//! Which URL comes next is `super::walk`'s: after a lost session the one that was
//! connected, then the list; after a failed attempt the list's next, at once, until a
//! round is over (then a back-off). A certificate refused by one gateway moves on to the
//! next; a round in which every gateway's certificate was refused fails the connection.
//!
//! The tunnel stays in place while the connection reconnects: tunnelled traffic keeps
//! going into the TUN device and waits (or is dropped) instead of leaking onto the LAN.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use tunnel_config::EventKind;

use super::{
    Emit,
    backoff::{AfterLoss, Backoff},
    dns::Dns,
    policy::DataPlane,
    portal::{self, Probe, Verdict},
    session::{self, Context, Outcome},
    spec::{ConnectSpec, shown},
    status::{CertificateFailure, ConnectError, Failure, Lost, Shared, State, Status},
    tunnel::teardown,
    walk::{Next, Walk},
};
use crate::datapath::ConnId;

/// What the daemon can ask of a running connection.
#[derive(Debug)]
pub enum Command {
    /// Log out at the gateway and end.
    Signout,
    /// End without logging out (the gateway keeps the session until it expires).
    Disconnect,
    /// Tear the data path down but keep the session for [`Command::Resume`].
    Suspend,
    Resume,
}

/// A running connection as the daemon holds it.
pub struct Handle {
    pub name: String,
    pub id: ConnId,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<(Command, oneshot::Sender<()>)>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// The connection's status now.
    pub fn status(&self) -> Status {
        let mut s = self.shared.status().clone();
        let t = &self.shared.traffic;
        s.bytes_out = t.bytes_out.load(Ordering::Relaxed);
        s.bytes_in = t.bytes_in.load(Ordering::Relaxed);
        s.packets_out = t.packets_out.load(Ordering::Relaxed);
        s.packets_in = t.packets_in.load(Ordering::Relaxed);
        s.uptime_secs = s.established_at.map(|t| t.elapsed().as_secs());
        s
    }

    /// A sender for commands, to use without holding the daemon's lock.
    pub fn commands_clone(&self) -> mpsc::UnboundedSender<(Command, oneshot::Sender<()>)> {
        self.commands.clone()
    }

    /// Sends a command and waits until the connection acted on it.
    pub async fn command(&self, c: Command) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.commands.send((c, tx)).is_err() {
            return false;
        }
        rx.await.is_ok()
    }
}

/// Starts a connection; the receiver completes when the first login succeeded or failed.
pub fn spawn(
    spec: ConnectSpec,
    plane: DataPlane,
    dns: Dns,
    emit: Emit,
) -> (Handle, oneshot::Receiver<Result<(), Failure>>) {
    let (first_tx, first_rx) = oneshot::channel();
    let shared = Arc::new(Shared::new(spec.name.clone()));
    let (tx, rx) = mpsc::unbounded_channel();
    let name = spec.name.clone();
    let id = spec.id;
    let ctx = Context::new(spec, plane, dns, emit, shared.clone(), rx, first_tx);
    let task = tokio::spawn(run(ctx));
    (
        Handle {
            name,
            id,
            shared,
            commands: tx,
            task,
        },
        first_rx,
    )
}

/// How waiting behind a captive portal ended.
enum AfterPortal {
    /// There was none: the usual back-off.
    NoPortal,
    /// The portal lets us through now: connect at once.
    Online,
    /// The user disconnected meanwhile.
    Stopped,
}

/// Probes for a captive portal ([`portal`]) and, behind one, waits in state
/// `captive_portal` (the disconnect timeout not running) until the probe gets the true
/// answer. The first report of a connection that waits here is "waiting", not a failure.
async fn behind_portal(ctx: &mut Context, probe: &Probe) -> AfterPortal {
    let name = ctx.spec.name.clone();
    let addr = match ctx.dns.lookup(&probe.host).await {
        Ok(addrs) => match addrs.first() {
            Some(ip) => SocketAddr::new(*ip, probe.port),
            None => return AfterPortal::NoPortal,
        },
        Err(e) => {
            debug!(connection = %name, host = %probe.host, error = %e, "captive portal probe: no address");
            return AfterPortal::NoPortal;
        }
    };
    let Verdict::Portal { location } = portal::probe(probe, addr).await else {
        return AfterPortal::NoPortal;
    };
    let shown = location
        .clone()
        .unwrap_or_else(|| "(no address given)".into());
    warn!(connection = %name, portal = %shown, "behind a captive portal: waiting for it to let us through");
    ctx.emit.message(
        tunnel_config::Level::Warning,
        &format!("'{name}': a captive portal holds this network ({shown}); sign in there, the connection starts once the internet is reachable"),
    );
    {
        let mut s = ctx.shared.status();
        s.state = State::CaptivePortal;
        s.portal = Some(shown);
    }
    // `tunnel portal`'s processes may reach the portal, lock-down or not, for a while.
    if let Err(e) = ctx.plane.set_portal(ctx.spec.portal_exception) {
        warn!(connection = %name, error = %e, "the captive portal exception could not be opened");
    }
    ctx.report_first(Ok(()));
    let ended = wait_out_portal(ctx, probe, addr).await;
    if let Err(e) = ctx.plane.set_portal(None) {
        warn!(connection = %name, error = %e, "closing the captive portal exception");
    }
    ended
}

/// Probes until the portal lets us through, or the user stops the connection.
async fn wait_out_portal(ctx: &mut Context, probe: &Probe, addr: SocketAddr) -> AfterPortal {
    let name = ctx.spec.name.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(portal::PROBE_EVERY) => {}
            cmd = ctx.commands.recv() => match cmd {
                Some((Command::Signout | Command::Disconnect, ack)) => {
                    let _ = ack.send(());
                    return AfterPortal::Stopped;
                }
                Some((_, ack)) => { let _ = ack.send(()); }
                None => return AfterPortal::Stopped,
            }
        }
        if portal::probe(probe, addr).await == Verdict::Online {
            info!(connection = %name, "the captive portal lets us through: connecting");
            ctx.emit.message(
                tunnel_config::Level::Info,
                &format!("'{name}': the internet is reachable: connecting"),
            );
            let mut s = ctx.shared.status();
            s.portal = None;
            s.state = State::Connecting;
            return AfterPortal::Online;
        }
    }
}

/// The reconnect loop.
async fn run(mut ctx: Context) {
    let mut backoff = Backoff::new(ctx.spec.disconnect_timeout);
    let mut walk = Walk::new(
        ctx.spec.gateways.len(),
        ctx.spec.url_mode,
        ctx.spec.last_url,
        rand::random(),
    );
    // The last way the gateways were lost, for the timeout's message.
    let mut last_lost: Option<Lost> = None;
    loop {
        let Some((index, gw)) = walk
            .current()
            .and_then(|i| ctx.spec.gateways.get(i).cloned().map(|gw| (i, gw)))
        else {
            fail(&mut ctx, Failure::Connect(ConnectError::NoGateway));
            break;
        };
        {
            let mut s = ctx.shared.status();
            s.state = if backoff.in_outage() {
                State::Reconnecting
            } else {
                State::Connecting
            };
            s.server = Some(shown(&gw));
        }
        debug!(connection = %ctx.spec.name, url = index, gateway = %shown(&gw), "trying");
        let began = Instant::now();
        let outcome = session::run(&mut ctx, &gw).await;
        let came_up = ctx
            .shared
            .status()
            .established_at
            .is_some_and(|t| t >= began);
        if came_up {
            backoff.start_over();
            walk.connected();
        }
        let unreachable = !came_up && matches!(outcome, Outcome::Lost(_));
        // After a lost session: the same URL after a back-off. After a failed attempt: the
        // walk's next URL, at once or (the round over) after a back-off.
        let next = match outcome {
            Outcome::Done => break,
            Outcome::Failed(f) if !walks_on(&f) => {
                fail(&mut ctx, f);
                break;
            }
            Outcome::Failed(f) => {
                warn!(connection = %ctx.spec.name, gateway = %shown(&gw), error = %f, "certificate refused; trying the next URL");
                ctx.shared.status().last_error = Some(f.clone());
                walk.failed(Some(f))
            }
            Outcome::Suspended => {
                ctx.shared.status().state = State::Suspended;
                ctx.dns.set(&ctx.spec.name, None).await;
                teardown(&mut ctx.tunnel, &ctx.plane, ctx.spec.id);
                if !resumed(&mut ctx).await {
                    return;
                }
                backoff.start_over();
                continue;
            }
            Outcome::Lost(why) => {
                {
                    // Reconnecting from the loss on, through the back-off, not only from
                    // the next attempt: the status never shows a lost session as connected.
                    let mut s = ctx.shared.status();
                    s.last_error = Some(Failure::Connect(why.clone().into()));
                    s.reconnects += 1;
                    s.state = State::Reconnecting;
                }
                last_lost = Some(why);
                if came_up {
                    walk.lost();
                    Next::AfterBackoff
                } else {
                    walk.failed(None)
                }
            }
        };
        // No gateway of the round reached: a captive portal may be holding us.
        if unreachable
            && matches!(next, Next::AfterBackoff)
            && let Some(probe) = ctx.spec.portal.clone()
        {
            match behind_portal(&mut ctx, &probe).await {
                AfterPortal::NoPortal => {}
                AfterPortal::Online => {
                    backoff.start_over();
                    continue;
                }
                AfterPortal::Stopped => break,
            }
        }
        let delay = match next {
            Next::Fail(f) => {
                fail(&mut ctx, f);
                break;
            }
            Next::Now => backoff.expired(Instant::now()).map(Err).unwrap_or(Ok(None)),
            Next::AfterBackoff => match backoff.lost(Instant::now()) {
                AfterLoss::RetryIn(delay) => Ok(Some(delay)),
                AfterLoss::GiveUp(outage) => Err(outage),
            },
        };
        let delay = match delay {
            Ok(delay) => delay,
            Err(outage) => {
                let f = Failure::Timeout {
                    outage,
                    last: last_lost.clone().unwrap_or(Lost::Closed),
                };
                let mut s = ctx.shared.status();
                s.last_error = Some(f.clone());
                s.state = State::Failed;
                drop(s);
                ctx.report_first(Err(f));
                break;
            }
        };
        let Some(delay) = delay else { continue };
        debug!(connection = %ctx.spec.name, ?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            cmd = ctx.commands.recv() => match cmd {
                Some((Command::Signout | Command::Disconnect, ack)) => { let _ = ack.send(()); break; }
                Some((_, ack)) => { let _ = ack.send(()); }
                None => break,
            }
        }
    }
    ctx.dns.set(&ctx.spec.name, None).await;
    teardown(&mut ctx.tunnel, &ctx.plane, ctx.spec.id);
    {
        let mut s = ctx.shared.status();
        if s.state != State::Failed {
            s.state = State::Disconnected;
        }
        s.established_at = None;
    }
    ctx.emit.event(EventKind::Disconnected {
        connection: ctx.spec.name.clone(),
    });
}

/// Whether a failure on one gateway leaves the others of the list to try: a certificate
/// refused (the gateway's, or ours by the gateway) is that gateway's; a wrong password, a
/// prompt nobody answers or a bad setting would fail everywhere.
fn walks_on(f: &Failure) -> bool {
    matches!(
        f,
        Failure::Certificate(
            CertificateFailure::Untrusted { .. } | CertificateFailure::ClientRefused { .. }
        )
    )
}

/// The connection failed for good.
fn fail(ctx: &mut Context, f: Failure) {
    warn!(connection = %ctx.spec.name, error = %f, "connection failed");
    {
        let mut s = ctx.shared.status();
        s.last_error = Some(f.clone());
        s.state = State::Failed;
    }
    ctx.report_first(Err(f));
}

/// Waits, suspended, for Resume (true) or an end (false: the connection is over).
async fn resumed(ctx: &mut Context) -> bool {
    loop {
        match ctx.commands.recv().await {
            Some((Command::Resume, ack)) => {
                ctx.emit.event(EventKind::UserResume {
                    connection: ctx.spec.name.clone(),
                });
                let _ = ack.send(());
                return true;
            }
            Some((Command::Suspend, ack)) => {
                let _ = ack.send(());
            }
            Some((Command::Signout | Command::Disconnect, ack)) => {
                let _ = ack.send(());
                ctx.shared.status().state = State::Disconnected;
                return false;
            }
            None => return false,
        }
    }
}
