//! Sealed ESP datagrams waiting to be sent with UDP GSO ([`Train`]: same-size datagrams for
//! one peer, one buffer), and the trains one read of the TUN device fills ([`Trains`]).
//!
//! A train's buffer is made when the first datagram is staged into it, so an end that sends
//! nothing over ESP (TLS only, or idle since it started) holds none, and only a read that
//! fills more than one train makes the next.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    sync::atomic::AtomicBool,
};

use tunnel_packet::MAX_PACKET;

use crate::sys::udp_gso;

/// Sealed ESP datagrams for one peer, sent together with UDP GSO: all the same size except
/// possibly the last. How many there are, and whether the last was shorter (then nothing
/// more may join), follow from the bytes used and the size.
pub(crate) struct Train {
    /// Empty until the first datagram is staged ([`TRAIN_BYTES`] from then on).
    buf: Vec<u8>,
    /// Bytes of the datagrams in `buf` (none is empty: each carries an ESP header).
    used: usize,
    /// The first datagram's length, which the others have but the last.
    size: usize,
    /// The first `sealed` bytes are sealed: a train that is held across TUN reads is sealed
    /// a read at a time, each under that read's lock.
    sealed: usize,
    /// A datagram that could not join sits at `buf[used..used + spill]`.
    spill: usize,
}

impl Default for Train {
    fn default() -> Self {
        Self::new()
    }
}

/// A train's buffer: a full GSO send, and room for the largest datagram that may not join.
const TRAIN_BYTES: usize = udp_gso::MAX_GSO_BYTES + MAX_PACKET + tunnel_proto::MAX_OVERHEAD;

impl Train {
    pub(crate) fn new() -> Self {
        Train {
            buf: Vec::new(),
            used: 0,
            size: 0,
            sealed: 0,
            spill: 0,
        }
    }

    /// Where the next datagram is to be sealed.
    pub(crate) fn slot(&mut self) -> &mut [u8] {
        self.allocate();
        &mut self.buf[self.used..]
    }

    fn allocate(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0u8; TRAIN_BYTES];
        }
    }

    /// Takes the `len`-byte datagram just sealed into [`Self::slot`]. Returns true when the
    /// train must be sent before the next one is sealed.
    pub(crate) fn commit(&mut self, len: usize) -> bool {
        if self.used == 0 {
            self.size = len;
        } else if self.closed() || len > self.size {
            self.spill = len;
            return true;
        }
        self.used += len;
        self.closed()
            || self.len() == udp_gso::MAX_GSO_SEGMENTS
            || self.used + self.size > udp_gso::MAX_GSO_BYTES
    }

    /// The last datagram was shorter than the others: nothing more may join.
    fn closed(&self) -> bool {
        self.size > 0 && !self.used.is_multiple_of(self.size)
    }

    /// The datagrams staged since the train was last sealed, for sealing in place, and their
    /// size (the last may be shorter).
    pub(crate) fn unsealed_mut(&mut self) -> (&mut [u8], usize) {
        (&mut self.buf[self.sealed..self.used], self.size)
    }

    /// Notes that everything staged so far is sealed.
    pub(crate) fn mark_sealed(&mut self) {
        self.sealed = self.used;
    }

    /// Datagrams waiting.
    pub(crate) fn len(&self) -> usize {
        if self.size == 0 {
            0
        } else {
            self.used.div_ceil(self.size)
        }
    }

    /// Sends what is waiting to `to` (or the connected peer).
    pub(crate) fn flush(
        &mut self,
        sock: &UdpSocket,
        to: Option<SocketAddr>,
        gso: &AtomicBool,
    ) -> io::Result<()> {
        let r = if self.used > 0 {
            udp_gso::send(sock, &self.buf[..self.used], self.size, to, gso)
        } else {
            Ok(())
        };
        self.drop_pending();
        r
    }

    /// Forgets the datagrams waiting to be sent; a datagram that could not join them
    /// becomes the start of the next train.
    pub(crate) fn drop_pending(&mut self) {
        self.sealed = 0;
        self.forget_unsealed();
        let spill = std::mem::take(&mut self.spill);
        if spill > 0 {
            self.commit(spill);
        }
    }

    /// Forgets the datagrams staged since the train was last sealed (sealing them failed);
    /// the sealed ones stay, and a datagram that could not join stays apart, for
    /// [`Trains::next`] to move into the next train.
    pub(crate) fn forget_unsealed(&mut self) {
        self.buf
            .copy_within(self.used..self.used + self.spill, self.sealed);
        self.used = self.sealed;
    }

    /// Forgets what is waiting (the peer went away).
    pub(crate) fn clear(&mut self) {
        self.used = 0;
        self.sealed = 0;
        self.spill = 0;
    }
}

