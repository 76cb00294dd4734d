//! What the client and server state machines share: the session error type, the outgoing TLS
//! byte queue with its IF-T sequence counter, the ESP association pair with rekey overlap, and
//! small value types (passwords, authentication failures, where a packet went).
//!
//! Owns no protocol ordering (that is `client` / `server`) and no wire formats (those are
//! `ift`, `eap`, `config`, `esp`).

use crate::config::{ConfigError, ESP_SECRETS_LEN, EspKeys};
use crate::eap::EapError;
use crate::esp::{EspError, EspPayload, EspSuite, InboundSa, OutboundSa, split_secrets};
use crate::ift::{FrameKind, HEADER_LEN, IftError, Message, encode_header};
use crate::rng::RandomSource;
use std::fmt;
use std::time::{Duration, Instant};

/// How long packets for the previous inbound SA are still accepted after a rekey. openconnect
/// keeps the old SA for 32 more packets (esp.c `old_esp_maxseq`); being driven by time anyway,
/// we bound it by time instead.
pub const REKEY_OVERLAP: Duration = Duration::from_secs(30);

/// `t + d`, or `None` ("never") when that is past what `Instant` can represent; durations
/// come from configuration and the network, and `Instant + Duration` panics on overflow.
pub(crate) fn after(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

/// Errors of the client and server state machines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Framing, message or HTTP upgrade error.
    #[error(transparent)]
    Ift(#[from] IftError),
    /// EAP / AVP error.
    #[error(transparent)]
    Eap(#[from] EapError),
    /// Config packet error.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// ESP error.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// The peer sent a message that does not fit the current state.
    #[error("unexpected {got} while {state}")]
    UnexpectedMessage {
        /// What we were waiting for.
        state: &'static str,
        /// What arrived.
        got: FrameKind,
    },
    /// The peer's EAP dialogue went somewhere this implementation does not follow.
    #[error("unexpected authentication message while {state}: {what}")]
    UnexpectedAuth {
        /// What we were waiting for.
        state: &'static str,
        /// What arrived.
        what: String,
    },
    /// The gateway asked for something this client does not answer: an EAP type, vendor,
    /// subtype or code it does not know, or a method it does not implement.
    #[error("the gateway asked for {what}, which this client does not support")]
    UnsupportedRequest {
        /// What was asked: EAP type, vendor, subtype and code.
        what: String,
    },
    /// No common IF-T version.
    #[error("IF-T version {got} is outside the supported range {min}..={max}")]
    Version {
        /// Version offered or chosen by the peer.
        got: u8,
        /// Our minimum.
        min: u8,
        /// Our maximum.
        max: u8,
    },
    /// The configuration lacks what a tunnel needs (an address and an MTU, as openconnect
    /// requires).
    #[error("insufficient configuration: {what}")]
    InsufficientConfig {
        /// What is missing.
        what: &'static str,
    },
    /// The client's ESP reply does not echo the keys we sent.
    #[error("ESP key reply does not echo the keys we sent")]
    EspEchoMismatch,
    /// The client answered the same key exchange of ours a second time: installing it
    /// would restart an outbound SA's sequence numbers under keys already used.
    #[error("ESP key reply repeats an answer to keys already answered")]
    EspKeysRepeated,
    /// A method was called in a state where it makes no sense.
    #[error("{call} is not valid while {state}")]
    WrongState {
        /// The method.
        call: &'static str,
        /// The current state.
        state: &'static str,
    },
    /// The session is closed; nothing more can be done with it.
    #[error("session is closed")]
    Closed,
    /// No SPI could be reserved for a new inbound SA.
    #[error("no free ESP SPI")]
    NoSpi,
    /// A data packet was dropped: this many bytes are already waiting for the TLS
    /// connection ([`MAX_TLS_BACKLOG`]).
    #[error("TLS backlog full ({pending} bytes waiting): data packet dropped")]
    Backlogged {
        /// Bytes waiting.
        pending: usize,
    },
}

/// A password: compared and passed on, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The password text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Why the gateway refused a login, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// J2 failure (0xc5) with the server's message.
    Message(String),
    /// AVP 0xd60 failure code (0x0d locked out, 0x0e client certificate required).
    Code(u32),
    /// EAP Failure.
    EapFailure,
}

/// How the gateway's caller refuses a login (or a cookie resume).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRejection {
    /// Ask for the password again (J2 code 0x81). Rejecting a cookie resume this way falls back
    /// to the normal login, as Ivanti gateways do.
    Retry,
    /// End the login with a message (J2 code 0xc5).
    Failure(String),
    /// End the login with a failure code (AVP 0xd60).
    Code(u32),
}

/// Where `handle_tls_bytes_with` hands each data packet.
pub(crate) type PacketSink<'a> = &'a mut dyn FnMut(&[u8]);

/// Where [`send_packet`](crate::Client::send_packet) put an outgoing IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// An ESP datagram of this many bytes is in the caller's buffer: send it over UDP.
    Esp(usize),
    /// A data frame was queued on the TLS side: flush [`pending_tls`](crate::Client::pending_tls).
    Tls,
}

