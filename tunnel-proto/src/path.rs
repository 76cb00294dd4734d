//! The ESP data path of a session, written once for both ends: a client is the one-peer case
//! of the same path (quinn-proto's shape, one core and a side).
//!
//! Owns, for [`Client`](crate::Client) and [`Server`](crate::Server) alike: the choice of ESP
//! or a TLS data frame for each outgoing IP packet, sealing (one datagram at once, or staged
//! into a train that is sealed in one go), opening a train of datagrams, the count of bytes
//! that went through the keys, and the probe waiting to be sent. What only one end decides
//! comes from its [`Side`]: when ESP may carry a packet, what hearing the peer means for its
//! liveness state, what an SA out of sequence numbers means.
//!
//! # Calling grammar (the same on both ends)
//!
//! Inputs, each with the time:
//! - `handle_tls_bytes` / `handle_tls_bytes_with`: bytes read from the TLS connection;
//! - `handle_esp_train`: datagrams read from UDP (one, or a GRO train of equal sizes);
//! - `send_packet` / `stage_packet` + `seal_train`: IP packets read from the TUN device;
//! - `poll_timers(now)`: the timers run (probes, dead-peer detection, timeouts, rekeys).
//!
//! Outputs, drained after any input, in this order:
//! - `poll_event`: what the caller must act on;
//! - `pending_tls` / `take_tls`: bytes for the TLS connection;
//! - `poll_esp_transmit(buf)`: a probe or a probe's answer for UDP, until it returns None;
//! - `next_timer`: when to call `poll_timers` again.
//!
//! Does not own: the handshake, the keys' lifetime or the link's liveness (the sides'), the
//! wire format (`esp`).

use std::time::Instant;

use crate::esp::{EspError, EspSuite, InboundSa};
use crate::rng::RandomSource;
use crate::session::{EspInput, EspPair, SessionError, TlsOut, Transmit};

/// One session's ESP security associations and what waits to go out on them.
#[derive(Debug)]
pub(crate) struct EspPath {
    pub(crate) pair: EspPair,
    /// Next header of a probe to send at the next `poll_esp_transmit`: one of the client's
    /// own, or the gateway's answer to one of the client's.
    probe: Option<u8>,
    /// Bytes of IP packets sealed and opened since the keys were last replaced.
    pub(crate) bytes: u64,
}

impl EspPath {
    pub(crate) fn new(suite: EspSuite, inbound: InboundSa) -> Self {
        Self {
            pair: EspPair::new(suite, inbound),
            probe: None,
            bytes: 0,
        }
    }

    /// Sends a probe with next header `next_header` at the next `poll_esp_transmit` (one
    /// waiting probe replaces another: they are all the same single byte).
    pub(crate) fn queue_probe(&mut self, next_header: u8) {
        self.probe = Some(next_header);
    }
}

/// What a train brought from the peer, for the side's liveness state.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Heard {
    /// A datagram was authenticated: the peer is there.
    pub(crate) any: bool,
    /// A datagram carried an IP packet.
    pub(crate) data: bool,
    /// Next header of a probe among them.
    pub(crate) probe: Option<u8>,
}

/// Whether an ESP datagram is sealed as it is written or staged for [`seal_train`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seal {
    Now,
    Staged,
}

/// The parts of a session the data path works on.
pub(crate) struct Parts<'a> {
    /// None until keys were exchanged.
    pub(crate) esp: Option<&'a mut EspPath>,
    pub(crate) tls: &'a mut TlsOut,
    pub(crate) rng: &'a mut dyn RandomSource,
}

