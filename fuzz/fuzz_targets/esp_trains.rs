//! ESP trains against one-by-one ESP, differentially: a train staged and sealed at once must
//! hold the bytes `encapsulate` writes packet by packet, and opening a train (tampered
//! anywhere, with repeated or foreign datagrams) must give, datagram by datagram, what
//! `decapsulate` gives, for every suite. This drives the batched AES-CBC and HMAC-SHA1
//! kernels with arbitrary lengths and lane counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_proto::*;

/// The same bytes for both sides, from the input.
struct Stream(Vec<u8>, usize);
impl RandomSource for Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.0.get(self.1 % self.0.len().max(1)).copied().unwrap_or(7);
            self.1 += 1;
        }
    }
}

const SPI: u32 = 0x0a0b_0c0d;

fuzz_target!(|data: &[u8]| {
    let [sel, count, len_hi, len_lo, last, rest @ ..] = data else {
        return;
    };
    let suite = EspSuite::ALL[usize::from(*sel) % EspSuite::ALL.len()];
    let enc = vec![0x31; suite.cipher.key_len()];
    let mac = vec![0x42; suite.mac.key_len()];
    let count = usize::from(*count % 40);
    let len = 20 + (usize::from(*len_hi) << 8 | usize::from(*len_lo)) % 1500;
    let last = 20 + usize::from(*last) * 4 % len.max(1);
    let packets: Vec<Vec<u8>> = (0..=count)
        .map(|i| {
            let n = if i == count { last.min(len) } else { len };
            let mut p: Vec<u8> = (0..n)
                .map(|j| rest.get((i * 31 + j) % rest.len().max(1)).copied().unwrap_or(j as u8))
                .collect();
            p[0] = if sel & 0x80 == 0 { 0x45 } else { 0x60 };
            p
        })
        .collect();

    // Sealing: a staged train equals one-by-one encapsulation with the same randomness.
    let mut a = OutboundSa::new(suite, SPI, &enc, &mac).expect("out");
    let mut b = OutboundSa::new(suite, SPI, &enc, &mac).expect("out");
    let (mut ra, mut rb) = (Stream(rest.to_vec(), 0), Stream(rest.to_vec(), 0));
    let mut train = Vec::new();
    let mut want = Vec::new();
    let mut size = 0;
    for p in &packets {
        let mut d = vec![0u8; p.len() + MAX_OVERHEAD];
        let n = a.stage(p, &mut d, &mut ra).expect("stage");
        size = size.max(n);
        train.extend_from_slice(&d[..n]);
        let m = b.encapsulate(p, &mut d, &mut rb).expect("encapsulate");
        want.extend_from_slice(&d[..m]);
    }
    a.seal_train(&mut train, size).expect("seal");
    assert_eq!(train, want, "sealed train differs from one-by-one");

    // Opening: maybe repeat the first datagram as the second, maybe flip input-chosen
    // bits, then compare.
    if sel & 0x40 != 0 && train.len() >= 2 * size {
        let (x, y) = train.split_at_mut(size);
        y[..size].copy_from_slice(&x[..size]);
    }
    if sel & 0x20 != 0 {
        for pos in rest.chunks_exact(3).take(4) {
            let at = (usize::from(pos[0]) << 8 | usize::from(pos[1])) % train.len();
            train[at] ^= 1 << (pos[2] % 8);
        }
    }
    let inb = InboundSa::new(suite, SPI, &enc, &mac).expect("in");
    let mut one = inb.clone();
    let mut copy = train.clone();
    let expected: Vec<Result<Vec<u8>, EspError>> = copy
        .chunks_mut(size)
        .map(|d| one.decapsulate(d).map(|p| p.payload.to_vec()))
        .collect();
    let mut batch = inb;
    let mut got = Vec::new();
    batch.decapsulate_train(&mut train, size, |r| got.push(r.map(|p| p.payload.to_vec())));
    let kinds = |v: &[Result<Vec<u8>, EspError>]| -> Vec<String> {
        v.iter()
            .map(|r| match r {
                Ok(p) => format!("ok({})", p.len()),
                Err(e) => format!("{e:?}"),
            })
            .collect()
    };
    assert_eq!(
        got,
        expected,
        "opened train differs from one-by-one: train {:?}, one by one {:?} (size {size}, {} bytes)",
        kinds(&got),
        kinds(&expected),
        train.len()
    );
    assert_eq!(batch.window(), one.window());
});
