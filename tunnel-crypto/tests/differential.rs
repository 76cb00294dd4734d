//! The batched kernels against the plain RustCrypto `cbc` and `hmac` crates, on random keys,
//! IVs, lengths and batch sizes, and against published test vectors. Runs both backends of
//! each primitive on every machine (the accelerated one where the CPU has it).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use tunnel_crypto::{AesCbc, CbcLane, HmacSha1, Sha1Backend};

fn reference_encrypt(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    let len = data.len();
    match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new(key.into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(data, len)
            .map(|_| ())
            .unwrap(),
        _ => cbc::Encryptor::<aes::Aes256>::new(key.into(), iv.into())
            .encrypt_padded_mut::<NoPadding>(data, len)
            .map(|_| ())
            .unwrap(),
    }
}

fn reference_decrypt(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
    match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new(key.into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(data)
            .map(|_| ())
            .unwrap(),
        _ => cbc::Decryptor::<aes::Aes256>::new(key.into(), iv.into())
            .decrypt_padded_mut::<NoPadding>(data)
            .map(|_| ())
            .unwrap(),
    }
}

fn reference_hmac(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut m = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn keys(key: &[u8]) -> Vec<AesCbc> {
    vec![AesCbc::new(key).unwrap(), AesCbc::portable(key).unwrap()]
}

/// Every backend this CPU can run.
fn hmac_backends() -> Vec<Sha1Backend> {
    Sha1Backend::ALL
        .iter()
        .copied()
        .filter(|b| b.is_available())
        .collect()
}

#[test]
fn backends_in_use_are_reported() {
    // Not an assertion about this machine: a line in the test log saying what ran.
    eprintln!(
        "AES: {:?}, HMAC-SHA1: {:?}",
        AesCbc::new(&[0; 16]).unwrap(),
        Sha1Backend::detect()
    );
}

#[test]
fn fips197_and_rfc3602_vectors() {
    // FIPS 197 C.1 and C.3: one block with a zero IV is plain AES.
    for (key, pt, ct) in [
        (
            "000102030405060708090a0b0c0d0e0f",
            "00112233445566778899aabbccddeeff",
            "69c4e0d86a7b0430d8cdb78070b4c55a",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "00112233445566778899aabbccddeeff",
            "8ea2b7ca516745bfeafc49904b496089",
        ),
    ] {
        for k in keys(&hex(key)) {
            let mut b = hex(pt);
            k.encrypt(&[0; 16], &mut b).unwrap();
            assert_eq!(b, hex(ct), "{k:?}");
            k.decrypt(&[0; 16], &mut b).unwrap();
            assert_eq!(b, hex(pt), "{k:?}");
        }
    }
    // RFC 3602 case 4: four blocks of AES-128-CBC.
    let key = hex("56e47a38c5598974bc46903dba290349");
    let iv: [u8; 16] = hex("8ce82eefbea0da3c44699ed7db51b7d9").try_into().unwrap();
    let pt = hex(
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
    );
    let ct = hex(
        "c30e32ffedc0774e6aff6af0869f71aa0f3af07a9a31a9c684db207eb0ef8e4e35907aa632c3ffdf868bb7b29d3d46ad83ce9f9a102ee99d49a53e87f4c3da55",
    );
    for k in keys(&key) {
        let mut b = pt.clone();
        k.encrypt(&iv, &mut b).unwrap();
        assert_eq!(b, ct, "{k:?}");
    }
}

#[test]
fn rfc2202_hmac_sha1_vectors() {
    let cases: [(Vec<u8>, Vec<u8>, &str); 4] = [
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b617318655057264e28bc0b6fb378c8ef146be00",
        ),
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
        ),
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
        ),
        (
            vec![0xaa; 80],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "aa4ae5e15272d00e95705637ce8a3b55ed402112",
        ),
    ];
    for b in hmac_backends() {
        for (key, msg, tag) in &cases {
            let k = HmacSha1::with_backend(key, b).unwrap();
            assert_eq!(k.sign(msg).to_vec(), hex(tag), "{b:?}");
            // The same message in every lane of a full batch.
            let msgs = vec![&msg[..]; 16];
            let mut tags = vec![[0u8; 20]; 16];
            k.sign_many(&msgs, &mut tags);
            assert!(tags.iter().all(|t| t.to_vec() == hex(tag)), "{b:?}");
        }
    }
}