/// Datagrams (or packets over TLS) a TUN side holds across reads before it sends them.
/// Sending per packet would cost a flood of small packets most of its rate: on a veth the
/// send also runs the receiving side's stack, once per send, so a batch pays it once.
pub(crate) const SEND_BATCH: usize = 32;

/// Trains held across reads, at most: each size change starts another, and each is 64 KB.
const MAX_TRAINS_HELD: usize = 4;

/// Trains filled and sealed while the state machine is locked and sent once it is released.
/// A GSO packet from the TUN device can fill more than one train, and a UDP send (which on
/// a veth also runs the receiving side's stack) takes too long to hold the lock that the
/// thread of the other direction needs for every packet it opens.
///
/// The caller stages into [`Self::slot`]; when [`Self::commit`] says the current train is
/// complete it calls [`Self::seal_current`] and [`Self::next`]; at the end of a batch it
/// seals the current train, releases the lock and calls [`Self::send`].
pub(crate) struct Trains {
    trains: Vec<Train>,
    current: usize,
    /// Whether the kernel takes GSO sends (cleared the first time it refuses one).
    gso: AtomicBool,
}

impl Default for Trains {
    fn default() -> Self {
        Self::new()
    }
}

impl Trains {
    pub(crate) fn new() -> Self {
        Trains {
            trains: vec![Train::new()],
            current: 0,
            gso: AtomicBool::new(true),
        }
    }

    /// Where the next datagram is to be staged.
    pub(crate) fn slot(&mut self) -> &mut [u8] {
        self.trains[self.current].slot()
    }

    /// Takes the `len`-byte datagram staged into [`Self::slot`]; true when the current train
    /// is complete.
    pub(crate) fn commit(&mut self, len: usize) -> bool {
        self.trains[self.current].commit(len)
    }

