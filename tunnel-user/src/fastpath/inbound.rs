//! The ESP receive path: datagrams from the peers, many per system call (`recvmmsg`, and
//! UDP GRO where the kernel joins them), opened and written into the TUN device.
//!
//! 1. Each message of a receive is cut into runs of datagrams with one SPI; a run's peer
//!    is looked up by its SPI ([`End::peer_by_spi`]) and the run opened as one train under
//!    the peer's lock (header and replay checks, the ICVs side by side, decryption in
//!    place); only where each packet is gets noted. A probe in the run is answered.
//! 2. With no lock held, the packets the peer may send ([`End::admit`]) are written into
//!    the TUN device, joined where possible (`TunSink`). The sending thread, which needs
//!    the peer's lock to stage, never waits for these writes.
//! 3. A batch with a packet the local stack may answer within the write (a TCP segment, an
//!    echo request) is written holding the TUN device (claimed first), and the answer is
//!    forwarded by this thread at once ([`forward_answers`]): it wakes nobody.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    ops::ControlFlow,
    time::Instant,
};

use nix::sys::socket::{getsockopt, sockopt::UdpGroSegment};
use tracing::debug;
use tunnel_proto::{EspInput, peek_spi};

use super::{
    device::Device,
    dispatch::after_failed_read,
    end::{Direction, End, PeerState},
    outbound::forward_answers,
    tun_io::{TunIo, TunSink},
};
use crate::sys::udp_gso::RecvBatch;

/// Messages per `recvmmsg` on an ESP socket with UDP GRO: each holds up to 64 KiB of one
/// peer's datagrams (a few dozen full-size ones, hundreds of small ones). Every batch ends
/// with the TUN reads its writes made answerable and a send of what they staged, so a
/// smaller batch sends smaller trains: with 8 a TCP stream's ACKs cut the trains short
/// enough to cost ESP AES-GCM several per cent of its rate. 16 keep the send batches of 32
/// in half the resident memory (1 MiB).
pub(crate) const RECV_BATCH_GRO: usize = 16;

/// Messages per `recvmmsg` on an ESP socket without UDP GRO (one datagram each).
pub(crate) const RECV_BATCH: usize = 32;

/// The ESP-to-TUN direction's buffers (see the module docs).
pub(crate) struct Inbound<E: End> {
    batch: RecvBatch,
    /// A probe's answer.
    reply: Vec<u8>,
    sink: TunSink,
    /// The runs of this receive: the peer and where its datagrams came from.
    runs: Vec<(E::Peer, SocketAddr)>,
    /// Opened packets: (run, message, offset, length) in `batch`.
    opened: Vec<(usize, usize, usize, usize)>,
    scratch: E::Scratch,
}

impl<E: End> Inbound<E> {
    /// Buffers for receiving from `esp` (None: no ESP socket, nothing to receive).
    pub(crate) fn new(tun: &impl TunIo, esp: Option<&UdpSocket>) -> Self {
        // The receive buffer's slots are touched as the kernel fills them, and stay
        // resident: sized for what one receive can hold, no more.
        let gro = esp.is_some_and(|s| getsockopt(s, UdpGroSegment).unwrap_or(false));
        let messages = match esp {
            None => 1,
            Some(_) if gro => RECV_BATCH_GRO,
            Some(_) => RECV_BATCH,
        };
        Inbound {
            batch: RecvBatch::new(messages, tunnel_packet::MAX_PACKET),
            reply: vec![0u8; 512],
            sink: TunSink::new(tun),
            runs: Vec::with_capacity(RECV_BATCH),
            opened: Vec::with_capacity(RECV_BATCH * 64),
            scratch: E::Scratch::default(),
        }
    }