#[test]
fn misaligned_data_is_refused_and_left_alone() {
    for k in keys(&[7; 16]) {
        let mut a = vec![1u8; 32];
        let mut b = vec![2u8; 33];
        let mut lanes = [
            CbcLane {
                iv: [0; 16],
                data: &mut a,
            },
            CbcLane {
                iv: [0; 16],
                data: &mut b,
            },
        ];
        assert!(k.encrypt_lanes(&mut lanes).is_err());
        assert_eq!(a, vec![1u8; 32], "nothing half-done");
        assert!(k.decrypt(&[0; 16], &mut b).is_err());
        assert_eq!(b, vec![2u8; 33]);
    }
    assert!(AesCbc::new(&[0; 24]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A batch of lanes of any lengths (in blocks) encrypts exactly as each lane alone with
    /// the reference; decryption undoes it.
    #[test]
    fn cbc_batches_match_the_reference(
        wide in any::<bool>(),
        key in proptest::collection::vec(any::<u8>(), 32),
        lanes in proptest::collection::vec((any::<[u8; 16]>(), 0usize..100, any::<u8>()), 0..20),
    ) {
        let key = if wide { &key[..] } else { &key[..16] };
        let plain: Vec<Vec<u8>> = lanes
            .iter()
            .map(|(_, blocks, fill)| (0..blocks * 16).map(|i| (i as u8).wrapping_mul(*fill)).collect())
            .collect();
        let mut want = plain.clone();
        for ((iv, _, _), w) in lanes.iter().zip(&mut want) {
            reference_encrypt(key, iv, w);
        }
        for k in keys(key) {
            let mut got = plain.clone();
            let mut batch: Vec<CbcLane<'_>> = got
                .iter_mut()
                .zip(&lanes)
                .map(|(d, (iv, _, _))| CbcLane { iv: *iv, data: &mut d[..] })
                .collect();
            k.encrypt_lanes(&mut batch).unwrap();
            prop_assert_eq!(&got, &want, "{:?}", k);
            for ((iv, _, _), g) in lanes.iter().zip(&mut got) {
                k.decrypt(iv, g).unwrap();
            }
            prop_assert_eq!(&got, &plain, "{:?}", k);
        }
        for ((iv, _, _), w) in lanes.iter().zip(&mut want) {
            reference_decrypt(key, iv, w);
        }
        prop_assert_eq!(&want, &plain);
    }

    /// Tags of a batch of messages of any lengths (block boundaries and the one- or
    /// two-block padding included) and any key length match the reference, on every backend.
    #[test]
    fn hmac_batches_match_the_reference(
        key in proptest::collection::vec(any::<u8>(), 0..100),
        lens in proptest::collection::vec(0usize..300, 0..40),
        seed in any::<u8>(),
    ) {
        let msgs: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(j, &n)| (0..n).map(|i| (i as u8) ^ seed ^ (j as u8)).collect())
            .collect();
        let views: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
        let want: Vec<[u8; 20]> = msgs.iter().map(|m| reference_hmac(&key, m)).collect();
        for b in hmac_backends() {
            let k = HmacSha1::with_backend(&key, b).unwrap();
            let mut got = vec![[0u8; 20]; msgs.len()];
            k.sign_many(&views, &mut got);
            prop_assert_eq!(&got, &want, "{:?}", b);
            for (m, w) in msgs.iter().zip(&want) {
                prop_assert_eq!(&k.sign(m), w);
            }
        }
    }
}

/// ESP-sized packets: full batches of 1424-byte messages with a shorter last one, as a GSO
/// train gives them.
#[test]
fn esp_sized_batches() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let key: [u8; 20] = rng.random();
    for n in [1usize, 3, 4, 15, 16, 17, 33, 46] {
        let mut msgs: Vec<Vec<u8>> = (0..n)
            .map(|_| (0..1424).map(|_| rng.random()).collect())
            .collect();
        msgs.last_mut().unwrap().truncate(600);
        let views: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
        for b in hmac_backends() {
            let k = HmacSha1::with_backend(&key, b).unwrap();
            let mut got = vec![[0u8; 20]; n];
            k.sign_many(&views, &mut got);
            for (m, g) in msgs.iter().zip(&got) {
                assert_eq!(*g, reference_hmac(&key, m), "{b:?} n={n}");
            }
        }
    }
}