/// What an ESP datagram turned out to be.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EspInput<'a> {
    /// An IP packet, decrypted in place: write it to the TUN device.
    Packet(&'a [u8]),
    /// A probe. The gateway's answer to it waits in
    /// [`Server::poll_esp_transmit`](crate::Server::poll_esp_transmit).
    Probe,
}

/// Most bytes of data frames waiting to be written to TLS. Past it a data packet is dropped
/// (as a full interface queue drops it) instead of queueing without bound when the TLS
/// connection is slower than the packets coming in; control messages always queue. 1 MiB
/// holds a few milliseconds at multi-gigabit rates, which is what the writer needs to wake
/// up; the TCP connection's own buffers carry the bandwidth-delay product.
pub const MAX_TLS_BACKLOG: usize = 1 << 20;

/// Outgoing TLS bytes and the IF-T sequence counter of our side.
#[derive(Debug, Default)]
pub(crate) struct TlsOut {
    buf: Vec<u8>,
    seq: u32,
}

impl TlsOut {
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn send(&mut self, msg: &Message<'_>) -> Result<(), SessionError> {
        msg.encode_to_vec(self.seq, &mut self.buf)?;
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Appends a data frame without an intermediate buffer; refuses it past
    /// [`MAX_TLS_BACKLOG`].
    pub(crate) fn send_data(&mut self, packet: &[u8]) -> Result<(), SessionError> {
        let start = self.buf.len();
        if start + packet.len() > MAX_TLS_BACKLOG {
            return Err(SessionError::Backlogged { pending: start });
        }
        self.buf.resize(start + HEADER_LEN, 0);
        if let Err(e) = encode_header(
            FrameKind::Data,
            self.seq,
            packet.len(),
            &mut self.buf[start..],
        ) {
            self.buf.truncate(start);
            return Err(e.into());
        }
        self.buf.extend_from_slice(packet);
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
    }

    pub(crate) fn take(&mut self, into: &mut Vec<u8>) {
        into.clear();
        std::mem::swap(&mut self.buf, into);
    }
}

/// Draws a fresh inbound SA: random non-zero SPI, random keys, the secrets area to send.
pub(crate) fn generate_inbound(
    suite: EspSuite,
    rng: &mut dyn RandomSource,
) -> Result<(InboundSa, EspKeys), SessionError> {
    generate_inbound_with(suite, random_spi(rng), rng)
}

/// The lowest SPI a peer may be given: 0 is reserved for local use and 1-255 by IANA
/// (RFC 4303 section 2.1).
pub const MIN_SPI: u32 = 256;

/// A random SPI of the range peers may be given.
pub fn random_spi(rng: &mut dyn RandomSource) -> u32 {
    loop {
        let mut spi = [0u8; 4];
        rng.fill(&mut spi);
        let spi = u32::from_be_bytes(spi);
        if spi >= MIN_SPI {
            return spi;
        }
    }
}

/// An inbound SA with `spi` and fresh keys, and the keys to send the peer.
pub(crate) fn generate_inbound_with(
    suite: EspSuite,
    spi: u32,
    rng: &mut dyn RandomSource,
) -> Result<(InboundSa, EspKeys), SessionError> {
    let mut keys = EspKeys {
        spi,
        secrets: [0; ESP_SECRETS_LEN],
    };
    rng.fill(&mut keys.secrets[..suite.key_material_len()]);
    let (enc, mac) = split_secrets(suite, &keys.secrets)?;
    let sa = InboundSa::new(suite, keys.spi, enc, mac)?;
    Ok((sa, keys))
}

/// An outbound SA from the keys the peer sent.
pub(crate) fn outbound_from(suite: EspSuite, keys: &EspKeys) -> Result<OutboundSa, SessionError> {
    let (enc, mac) = split_secrets(suite, &keys.secrets)?;
    Ok(OutboundSa::new(suite, keys.spi, enc, mac)?)
}

/// Both directions of ESP for one session, with the previous inbound SA kept for a while after
/// a rekey so packets in flight are not lost.
#[derive(Debug)]
pub(crate) struct EspPair {
    pub(crate) suite: EspSuite,
    pub(crate) outbound: Option<OutboundSa>,
    pub(crate) inbound: InboundSa,
    pub(crate) previous: Option<(InboundSa, Instant)>,
}

impl EspPair {
    pub(crate) fn new(suite: EspSuite, inbound: InboundSa) -> Self {
        Self {
            suite,
            outbound: None,
            inbound,
            previous: None,
        }
    }

    /// Replaces the inbound SA, keeping the old one until `now + REKEY_OVERLAP`; returns the
    /// SPI of the one kept before, which no datagram opens any more.
    pub(crate) fn rotate_inbound(&mut self, inbound: InboundSa, now: Instant) -> Option<u32> {
        let old = std::mem::replace(&mut self.inbound, inbound);
        let gone = self.previous.take().map(|(sa, _)| sa.spi());
        self.previous = Some((old, after(now, REKEY_OVERLAP).unwrap_or(now)));
        gone
    }

