//! The send and receive paths through an in-memory TUN device and a fake end (no root):
//! packets go in at one side, and what comes out at the other is checked.
//!
//! The fake state machine "seals" a datagram by counting up a byte of its header, so a
//! datagram sealed twice or not at all is seen; its datagrams are `[spi: 4][seals: 1][packet]`.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    ops::ControlFlow,
    os::fd::{AsFd, BorrowedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::eventfd::EventFd;
use tunnel_packet::VnetHdr;
use tunnel_proto::{EspError, EspInput, SessionError, Transmit};

use super::{
    device::Device,
    dispatch::Source,
    end::{Direction, End, EspTo, PeerState},
    inbound::drain_esp,
    outbound::drain_tun,
    tls_in::{TlsIn, ToTun},
    tun_io::{TunIo, TunSink},
};
use crate::sys::{epoll::Stop, tun::Offload, udp_gso::RecvBatch};
use tunnel_packet::ip::ip_endpoints;

/// A TUN device in memory: packets queued to be read, packets written. A write of a packet
/// for which `answers` holds an answer queues that answer, as a local stack answering
/// within the write does.
struct FakeTun {
    to_read: Mutex<VecDeque<Vec<u8>>>,
    written: Mutex<Vec<Vec<u8>>>,
    answers: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    /// What the dispatcher registers (readiness is not used: the tests drain directly).
    ready: EventFd,
}

impl FakeTun {
    fn new() -> Arc<FakeTun> {
        Arc::new(FakeTun {
            to_read: Mutex::default(),
            written: Mutex::default(),
            answers: Mutex::default(),
            ready: EventFd::new().unwrap(),
        })
    }

    fn queue(&self, packet: Vec<u8>) {
        self.to_read.lock().unwrap().push_back(packet);
    }

    fn queued(&self) -> usize {
        self.to_read.lock().unwrap().len()
    }

    fn written(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.written.lock().unwrap())
    }
}

impl AsFd for FakeTun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }
}

impl TunIo for FakeTun {
    fn has_vnet_hdr(&self) -> bool {
        false
    }

    fn offload(&self) -> Offload {
        Offload::None
    }

    fn read_packet(&self, buf: &mut [u8]) -> std::io::Result<(Option<VnetHdr>, usize)> {
        let packet = self
            .to_read
            .lock()
            .unwrap()
            .pop_front()
            .ok_or(std::io::ErrorKind::WouldBlock)?;
        buf[..packet.len()].copy_from_slice(&packet);
        Ok((None, packet.len()))
    }

    fn write_packet(&self, hdr: Option<&VnetHdr>, packet: &[u8]) -> std::io::Result<()> {
        assert!(hdr.is_none(), "a plain device is written plain packets");
        self.written.lock().unwrap().push(packet.to_vec());
        let answers = self.answers.lock().unwrap();
        if let Some((_, answer)) = answers.iter().find(|(to, _)| to == packet) {
            self.queue(answer.clone());
        }
        Ok(())
    }
}

/// The fake state machine of one peer (see the module docs).
struct FakeProto {
    spi: u32,
    /// Packets go over TLS (ESP is down).
    over_tls: bool,
    /// Longer packets are refused, as one too big for the ESP buffer is.
    max_packet: usize,
    /// TLS frames queued: each packet behind its 2-byte length.
    tls: Vec<u8>,
}

impl PeerState for FakeProto {
    fn stage_packet(
        &mut self,
        packet: &[u8],
        _: Instant,
        out: &mut [u8],
    ) -> Result<Transmit, SessionError> {
        if self.over_tls {
            self.tls.extend(frame(packet));
            return Ok(Transmit::Tls);
        }
        if packet.len() > self.max_packet {
            return Err(EspError::BufferTooSmall {
                need: packet.len(),
                have: self.max_packet,
            }
            .into());
        }
        out[..4].copy_from_slice(&self.spi.to_be_bytes());
        out[4] = 0;
        out[5..5 + packet.len()].copy_from_slice(packet);
        Ok(Transmit::Esp(5 + packet.len()))
    }

    fn seal_train(&mut self, train: &mut [u8], size: usize) -> Result<(), SessionError> {
        for d in train.chunks_mut(size) {
            d[4] += 1;
        }
        Ok(())
    }

