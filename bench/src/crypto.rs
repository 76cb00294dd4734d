//! The single-core crypto ceiling: how fast our own ESP code seals and opens packets on one
//! core, per suite, with no I/O. A tunnel cannot move data faster than this on one core, so
//! it is the yardstick for the throughput figures.
//!
//! Each measurement seals (or opens) 1400-byte IP packets, the size a full-MTU TCP segment
//! has inside the tunnel, in a loop for a fixed time on the calling thread, and reports
//! plaintext Gbit/s: one packet at a time (`encapsulate`, `decapsulate`), and in trains of
//! [`TRAIN`] packets as the fast path moves them (`stage` + `seal_train`,
//! `decapsulate_train`: one UDP GSO send or GRO receive). Opening uses datagrams sealed
//! beforehand, with replay protection off so the same datagrams can be opened again.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Serialize;
use tunnel_proto::{EspSuite, InboundSa, MAX_OVERHEAD, OsRandom, OutboundSa};

use crate::stats::Summary;

/// Plaintext bytes per packet.
pub const PACKET: usize = 1400;
/// Packets per train: what one 64 KB GSO packet from the TUN device becomes.
pub const TRAIN: usize = 45;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub repeats: usize,
    pub quick: bool,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub suite: &'static str,
    pub seal_gbps: Summary,
    pub open_gbps: Summary,
    /// Nanoseconds per packet, sealing (median).
    pub seal_ns: f64,
    /// Nanoseconds per packet, opening (median).
    pub open_ns: f64,
    /// The same in trains of [`TRAIN`] packets.
    pub train_seal_gbps: Summary,
    pub train_open_gbps: Summary,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub packet_bytes: usize,
    pub rows: Vec<Row>,
}

fn ip_packet() -> Vec<u8> {
    let mut p = vec![0u8; PACKET];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PACKET as u16).to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(20) {
        *b = i as u8;
    }
    p
}

fn sas(suite: EspSuite) -> Result<(OutboundSa, InboundSa)> {
    let enc = vec![0x11u8; suite.cipher.key_len()];
    let mac = vec![0x22u8; suite.mac.key_len()];
    let out = OutboundSa::new(suite, 0x1000, &enc, &mac).map_err(|e| anyhow!("{e}"))?;
    let mut inb = InboundSa::new(suite, 0x1000, &enc, &mac).map_err(|e| anyhow!("{e}"))?;
    inb.set_replay_protection(false);
    Ok((out, inb))
}