    /// Drops the previous inbound SA once its overlap is over; returns its SPI then.
    pub(crate) fn retire_previous(&mut self, now: Instant) -> Option<u32> {
        match &self.previous {
            Some((sa, until)) if now > *until => {
                let spi = sa.spi();
                self.previous = None;
                Some(spi)
            }
            _ => None,
        }
    }

    /// When the previous inbound SA stops opening datagrams.
    pub(crate) fn previous_until(&self) -> Option<Instant> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    /// The SPIs datagrams may carry now: the current inbound SA's, and the previous one's
    /// during its overlap.
    pub(crate) fn inbound_spis(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.inbound.spi()).chain(self.previous.as_ref().map(|(sa, _)| sa.spi()))
    }

    pub(crate) fn decapsulate<'a>(
        &mut self,
        datagram: &'a mut [u8],
        now: Instant,
    ) -> Result<EspPayload<'a>, EspError> {
        let spi = crate::esp::peek_spi(datagram);
        if let Some((old, until)) = &mut self.previous
            && Some(old.spi()) == spi
            && spi != Some(self.inbound.spi())
            && now <= *until
        {
            return old.decapsulate(datagram);
        }
        self.inbound.decapsulate(datagram)
    }

    /// Opens a train (see [`InboundSa::decapsulate_train`]): at once when every datagram
    /// is for the current SA, the usual case; one by one around a rekey.
    pub(crate) fn decapsulate_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        now: Instant,
        mut f: impl FnMut(Result<EspPayload<'_>, EspError>),
    ) {
        let current = Some(self.inbound.spi());
        if size == 0
            || train
                .chunks(size)
                .all(|d| crate::esp::peek_spi(d) == current)
        {
            self.inbound.decapsulate_train(train, size, f);
        } else {
            for d in train.chunks_mut(size) {
                f(self.decapsulate(d, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::{EspCipher, EspMac};
    use crate::rng::testing::TestRandom;

    #[test]
    fn password_debug_is_redacted() {
        assert_eq!(format!("{:?}", Password::new("hunter2")), "Password(***)");
    }

    #[test]
    fn the_data_backlog_is_bounded_and_control_still_queues() {
        let mut out = TlsOut::default();
        let packet = vec![0x45u8; 1400];
        let mut queued = 0;
        while out.send_data(&packet).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, MAX_TLS_BACKLOG / (1400 + HEADER_LEN));
        assert!(matches!(
            out.send_data(&packet),
            Err(SessionError::Backlogged { .. })
        ));
        let seq_before = out.seq;
        out.send(&Message::Logout)
            .expect("control messages are not limited");
        assert_eq!(
            out.seq,
            seq_before + 1,
            "a refused packet takes no sequence number"
        );
        let mut taken = vec![1, 2, 3];
        let len = out.pending().len();
        out.take(&mut taken);
        assert_eq!(taken.len(), len);
        assert!(out.pending().is_empty());
        out.send_data(&packet).expect("room again");
    }

    #[test]
    fn tls_out_counts_sequence_numbers() {
        let mut out = TlsOut::default();
        out.send(&Message::Logout).expect("send");
        out.send_data(&[0x45, 0, 0, 20]).expect("data");
        let bytes = out.pending().to_vec();
        assert_eq!(&bytes[12..16], &[0, 0, 0, 0]);
        assert_eq!(&bytes[16 + 12..16 + 16], &[0, 0, 0, 1]);
        assert_eq!(bytes.len(), 16 + 20);
        out.consume(16);
        assert_eq!(out.pending().len(), 20);
    }

    #[test]
    fn previous_sa_accepted_only_during_overlap() {
        let suite = EspSuite {
            cipher: EspCipher::Aes128Cbc,
            mac: EspMac::HmacSha1_96,
        };
        let mut rng = TestRandom(1);
        let (old_in, old_keys) = generate_inbound(suite, &mut rng).expect("gen");
        let (new_in, _) = generate_inbound(suite, &mut rng).expect("gen");
        let mut tx = outbound_from(suite, &old_keys).expect("out");
        let mut pair = EspPair::new(suite, old_in);
        let t0 = Instant::now();
        pair.rotate_inbound(new_in, t0);
        let mut buf = [0u8; 128];
        let ip = [0x45u8; 20];
        let n = tx.encapsulate(&ip, &mut buf, &mut rng).expect("enc");
        assert!(
            pair.decapsulate(&mut buf[..n], t0 + Duration::from_secs(1))
                .is_ok()
        );
        let n = tx.encapsulate(&ip, &mut buf, &mut rng).expect("enc");
        assert!(matches!(
            pair.decapsulate(&mut buf[..n], t0 + REKEY_OVERLAP + Duration::from_secs(1)),
            Err(EspError::SpiMismatch { .. })
        ));
    }
}