/// What one end of a session decides about its data path.
pub(crate) trait Side {
    fn parts(&mut self) -> Parts<'_>;
    /// Whether packets may be sent now (the error says why not).
    fn may_send(&self) -> Result<(), SessionError>;
    /// Whether ESP datagrams may be opened now (the error says why not).
    fn may_receive(&self) -> Result<(), SessionError>;
    /// The error for `call` made in the current state.
    fn wrong(&self, call: &'static str) -> SessionError;
    /// Whether ESP carries `packet` now; TLS does otherwise.
    fn esp_carries(&self, packet: &[u8], now: Instant) -> bool;
    /// A packet was handed to the path to send.
    fn sending(&mut self, now: Instant);
    /// The outbound SA ran out of sequence numbers: nothing more goes out on it.
    fn exhausted(&mut self);
    /// A train was opened.
    fn heard(&mut self, heard: Heard, now: Instant);
}

/// Sends one IP packet: over ESP into `esp_out` when the side lets ESP carry it (sealed, or
/// staged as the next datagram of a train), otherwise as a data frame on TLS.
pub(crate) fn send(
    side: &mut impl Side,
    packet: &[u8],
    now: Instant,
    esp_out: &mut [u8],
    seal: Seal,
) -> Result<Transmit, SessionError> {
    side.may_send()?;
    side.sending(now);
    let carries = side.esp_carries(packet, now);
    let parts = side.parts();
    if carries
        && let Some(esp) = parts.esp
        && let Some(sa) = &mut esp.pair.outbound
    {
        let sealed = match seal {
            Seal::Now => sa.encapsulate(packet, esp_out, parts.rng),
            Seal::Staged => sa.stage(packet, esp_out, parts.rng),
        };
        match sealed {
            Ok(n) => {
                esp.bytes = esp.bytes.saturating_add(packet.len() as u64);
                return Ok(Transmit::Esp(n));
            }
            // Without a rekey there is no ESP any more; TLS carries on.
            Err(EspError::SequenceExhausted) => side.exhausted(),
            Err(e) => return Err(e.into()),
        }
    }
    side.parts().tls.send_data(packet)?;
    Ok(Transmit::Tls)
}

/// Seals a train staged by [`send`] with [`Seal::Staged`]; fails, sealing nothing, when the
/// outbound SA changed since.
pub(crate) fn seal_train(
    side: &mut impl Side,
    train: &mut [u8],
    size: usize,
) -> Result<(), SessionError> {
    let outbound = side.parts().esp.and_then(|e| e.pair.outbound.as_ref());
    match outbound {
        Some(out) => Ok(out.seal_train(train, size)?),
        None if train.is_empty() => Ok(()),
        None => Err(side.wrong("seal_train")),
    }
}

/// Opens a train of datagrams in place (`size` bytes each, the last possibly shorter); `f`
/// gets what each one was, in order. Returns whether one of them was the newest its SA
/// accepted ([`EspPayload::newest`](crate::esp::EspPayload::newest)).
pub(crate) fn receive(
    side: &mut impl Side,
    train: &mut [u8],
    size: usize,
    now: Instant,
    mut f: impl FnMut(Result<EspInput<'_>, SessionError>),
) -> bool {
    if let Err(e) = side.may_receive() {
        f(Err(e));
        return false;
    }
    let Some(esp) = side.parts().esp else {
        f(Err(side.wrong("handle_esp_train")));
        return false;
    };
    let (mut heard, mut newest, mut bytes) = (Heard::default(), false, 0u64);
    esp.pair.decapsulate_train(train, size, now, |r| match r {
        Ok(p) => {
            heard.any = true;
            newest |= p.newest;
            if p.is_probe() {
                heard.probe = Some(p.next_header);
                f(Ok(EspInput::Probe));
            } else {
                heard.data = true;
                bytes += p.payload.len() as u64;
                f(Ok(EspInput::Packet(p.payload)));
            }
        }
        Err(e) => f(Err(e.into())),
    });
    esp.bytes = esp.bytes.saturating_add(bytes);
    if heard.any {
        side.heard(heard, now);
    }
    newest
}

/// The waiting probe, sealed into `out` (its length returned); None when nothing waits or
/// there is no outbound SA to send it on yet (it waits for one).
pub(crate) fn poll_transmit(
    side: &mut impl Side,
    out: &mut [u8],
) -> Result<Option<usize>, SessionError> {
    let parts = side.parts();
    let Some(esp) = parts.esp else {
        return Ok(None);
    };
    let (Some(next_header), Some(sa)) = (esp.probe, esp.pair.outbound.as_mut()) else {
        return Ok(None);
    };
    esp.probe = None;
    match sa.encapsulate_probe(next_header, out, parts.rng) {
        Ok(n) => Ok(Some(n)),
        Err(EspError::SequenceExhausted) => {
            side.exhausted();
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