    fn open_esp_train(
        &mut self,
        train: &mut [u8],
        size: usize,
        _: Instant,
        mut f: impl FnMut(Result<EspInput<'_>, SessionError>),
    ) -> bool {
        let mut heard = false;
        for d in train.chunks_mut(size) {
            let spi = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
            if spi != self.spi {
                f(Err(EspError::SpiMismatch {
                    expected: self.spi,
                    got: spi,
                }
                .into()));
            } else if d[4] != 1 {
                f(Err(EspError::TooShort { len: 0, min: 1 }.into()));
            } else {
                heard = true;
                f(Ok(EspInput::Packet(&d[5..])));
            }
        }
        heard
    }

    fn probe_answer(&mut self, _: &mut [u8]) -> Option<usize> {
        None
    }

    fn handle_tls_bytes_with(
        &mut self,
        mut data: &[u8],
        _: Instant,
        packets: &mut dyn FnMut(&[u8]),
    ) -> Result<(), SessionError> {
        while data.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
            packets(&data[2..2 + len]);
            data = &data[2 + len..];
        }
        Ok(())
    }

    fn has_events(&self) -> bool {
        false
    }

    fn timers_due(&self) -> bool {
        false
    }

    fn tls_backlog(&self) -> usize {
        self.tls.len()
    }

    fn is_closed(&self) -> bool {
        false
    }
}