/// Runs `op` (which handles `per_op` packets) repeatedly for `time`; returns packets per
/// second.
fn rate(time: Duration, per_op: usize, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        for _ in 0..16 {
            op()?;
        }
        n += 16 * per_op as u64;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn gbps(pps: f64) -> f64 {
    pps * (PACKET * 8) as f64 / 1e9
}

pub fn run(opts: &Options) -> Result<Report> {
    let time = Duration::from_millis(if opts.quick { 200 } else { 1000 });
    let packet = ip_packet();
    // Warm up: the first suite measured would otherwise also pay for a CPU that is still
    // busy with what ran before (the tunnel comparison's teardown) or not yet clocked up.
    {
        let (mut out, _) = sas(EspSuite::ALL[0])?;
        let mut buf = vec![0u8; PACKET + MAX_OVERHEAD];
        rate(time, 1, || {
            out.encapsulate(&packet, &mut buf, &mut OsRandom)
                .map(|_| ())
                .map_err(|e| anyhow!("{e}"))
        })?;
    }
    let mut rows = Vec::new();
    for suite in EspSuite::ALL {
        eprintln!("crypto: {}", suite.name());
        let (mut out, mut inb) = sas(suite)?;
        let mut rng = OsRandom;
        let mut buf = vec![0u8; PACKET + MAX_OVERHEAD];
        let sealed_len = out
            .encapsulate(&packet, &mut buf, &mut rng)
            .map_err(|e| anyhow!("{e}"))?;
        let sealed = buf[..sealed_len].to_vec();
        let mut work = sealed.clone();
        let (mut seal, mut open) = (Vec::new(), Vec::new());
        let (mut train_seal, mut train_open) = (Vec::new(), Vec::new());
        let mut train = vec![0u8; TRAIN * sealed_len];
        let stage_train = |out: &mut OutboundSa, train: &mut [u8], rng: &mut OsRandom| {
            for slot in train.chunks_mut(sealed_len) {
                out.stage(&packet, slot, rng).map_err(|e| anyhow!("{e}"))?;
            }
            out.seal_train(train, sealed_len)
                .map_err(|e| anyhow!("{e}"))
        };
        stage_train(&mut out, &mut train, &mut rng)?;
        let sealed_train = train.clone();
        for _ in 0..opts.repeats {
            seal.push(gbps(rate(time, 1, || {
                out.encapsulate(&packet, &mut buf, &mut rng)
                    .map(|_| ())
                    .map_err(|e| anyhow!("{e}"))
            })?));
            open.push(gbps(rate(time, 1, || {
                work.copy_from_slice(&sealed);
                let p = inb.decapsulate(&mut work).map_err(|e| anyhow!("{e}"))?;
                anyhow::ensure!(p.payload.len() == PACKET, "opened a wrong length");
                Ok(())
            })?));
            train_seal.push(gbps(rate(time, TRAIN, || {
                stage_train(&mut out, &mut train, &mut rng)
            })?));
            train_open.push(gbps(rate(time, TRAIN, || {
                train.copy_from_slice(&sealed_train);
                let mut opened = 0;
                let mut failed = None;
                inb.decapsulate_train(&mut train, sealed_len, |r| match r {
                    Ok(p) if p.payload.len() == PACKET => opened += 1,
                    Ok(_) => failed = Some("opened a wrong length".to_string()),
                    Err(e) => failed = Some(e.to_string()),
                });
                anyhow::ensure!(failed.is_none() && opened == TRAIN, "train: {failed:?}");
                Ok(())
            })?));
        }
        let (seal_gbps, open_gbps) = (Summary::of(&seal), Summary::of(&open));
        rows.push(Row {
            suite: suite.name(),
            seal_ns: (PACKET * 8) as f64 / seal_gbps.median,
            open_ns: (PACKET * 8) as f64 / open_gbps.median,
            seal_gbps,
            open_gbps,
            train_seal_gbps: Summary::of(&train_seal),
            train_open_gbps: Summary::of(&train_open),
        });
    }
    Ok(Report {
        packet_bytes: PACKET,
        rows,
    })
}

pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "## Single-core crypto ceiling\n\nOur own ESP code on one core with no I/O: {}-byte IP packets sealed (encrypt + ICV) and opened (ICV check + decrypt) in a loop, plaintext Gbit/s, one packet at a time and in trains of {TRAIN} (one GSO send or GRO receive of the fast path, where the CBC suites run eight AES chains and sixteen HMAC-SHA1 side by side). No tunnel of ours can move more than this per core and direction.\n\n| suite | seal Gbit/s | open Gbit/s | seal ns/pkt | open ns/pkt | seal, trains | open, trains |\n|---|---|---|---|---|---|---|\n",
        r.packet_bytes
    );
    for row in &r.rows {
        s += &format!(
            "| {} | {:.2} ± {:.2} | {:.2} ± {:.2} | {:.0} | {:.0} | {:.2} ± {:.2} | {:.2} ± {:.2} |\n",
            row.suite,
            row.seal_gbps.median,
            row.seal_gbps.spread,
            row.open_gbps.median,
            row.open_gbps.spread,
            row.seal_ns,
            row.open_ns,
            row.train_seal_gbps.median,
            row.train_seal_gbps.spread,
            row.train_open_gbps.median,
            row.train_open_gbps.spread,
        );
    }
    s
}
