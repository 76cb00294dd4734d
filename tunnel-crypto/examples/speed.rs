//! Quick speed check of the kernels: ns per 1424-byte packet, batched and alone.
use std::time::Instant;
use tunnel_crypto::{AesCbc, CbcLane, HmacSha1};

fn main() {
    let n = 46;
    let mut bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1408]).collect();
    let k = AesCbc::new(&[3; 16]).unwrap();
    let h = HmacSha1::new(&[5; 20]);
    let iters = 20_000;
    let t = Instant::now();
    for _ in 0..iters {
        let mut lanes: Vec<CbcLane<'_>> = bufs
            .iter_mut()
            .map(|b| CbcLane {
                iv: [1; 16],
                data: &mut b[..],
            })
            .collect();
        k.encrypt_lanes(&mut lanes).unwrap();
    }
    println!(
        "cbc encrypt batched: {:.0} ns/pkt",
        t.elapsed().as_nanos() as f64 / (iters * n) as f64
    );
    let t = Instant::now();
    for _ in 0..iters {
        for b in bufs.iter_mut() {
            k.encrypt(&[1; 16], b).unwrap();
        }
    }
    println!(
        "cbc encrypt alone: {:.0} ns/pkt",
        t.elapsed().as_nanos() as f64 / (iters * n) as f64
    );
    let t = Instant::now();
    for _ in 0..iters {
        for b in bufs.iter_mut() {
            k.decrypt(&[1; 16], b).unwrap();
        }
    }
    println!(
        "cbc decrypt: {:.0} ns/pkt",
        t.elapsed().as_nanos() as f64 / (iters * n) as f64
    );
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 1424]).collect();
    let views: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
    let mut tags = vec![[0u8; 20]; n];
    let t = Instant::now();
    for _ in 0..iters {
        h.sign_many(&views, &mut tags);
    }
    println!(
        "hmac batched ({:?}): {:.0} ns/pkt",
        h.backend(),
        t.elapsed().as_nanos() as f64 / (iters * n) as f64
    );
    let t = Instant::now();
    for _ in 0..iters {
        for (m, tg) in views.iter().zip(tags.iter_mut()) {
            *tg = h.sign(m);
        }
    }
    println!(
        "hmac alone: {:.0} ns/pkt",
        t.elapsed().as_nanos() as f64 / (iters * n) as f64
    );
}