fn frame(packet: &[u8]) -> Vec<u8> {
    let mut f = (packet.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(packet);
    f
}

/// One peer of the fake end: its address inside the tunnel, its SPI, where its ESP goes.
struct FakePeer {
    addr: IpAddr,
    spi: u32,
    esp_to: Option<SocketAddr>,
    proto: Mutex<FakeProto>,
    /// Where its authenticated ESP came from.
    heard: Mutex<Vec<SocketAddr>>,
    /// TLS frames sent (taken from the state machine by `send_tls`).
    tls_sent: Mutex<Vec<u8>>,
    wakes: AtomicUsize,
}

#[derive(Default)]
struct FakeEnd {
    peers: Vec<Arc<FakePeer>>,
    dropped: AtomicUsize,
    refused: AtomicUsize,
    packets_in: AtomicUsize,
    packets_out: AtomicUsize,
}

impl FakeEnd {
    fn peer(&mut self, last: u8, esp_to: Option<SocketAddr>, over_tls: bool) -> Arc<FakePeer> {
        let spi = 0x1000 + u32::from(last);
        let peer = Arc::new(FakePeer {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            spi,
            esp_to,
            proto: Mutex::new(FakeProto {
                spi,
                over_tls,
                max_packet: 2000,
                tls: Vec::new(),
            }),
            heard: Mutex::default(),
            tls_sent: Mutex::default(),
            wakes: AtomicUsize::new(0),
        });
        self.peers.push(peer.clone());
        peer
    }
}

impl End for FakeEnd {
    type Peer = Arc<FakePeer>;
    type Proto = FakeProto;
    type Scratch = ();

    fn proto<'a>(&'a self, peer: &'a Arc<FakePeer>) -> &'a Mutex<FakeProto> {
        &peer.proto
    }

    fn same_peer(a: &Arc<FakePeer>, b: &Arc<FakePeer>) -> bool {
        Arc::ptr_eq(a, b)
    }

    fn peer_by_destination(&self, dst: IpAddr, _: &mut ()) -> Option<Arc<FakePeer>> {
        self.peers.iter().find(|p| p.addr == dst).cloned()
    }

    fn peer_by_spi(&self, spi: u32, _: &mut ()) -> Option<Arc<FakePeer>> {
        self.peers.iter().find(|p| p.spi == spi).cloned()
    }

    fn esp_to(&self, peer: &Arc<FakePeer>) -> Option<EspTo> {
        peer.esp_to.map(EspTo::Addr)
    }

    fn heard_over_esp(&self, peer: &Arc<FakePeer>, from: SocketAddr, _: bool, _: Instant) {
        peer.heard.lock().unwrap().push(from);
    }

    fn heard_over_tls(&self, _: &Arc<FakePeer>, _: Instant) {}

    fn admit(&self, peer: &Arc<FakePeer>, packet: &[u8], _: &mut ()) -> bool {
        let own = ip_endpoints(packet).is_some_and(|(src, _)| src == peer.addr);
        if !own {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        own
    }

    fn wake(&self, peer: &Arc<FakePeer>) {
        peer.wakes.fetch_add(1, Ordering::Relaxed);
    }

    fn send_tls(&self, peer: &Arc<FakePeer>) {
        let frames = std::mem::take(&mut peer.proto.lock().unwrap().tls);
        peer.tls_sent.lock().unwrap().extend(frames);
    }

    const PUSH_BACK_ON_TLS: bool = false;

    const CLAIM_FOR_TLS_WRITES: bool = true;

    fn dropped(&self, count: usize) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    fn count(&self, direction: Direction, packets: u64, _: u64) {
        let counter = match direction {
            Direction::Out => &self.packets_out,
            Direction::In => &self.packets_in,
        };
        counter.fetch_add(packets as usize, Ordering::Relaxed);
    }

    fn drain_tls<T: TunIo>(&self, _: &Device<Self, T>, _: &mut TlsIn<Self>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// An IPv4 packet of `len` bytes from `src` to `dst` carrying `proto`, its payload
/// filled with `tag`.
fn ipv4(src: IpAddr, dst: [u8; 4], proto: u8, len: usize, tag: u8) -> Vec<u8> {
    let IpAddr::V4(src) = src else { unreachable!() };
    let mut p = vec![tag; len];
    p[..20].fill(0);
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst);
    p
}

const UDP: u8 = 17;
const TCP: u8 = 6;
const CORP: [u8; 4] = [172, 16, 0, 1];
const CORP_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(172, 16, 0, 1));

fn to_peer(peer: &FakePeer, proto: u8, len: usize, tag: u8) -> Vec<u8> {
    let IpAddr::V4(dst) = peer.addr else {
        unreachable!()
    };
    ipv4(CORP_IP, dst.octets(), proto, len, tag)
}

/// A socket standing for a peer's ESP address, and that address.
fn peer_socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// The device under test: the fake TUN device, a real ESP socket on loopback.
fn device(end: &FakeEnd, tun: &Arc<FakeTun>) -> (Device<FakeEnd, FakeTun>, SocketAddr) {
    let _ = end;
    let esp = UdpSocket::bind("127.0.0.1:0").unwrap();
    esp.set_nonblocking(true).unwrap();
    let at = esp.local_addr().unwrap();
    let stop = Arc::new(Stop::new().unwrap());
    let device = Device::new(tun.clone(), Some(Arc::new(esp)), None, stop, true).unwrap();
    (device, at)
}

/// Every datagram `sock` received (until `want` have come), whole.
fn datagrams(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    let mut batch = RecvBatch::new(8, 65_536);
    let mut got = Vec::new();
    while got.len() < want {
        batch.recv(sock).unwrap();
        for (r, bytes) in batch.messages() {
            got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
        }
    }
    sock.set_nonblocking(true).unwrap();
    assert!(batch.recv(sock).is_err(), "no more than {want} datagrams");
    got
}

/// The datagram a peer receives for `packet`, sealed once.
fn sealed(peer: &FakePeer, packet: &[u8]) -> Vec<u8> {
    let mut d = peer.spi.to_be_bytes().to_vec();
    d.push(1);
    d.extend_from_slice(packet);
    d
}

/// Drains the TUN device until it is empty (a drain may end early after an idle spell).
fn drain_all(end: &FakeEnd, device: &Device<FakeEnd, FakeTun>, tun: &FakeTun) {
    for _ in 0..100 {
        assert_eq!(drain_tun(end, device), ControlFlow::Continue(()));
        if tun.queued() == 0 {
            return;
        }
    }
    panic!("the TUN device was not drained");
}

/// The send path: each packet goes to the peer its destination names, over ESP sealed
/// exactly once, in the order read; a packet for no peer is dropped and counted; a packet
/// too big for the peer is dropped alone; a peer whose ESP is down gets TLS frames, sent
/// from the thread by the drain's end; nothing is left held in a train.
#[test]
fn the_send_path_takes_each_packet_to_its_peer() {
    let (rx_a, at_a) = peer_socket();
    let (rx_b, at_b) = peer_socket();
    let mut end = FakeEnd::default();
    let a = end.peer(2, Some(at_a), false);
    let b = end.peer(3, Some(at_b), false);
    let c = end.peer(4, None, true);
    let tun = FakeTun::new();
    let (device, _) = device(&end, &tun);
    let (a1, a2, a3) = (
        to_peer(&a, UDP, 100, 1),
        to_peer(&a, UDP, 100, 2),
        to_peer(&a, UDP, 60, 3),
    );
    let b1 = to_peer(&b, UDP, 200, 4);
    let c1 = to_peer(&c, TCP, 80, 5);
    let too_big = to_peer(&a, UDP, 3000, 6);
    let nobody = ipv4(CORP_IP, [10, 9, 9, 9], UDP, 100, 7);
    for p in [&a1, &a2, &b1, &nobody, &c1, &too_big, &a3] {
        tun.queue(p.clone());
    }
    drain_all(&end, &device, &tun);
    assert_eq!(
        datagrams(&rx_a, 3),
        vec![sealed(&a, &a1), sealed(&a, &a2), sealed(&a, &a3)]
    );
    assert_eq!(datagrams(&rx_b, 1), vec![sealed(&b, &b1)]);
    assert_eq!(
        end.dropped.load(Ordering::Relaxed),
        1,
        "no peer for 10.9.9.9"
    );
    assert_eq!(*c.tls_sent.lock().unwrap(), frame(&c1), "over TLS, sent");
    assert!(
        c.proto.lock().unwrap().tls.is_empty(),
        "nothing left queued"
    );
    assert_eq!(end.packets_out.load(Ordering::Relaxed), 6);
    assert!(tun.written().is_empty());
}

/// A peer whose ESP address is not known yet gets nothing, and its datagrams are not sent
/// to the next peer's address either.
#[test]
fn datagrams_for_a_peer_with_no_address_are_forgotten() {
    let (rx_b, at_b) = peer_socket();
    let mut end = FakeEnd::default();
    let a = end.peer(2, None, false);
    let b = end.peer(3, Some(at_b), false);
    let tun = FakeTun::new();
    let (device, _) = device(&end, &tun);
    let (a1, b1) = (to_peer(&a, UDP, 100, 1), to_peer(&b, UDP, 100, 2));
    for p in [&a1, &a1, &b1] {
        tun.queue(p.clone());
    }
    drain_all(&end, &device, &tun);
    assert_eq!(datagrams(&rx_b, 1), vec![sealed(&b, &b1)]);
}

/// The ESP receive path: each datagram is opened by the peer its SPI names and its packet
/// written into the TUN device when its source is the peer's; a spoofed source is refused,
/// an unknown SPI dropped, a datagram that does not open dropped; where authenticated ESP
/// came from is reported. UDP answers nothing within the write: the TUN device is left
/// alone (an answer queued meanwhile stays for its reader).
#[test]
fn the_receive_path_writes_what_each_peer_may_send() {
    let mut end = FakeEnd::default();
    let (rx_a, at_a) = peer_socket();
    let a = end.peer(2, Some(at_a), false);
    let b = end.peer(3, None, false);
    let tun = FakeTun::new();
    let (device, esp_at) = device(&end, &tun);
    let from_a = ipv4(a.addr, CORP, UDP, 120, 1);
    let spoofed = ipv4(b.addr, CORP, UDP, 120, 2);
    let from_b = ipv4(b.addr, CORP, UDP, 300, 3);
    let mut unsealed = sealed(&a, &from_a);
    unsealed[4] = 0;
    let mut unknown = sealed(&a, &from_a);
    unknown[..4].copy_from_slice(&0xdead_u32.to_be_bytes());
    tun.answers
        .lock()
        .unwrap()
        .push((from_a.clone(), to_peer(&a, UDP, 90, 9)));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    for d in [
        sealed(&a, &from_a),
        sealed(&a, &spoofed),
        unknown,
        unsealed,
        sealed(&b, &from_b),
    ] {
        tx.send_to(&d, esp_at).unwrap();
    }
    assert_eq!(drain_esp(&end, &device), ControlFlow::Continue(()));
    assert_eq!(tun.written(), vec![from_a, from_b]);
    assert_eq!(end.refused.load(Ordering::Relaxed), 1, "the spoofed source");
    assert_eq!(end.dropped.load(Ordering::Relaxed), 1, "the unknown SPI");
    assert_eq!(end.packets_in.load(Ordering::Relaxed), 2);
    let from = tx.local_addr().unwrap();
    assert_eq!(*a.heard.lock().unwrap(), vec![from, from]);
    assert_eq!(*b.heard.lock().unwrap(), vec![from]);
    assert_eq!(tun.queued(), 1, "a UDP write is not followed by a TUN read");
    rx_a.set_nonblocking(true).unwrap();
    assert!(rx_a.recv(&mut [0; 64]).is_err(), "nothing forwarded");
}

/// A packet the local stack may answer within the write (TCP) is written holding the TUN
/// device, and the answer is forwarded by the same thread; the device is given back after.
#[test]
fn the_receive_path_forwards_what_its_writes_were_answered() {
    let mut end = FakeEnd::default();
    let (rx_a, at_a) = peer_socket();
    let a = end.peer(2, Some(at_a), false);
    let tun = FakeTun::new();
    let (device, esp_at) = device(&end, &tun);
    let segment = ipv4(a.addr, CORP, TCP, 200, 1);
    let ack = to_peer(&a, TCP, 40, 2);
    tun.answers
        .lock()
        .unwrap()
        .push((segment.clone(), ack.clone()));
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    tx.send_to(&sealed(&a, &segment), esp_at).unwrap();
    assert_eq!(drain_esp(&end, &device), ControlFlow::Continue(()));
    assert_eq!(tun.written(), vec![segment]);
    assert_eq!(
        datagrams(&rx_a, 1),
        vec![sealed(&a, &ack)],
        "the ACK forwarded"
    );
    assert_eq!(tun.queued(), 0);
    assert!(
        device.dispatch.claim(Source::Tun, &device.stop).is_some(),
        "the TUN device was given back"
    );
}

/// The TLS receive path: the packets of a peer's TLS bytes that it may send are written
/// into the TUN device, with what their writes were answered forwarded; bytes from a
/// connection with no session yet write nothing.
#[test]
fn the_tls_receive_path_writes_what_the_peer_may_send() {
    let mut end = FakeEnd::default();
    let (rx_a, at_a) = peer_socket();
    let a = end.peer(2, Some(at_a), false);
    let tun = FakeTun::new();
    let (device, _) = device(&end, &tun);
    let segment = ipv4(a.addr, CORP, TCP, 200, 1);
    let spoofed = ipv4(CORP_IP, CORP, TCP, 100, 2);
    let ack = to_peer(&a, TCP, 40, 3);
    tun.answers
        .lock()
        .unwrap()
        .push((segment.clone(), ack.clone()));
    let data = [frame(&segment), frame(&spoofed)].concat();
    let mut sink = TunSink::new(&*tun);
    let mut scratch = ();
    let mut to_tun = ToTun::new(Some((&*tun, &mut sink)), &mut scratch, Some(&device));
    let attention = to_tun.open(&end, &mut a.proto.lock().unwrap(), Some(&a), &data);
    to_tun.finish(&end);
    assert!(!attention.unwrap(), "nothing for the owner");
    assert_eq!(tun.written(), vec![segment.clone()]);
    assert_eq!(end.refused.load(Ordering::Relaxed), 1);
    assert_eq!(
        datagrams(&rx_a, 1),
        vec![sealed(&a, &ack)],
        "the ACK forwarded"
    );

    let mut to_tun = ToTun::new(Some((&*tun, &mut sink)), &mut scratch, Some(&device));
    let _ = to_tun.open(&end, &mut a.proto.lock().unwrap(), None, &frame(&segment));
    to_tun.finish(&end);
    assert!(tun.written().is_empty(), "no session: nothing written");
    assert_eq!(end.dropped.load(Ordering::Relaxed), 1);
}
