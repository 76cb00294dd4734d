//! The TLS receive path: plaintext a peer sent over its TLS connection, run through its
//! state machine, whose data packets are written into the TUN device as they are parsed
//! (no copy, no event per packet) and the rest becomes the session's events.
//!
//! Whoever reads a connection calls it: a packet thread once the tunnel is up
//! ([`TlsIn::read_connection`], through [`End::drain_tls`]), the session's task before.
//! Like the ESP side, a packet thread claims the TUN device before writing a packet that
//! may be answered at once, and forwards the answer itself.

use std::{io, time::Instant};

use tracing::debug;
use tunnel_proto::SessionError;

use super::{
    device::Device,
    dispatch::Claim,
    end::{Direction, End, PeerState},
    outbound::forward_answers,
    tun_io::{TunIo, TunSink},
};
use crate::sys::tls_link::TlsLink;

/// One TLS record's plaintext, at most: what one read of the connection gives.
const READ_BUF: usize = 65_536;

/// The buffers of the thread the dispatcher handed the TLS side to.
pub(crate) struct TlsIn<E: End> {
    buf: Vec<u8>,
    sink: TunSink,
    /// The end's own state for its TLS side (the gateway's list of ready connections, its
    /// access policy's copy).
    pub(crate) scratch: E::Scratch,
}

/// How a read of a connection ended.
#[derive(Debug)]
pub(crate) enum TlsRead {
    /// The socket has no more for now.
    Drained,
    /// The peer closed the connection.
    Closed,
    /// Reading failed.
    Failed(io::Error),
    /// The bytes closed the session (a protocol error, or a request the end does not
    /// support); the state machine queued what it has to say.
    Protocol(SessionError),
}

impl<E: End> TlsIn<E> {
    pub(crate) fn new(tun: &impl TunIo) -> Self {
        TlsIn::with_buffer(vec![0u8; READ_BUF], tun)
    }

    /// Reading into `buf` (room for a record's plaintext: 16 KiB or more).
    pub(crate) fn with_buffer(buf: Vec<u8>, tun: &impl TunIo) -> Self {
        TlsIn {
            buf,
            sink: TunSink::new(tun),
            scratch: E::Scratch::default(),
        }
    }

    /// Reads `peer`'s connection `link` until it has no more, or ends; wakes the peer's
    /// owner whenever its state machine has something for it.
    pub(crate) fn read_connection<T: TunIo>(
        &mut self,
        end: &E,
        device: &Device<E, T>,
        peer: &E::Peer,
        link: &TlsLink,
    ) -> TlsRead {
        let TlsIn { buf, sink, scratch } = self;
        while !device.stop.is_set() {
            match link.try_recv(buf) {
                Ok(0) => return TlsRead::Closed,
                Ok(n) => {
                    let mut to_tun = ToTun::new(Some((device.tun(), sink)), scratch, Some(device));
                    let taken = end
                        .proto(peer)
                        .lock()
                        .map(|mut p| to_tun.open(end, &mut *p, Some(peer), &buf[..n]))
                        // The state machine panicked: its owner finds out when it takes it.
                        .unwrap_or(Ok(true));
                    to_tun.finish(end);
                    match taken {
                        Ok(true) => end.wake(peer),
                        Ok(false) => {}
                        Err(e) => return TlsRead::Protocol(e),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return TlsRead::Drained,
                Err(e) => return TlsRead::Failed(e),
            }
        }
        TlsRead::Drained
    }
}

/// Where the packets of TLS bytes go: the TUN device, through a sink, claimed first when
/// `device`'s dispatcher is there to claim it from.
pub(crate) struct ToTun<'a, E: End, T: TunIo> {
    /// None: no TUN device yet, the packets go nowhere.
    to: Option<(&'a T, &'a mut TunSink)>,
    scratch: &'a mut E::Scratch,
    device: Option<&'a Device<E, T>>,
    claim: Option<Claim<'a>>,
    packets: u64,
    bytes: u64,
}

impl<'a, E: End, T: TunIo> ToTun<'a, E, T> {
    /// Packets to a TUN device through a sink (`to`), checked with `scratch`; `device`: a
    /// packet thread's (which claims the TUN device and forwards what is answered at once).
    pub(crate) fn new(
        to: Option<(&'a T, &'a mut TunSink)>,
        scratch: &'a mut E::Scratch,
        device: Option<&'a Device<E, T>>,
    ) -> Self {
        ToTun {
            to,
            scratch,
            device,
            claim: None,
            packets: 0,
            bytes: 0,
        }
    }

    /// Runs `data`, which `peer` sent over TLS (None: no session yet, its packets go
    /// nowhere), through its state machine `proto`, locked by the caller; the packets go to
    /// the sink (written by [`Self::finish`] once `proto` is free again). Whether the owner
    /// has work now (events, frames to send, the session closed); `Err` when the bytes
    /// closed the session.
    pub(crate) fn open(
        &mut self,
        end: &E,
        proto: &mut E::Proto,
        peer: Option<&E::Peer>,
        data: &[u8],
    ) -> Result<bool, SessionError> {
        let now = Instant::now();
        if let Some(peer) = peer {
            end.heard_over_tls(peer, now);
        }
        let ToTun {
            to,
            scratch,
            device,
            claim,
            packets,
            bytes,
        } = self;
        let result = proto.handle_tls_bytes_with(data, now, &mut |packet| {
            let admitted = match peer {
                Some(peer) => end.admit(peer, packet, scratch),
                None => {
                    end.dropped(1);
                    false
                }
            };
            let Some((tun, sink)) = to else {
                return;
            };
            if !admitted {
                return;
            }
            if E::CLAIM_FOR_TLS_WRITES
                && claim.is_none()
                && let Some(device) = *device
            {
                *claim = device.claim_tun_for(std::iter::once(packet));
            }
            *packets += 1;
            *bytes += packet.len() as u64;
            sink.push(*tun, packet);
        });
        let attention = proto.has_events() || proto.tls_backlog() > 0 || proto.is_closed();
        match result {
            Err(e) if proto.is_closed() => Err(e),
            Err(e) => {
                debug!(error = %e, "protocol error");
                Ok(attention)
            }
            Ok(()) => Ok(attention),
        }
    }

    /// Writes what [`Self::open`] left in the sink into the TUN device, then forwards what
    /// the other side answered within the writes when the device was claimed for them.
    pub(crate) fn finish(mut self, end: &E) {
        if let Some((tun, sink)) = &mut self.to {
            sink.flush(*tun);
        }
        if let (Some(_claim), Some(device)) = (self.claim.take(), self.device) {
            forward_answers(end, device);
        }
        end.count(Direction::In, self.packets, self.bytes);
    }
}
