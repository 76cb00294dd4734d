//! One end's packet path as a whole ([`Device`]): its TUN device and ESP socket, the
//! dispatcher that hands them (and the TLS side) to the packet threads, and each
//! direction's buffers; and the packet threads themselves ([`start`]).

use std::{
    io,
    net::UdpSocket,
    ops::ControlFlow,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use tracing::warn;

use super::{
    dispatch::{self, Claim, Dispatch, SharedFd, Source},
    end::End,
    inbound::{Inbound, drain_esp},
    outbound::{Outbound, drain_tun},
    tls_in::TlsIn,
    tun_io::TunIo,
};
use crate::sys::{epoll::Stop, tun::Tun};

/// One end's packet path (see the module docs of `fastpath`).
pub(crate) struct Device<E: End, T: TunIo = Tun> {
    tun: Arc<T>,
    esp: Option<Arc<UdpSocket>>,
    pub(crate) stop: Arc<Stop>,
    pub(crate) dispatch: Dispatch,
    /// Whether a receiving thread may read the TUN device after its writes: only a
    /// non-blocking device (a blocking read there would stall the receiving side until the
    /// next packet from the other side).
    forward_after_writes: bool,
    pub(crate) outbound: Mutex<Outbound<E>>,
    pub(crate) inbound: Mutex<Inbound<E>>,
    pub(crate) tls_in: Mutex<TlsIn<E>>,
}

impl<E: End, T: TunIo> Device<E, T> {
    /// The packet path over `tun` and `esp` (None: TLS only), with the TLS side `tls`
    /// where the packet threads read it, stopped by `stop`. `nonblocking`: whether `tun`
    /// was made non-blocking.
    pub(crate) fn new(
        tun: Arc<T>,
        esp: Option<Arc<UdpSocket>>,
        tls: Option<SharedFd>,
        stop: Arc<Stop>,
        nonblocking: bool,
    ) -> io::Result<Self> {
        let mut dispatch = Dispatch::new(&stop)?;
        dispatch.add(Source::Tun, tun.clone())?;
        if let Some(esp) = &esp {
            dispatch.add(Source::Esp, esp.clone())?;
        }
        if let Some(tls) = tls {
            dispatch.add(Source::Tls, tls)?;
        }
        Ok(Device {
            outbound: Mutex::new(Outbound::new()),
            inbound: Mutex::new(Inbound::new(&*tun, esp.as_deref())),
            tls_in: Mutex::new(TlsIn::new(&*tun)),
            tun,
            esp,
            stop,
            dispatch,
            forward_after_writes: nonblocking,
        })
    }

    pub(crate) fn tun(&self) -> &T {
        &self.tun
    }

    pub(crate) fn esp(&self) -> Option<&UdpSocket> {
        self.esp.as_deref()
    }

    /// Claims the TUN device for a thread about to write `packets` into it, when one may be
    /// answered within the writes and the device may be read after them (see
    /// [`Dispatch::claim_tun_for`]).
    pub(crate) fn claim_tun_for<'a, 'p>(
        &'a self,
        packets: impl Iterator<Item = &'p [u8]>,
    ) -> Option<Claim<'a>> {
        if !self.forward_after_writes {
            return None;
        }
        self.dispatch.claim_tun_for(packets, &self.stop)
    }

    /// The loop of one packet thread: serves whichever source the dispatcher hands it
    /// until the device is stopped.
    pub(crate) fn serve(&self, end: &E) {
        dispatch::serve(&self.dispatch, &self.stop, |source| match source {
            Source::Tun => drain_tun(end, self),
            Source::Esp => drain_esp(end, self),
            Source::Tls => self.drain_tls(end),
        });
    }

    /// Reads the TLS side until it has no more ([`End::drain_tls`]).
    pub(crate) fn drain_tls(&self, end: &E) -> ControlFlow<()> {
        let Ok(mut tls_in) = self.tls_in.lock() else {
            return ControlFlow::Break(());
        };
        end.drain_tls(self, &mut tls_in)
    }
}

/// Makes `tun` non-blocking, which the receiving threads need to forward what is answered
/// within their writes; whether that worked (a device that stays blocking still carries
/// packets, with a wake-up more per answer).
pub(crate) fn set_nonblocking(tun: &Tun) -> bool {
    match tun.set_nonblocking() {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "the TUN device stays blocking");
            false
        }
    }
}

/// Starts a packet thread per source of the device `owner` holds (`parts` finds the end and
/// the device in it), named `name-N`.
pub(crate) fn start<O, E, T>(
    name: &str,
    owner: &Arc<O>,
    parts: fn(&O) -> (&E, &Device<E, T>),
) -> io::Result<Vec<JoinHandle<()>>>
where
    O: Send + Sync + 'static,
    E: End + 'static,
    T: TunIo,
{
    let (_, device) = parts(owner);
    (0..device.dispatch.sources())
        .map(|i| {
            let owner = owner.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let (end, device) = parts(&owner);
                    device.serve(end);
                })
        })
        .collect()
}