    /// Seals the datagrams staged into the current train since it was last sealed, in place
    /// with `seal` (given them and their size); nothing to seal, nothing called. When it
    /// fails (the keys changed since they were staged) none of them is ever sent, and a
    /// datagram that did not fit the train still moves into the next one.
    pub(crate) fn seal_current<E>(
        &mut self,
        seal: impl FnOnce(&mut [u8], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let train = &mut self.trains[self.current];
        let (unsealed, size) = train.unsealed_mut();
        if unsealed.is_empty() {
            return Ok(());
        }
        let r = seal(unsealed, size);
        match r {
            Ok(()) => train.mark_sealed(),
            Err(_) => train.forget_unsealed(),
        }
        r
    }

    /// Starts the next train (made on first use, kept for reuse); a datagram that did not
    /// fit the complete one moves into it.
    pub(crate) fn next(&mut self) {
        if self.current + 1 == self.trains.len() {
            self.trains.push(Train::new());
        }
        let (done, rest) = self.trains.split_at_mut(self.current + 1);
        let (done, next) = (&mut done[self.current], &mut rest[0]);
        next.clear();
        let spill = std::mem::take(&mut done.spill);
        if spill > 0 {
            next.allocate();
            next.buf[..spill].copy_from_slice(&done.buf[done.used..done.used + spill]);
            next.commit(spill);
        }
        self.current += 1;
    }

    /// Whether the trains are to be sent before more is staged: [`SEND_BATCH`] datagrams
    /// held, or as many trains as are held at most.
    pub(crate) fn full(&self) -> bool {
        self.current + 1 >= MAX_TRAINS_HELD || self.len() >= SEND_BATCH
    }

    /// Datagrams in all trains.
    pub(crate) fn len(&self) -> usize {
        self.trains[..=self.current].iter().map(Train::len).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends every train, in order, to `to` (or the connected peer); the set is empty
    /// afterwards. The first error is returned, after the other trains went out.
    pub(crate) fn send(&mut self, sock: &UdpSocket, to: Option<SocketAddr>) -> io::Result<()> {
        let mut result = Ok(());
        for t in &mut self.trains[..=self.current] {
            let r = t.flush(sock, to, &self.gso);
            if result.is_ok() {
                result = r;
            }
        }
        self.current = 0;
        result
    }

    /// Sends every train to `to` (or the connected peer) through `sock`, or forgets them when
    /// there is no socket; the set is empty afterwards.
    pub(crate) fn send_or_forget(
        &mut self,
        sock: Option<&UdpSocket>,
        to: Option<SocketAddr>,
    ) -> io::Result<()> {
        match sock {
            Some(sock) => self.send(sock, to),
            None => {
                self.clear();
                Ok(())
            }
        }
    }

    /// Forgets every train (no peer, no socket).
    pub(crate) fn clear(&mut self) {
        for t in &mut self.trains[..=self.current] {
            t.clear();
        }
        self.current = 0;
    }

    /// Bytes of train buffers held.
    #[cfg(test)]
    pub(crate) fn resident(&self) -> usize {
        self.trains.iter().map(|t| t.buf.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use super::*;

    /// A receiving socket (large buffers, UDP GRO, reads time out after 2 s), a sending one,
    /// and the receiver's address.
    fn loopback() -> (UdpSocket, UdpSocket, SocketAddr) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp_gso::tune(&rx);
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = rx.local_addr().unwrap();
        (rx, tx, to)
    }

    /// Datagrams of one size travel together; a shorter one closes the train; a longer one
    /// waits for the next; every byte arrives once and in order.
    #[test]
    fn trains_keep_datagrams_whole_and_in_order() {
        let (rx, tx, to) = loopback();
        let gso = AtomicBool::new(true);
        let mut train = Train::new();
        let lens = [1000, 1000, 1000, 600, 1000, 1200, 1200, 1300];
        let mut sent = Vec::new();
        let mut sends = 0;
        for (i, &len) in lens.iter().enumerate() {
            let d: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
            train.slot()[..len].copy_from_slice(&d);
            sent.push(d);
            if train.commit(len) {
                train.flush(&tx, Some(to), &gso).unwrap();
                sends += 1;
            }
        }
        train.flush(&tx, Some(to), &gso).unwrap();
        sends += 1;
        assert_eq!(train.len(), 0);
        assert_eq!(
            sends, 4,
            "600 closes one train; 1200 and 1300 do not join the one before"
        );
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        while got.len() < sent.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        assert!(gso.load(Ordering::Relaxed));
    }

    /// A batch that fills several trains keeps every datagram once and in order, the one
    /// that did not fit a complete train included, and an emptied set starts over.
    #[test]
    fn a_set_of_trains_keeps_order_across_trains() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        let mut sent = Vec::new();
        let mut trains = 1;
        // 70 full datagrams (more than one train holds), a short one, then longer ones.
        let lens: Vec<usize> = (0..70).map(|_| 1000).chain([400, 1200, 1200]).collect();
        for (i, &len) in lens.iter().enumerate() {
            let d: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
            set.slot()[..len].copy_from_slice(&d);
            sent.push(d);
            if set.commit(len) {
                set.next();
                trains += 1;
            }
        }
        assert_eq!(set.len(), lens.len());
        assert!(trains >= 3, "{trains} trains");
        set.send(&tx, Some(to)).unwrap();
        assert!(set.is_empty());
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(16, 65_536);
        while got.len() < sent.len() {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
        // Reused: one more datagram goes out alone.
        set.slot()[..3].copy_from_slice(b"one");
        set.commit(3);
        set.send(&tx, Some(to)).unwrap();
        batch.recv(&rx).unwrap();
        assert_eq!(batch.message(0), b"one");
    }

    /// A train whose sealing failed sends nothing; the datagram that did not fit it is
    /// neither lost nor left behind in it.
    #[test]
    fn a_forgotten_train_sends_nothing_but_keeps_the_one_that_did_not_fit() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        for _ in 0..3 {
            set.slot()[..1000].fill(b'f');
            assert!(!set.commit(1000));
        }
        set.slot()[..1200].fill(b'k');
        assert!(set.commit(1200), "a longer datagram completes the train");
        assert_eq!(
            set.seal_current(|_, _| Err("keys changed")),
            Err("keys changed")
        );
        set.next();
        assert_eq!(set.len(), 1);
        set.send(&tx, Some(to)).unwrap();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        assert_eq!(batch.recv(&rx).unwrap(), 1);
        assert_eq!(batch.message(0), &[b'k'; 1200][..]);
        rx.set_nonblocking(true).unwrap();
        assert!(batch.recv(&rx).is_err(), "nothing else was sent");
    }

    /// A train held across reads is sealed a read at a time: each seal sees only what was
    /// staged since the last, so every datagram is sealed exactly once; a failed seal
    /// forgets only its own datagrams, and the one that did not fit still moves on.
    #[test]
    fn a_train_held_across_reads_is_sealed_a_read_at_a_time() {
        let (rx, tx, to) = loopback();
        let mut set = Trains::new();
        // "Sealing" adds 1 to every byte: twice would show.
        let seal = |ok: bool| {
            move |d: &mut [u8], _size: usize| {
                d.iter_mut().for_each(|b| *b += 1);
                if ok { Ok(()) } else { Err("keys changed") }
            }
        };
        let stage = |set: &mut Trains, byte: u8, len: usize| {
            set.slot()[..len].fill(byte);
            set.commit(len)
        };
        // Read 1: two datagrams; read 2: one.
        assert!(!stage(&mut set, 10, 100) && !stage(&mut set, 20, 100));
        assert_eq!(set.seal_current(seal(true)), Ok(()));
        assert!(!stage(&mut set, 30, 100));
        let mut seen = 0;
        set.seal_current(|d, size| {
            seen = d.len();
            assert_eq!(size, 100);
            seal(true)(d, size)
        })
        .unwrap();
        assert_eq!(seen, 100, "only the datagram staged since the last seal");
        // Read 3: its seal fails; read 4 stages a longer datagram, which completes the train.
        assert!(!stage(&mut set, 40, 100));
        assert_eq!(set.seal_current(seal(false)), Err("keys changed"));
        assert_eq!(set.len(), 3, "the sealed ones stay");
        assert!(
            stage(&mut set, 50, 200),
            "a longer datagram completes the train"
        );
        // Nothing unsealed is left in the complete train: the seal is not called.
        set.seal_current(|_, _| -> Result<(), &str> { panic!("nothing to seal") })
            .unwrap();
        set.next();
        set.seal_current(seal(true)).unwrap();
        assert_eq!(set.len(), 4);
        set.send(&tx, Some(to)).unwrap();
        let mut got = Vec::new();
        let mut batch = udp_gso::RecvBatch::new(8, 65_536);
        while got.len() < 4 {
            batch.recv(&rx).unwrap();
            for (r, bytes) in batch.messages() {
                got.extend(bytes.chunks(r.size).map(<[u8]>::to_vec));
            }
        }
        let want: Vec<Vec<u8>> = [(11, 100), (21, 100), (31, 100), (51, 200)]
            .iter()
            .map(|&(b, n)| vec![b; n])
            .collect();
        assert_eq!(got, want);
    }

    /// Trains held across reads go out at [`SEND_BATCH`] datagrams, or when as many trains
    /// as are held have been started (sizes keep changing).
    #[test]
    fn held_trains_are_full_at_a_batch_or_at_the_train_limit() {
        let mut set = Trains::new();
        for i in 0..SEND_BATCH {
            assert!(!set.full(), "{i} datagrams held");
            set.slot()[..80].fill(1);
            assert!(!set.commit(80));
        }
        assert!(set.full());
        set.clear();
        for len in [100, 200, 300, 400] {
            assert!(!set.full());
            set.slot()[..len].fill(1);
            if set.commit(len) {
                set.next();
            }
        }
        assert_eq!(set.len(), 4);
        assert!(set.full(), "four trains held");
    }

    #[test]
    fn a_full_train_asks_to_be_sent() {
        let mut train = Train::new();
        let mut n = 0;
        while !train.commit(1400) {
            n += 1;
        }
        assert_eq!(n + 1, udp_gso::MAX_GSO_BYTES / 1400);
        assert!(train.len() * 1400 <= udp_gso::MAX_GSO_BYTES);
    }

    /// An end that sends nothing over ESP holds no train buffer; a read that fills one
    /// train makes one, and only a read that fills more makes the next.
    #[test]
    fn train_buffers_are_made_when_first_used() {
        let mut set = Trains::new();
        assert_eq!(set.resident(), 0);
        set.slot()[..100].fill(1);
        set.commit(100);
        let one = set.resident();
        assert!(one > udp_gso::MAX_GSO_BYTES);
        set.clear();
        set.slot()[..100].fill(1);
        assert_eq!(set.resident(), one, "reused");
        set.commit(100);
        set.slot()[..200].fill(1);
        assert!(set.commit(200));
        set.next();
        assert_eq!(set.resident(), 2 * one);
    }
}