    /// Receives one batch and writes what it opened into the TUN device; then sends what
    /// the other side answered at once. The receive's error (`WouldBlock` with nothing
    /// queued) otherwise.
    fn receive<T: TunIo>(
        &mut self,
        end: &E,
        device: &Device<E, T>,
        udp: &UdpSocket,
    ) -> io::Result<()> {
        let Inbound {
            batch,
            reply,
            sink,
            runs,
            opened,
            scratch,
        } = self;
        batch.recv(udp)?;
        let now = Instant::now();
        runs.clear();
        opened.clear();
        for (i, (r, message)) in batch.messages().enumerate() {
            let base = message.as_ptr() as usize;
            let from = r.from;
            let mut rest = &mut message[..];
            while !rest.is_empty() {
                // The datagrams from here on that carry the same SPI.
                let spi = peek_spi(rest);
                let mut len = 0;
                while len < rest.len() && peek_spi(&rest[len..]) == spi {
                    len = (len + r.size).min(rest.len());
                }
                let (run, tail) = rest.split_at_mut(len);
                rest = tail;
                let count = run.len().div_ceil(r.size);
                let Some(peer) = spi.and_then(|spi| end.peer_by_spi(spi, scratch)) else {
                    end.dropped(count);
                    debug!(%from, spi = ?spi.map(|s| format!("{s:#010x}")), count, "ESP datagrams for no peer");
                    continue;
                };
                let Ok(mut proto) = end.proto(&peer).lock() else {
                    continue;
                };
                let index = runs.len();
                let mut heard = false;
                let newest = proto.open_esp_train(run, r.size, now, |input| match input {
                    Ok(EspInput::Packet(p)) => {
                        heard = true;
                        opened.push((index, i, p.as_ptr() as usize - base, p.len()));
                    }
                    Ok(_) => heard = true,
                    Err(e) => debug!(error = %e, "ESP datagram dropped"),
                });
                let answer = proto.probe_answer(reply);
                let wake = proto.has_events() || proto.timers_due();
                drop(proto);
                if wake {
                    end.wake(&peer);
                }
                if let Some(n) = answer {
                    let _ = udp.send_to(&reply[..n], from);
                }
                if heard {
                    end.heard_over_esp(&peer, from, newest, now);
                }
                runs.push((peer, from));
            }
        }
        // What the writes make the other side answer is queued within them: this thread
        // holds the TUN device meanwhile, so the answer wakes no other thread, and sends it
        // (unless another thread holds the device and will). A batch nothing in which is
        // answered at once (UDP, echo replies) is written without taking the device.
        let claim = device.claim_tun_for(
            opened
                .iter()
                .map(|&(_, i, at, len)| &batch.message(i)[at..at + len]),
        );
        let tun = device.tun();
        let (mut packets, mut bytes) = (0u64, 0u64);
        for &(run, i, at, len) in opened.iter() {
            let packet = &batch.message(i)[at..at + len];
            if end.admit(&runs[run].0, packet, scratch) {
                sink.push(tun, packet);
                packets += 1;
                bytes += len as u64;
            }
        }
        sink.flush(tun);
        if let Some(_claim) = claim {
            forward_answers(end, device);
        }
        end.count(Direction::In, packets, bytes);
        Ok(())
    }
}

/// ESP datagrams from the peers until the socket has no more.
pub(crate) fn drain_esp<E: End, T: TunIo>(end: &E, device: &Device<E, T>) -> ControlFlow<()> {
    let Some(udp) = device.esp() else {
        return ControlFlow::Continue(());
    };
    let Ok(mut inbound) = device.inbound.lock() else {
        return ControlFlow::Break(());
    };
    while !device.stop.is_set() {
        match inbound.receive(end, device, udp) {
            // A batch with room to spare emptied the socket: given back without another
            // receive to find it empty (re-arming reports what arrived since).
            Ok(()) if !inbound.batch.was_full() => break,
            Ok(()) => {}
            Err(e) => {
                after_failed_read(&e, "receiving ESP");
                break;
            }
        }
    }
    ControlFlow::Continue(())
}
