//! Time-based one-time passwords (RFC 6238): the second factor of realms with
//! `second_factor = "totp"`.
//!
//! HMAC-SHA1, 6 digits, 30-second steps, what every authenticator app defaults to. A code is
//! accepted for the step before, the current step and the step after (one step of clock
//! drift either way); a code that matches only within [`SKEW_STEPS`] steps is refused as
//! [`TotpCheck::OtherTime`], so the user learns that the device's clock is off rather than
//! that the code is wrong. [`TotpGuard`] remembers, per user, the last step accepted and
//! accepts only later ones, so a code seen over a shoulder or replayed is refused for the
//! rest of its window.
//!
//! This module owns the arithmetic, the secret's text form and the replay memory. It is
//! sans-IO: the caller passes the time as Unix seconds. It does not know realms, the users
//! file (where secrets are stored, `super::users`) or the login limits (a wrong code is
//! counted by the caller, `super::ratelimit`).

use std::{collections::HashMap, fmt};

use subtle::ConstantTimeEq;
use tunnel_crypto::HmacSha1;

/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Seconds per step (RFC 6238 section 5.2 recommends 30).
pub const STEP_SECS: u64 = 30;
/// Steps either side of the current one whose codes are accepted (RFC 6238 section 5.2:
/// "at most one time step is allowed as the network delay").
pub const WINDOW_STEPS: u64 = 1;
/// Steps either side within which a matching code is reported as [`TotpCheck::OtherTime`]
/// rather than wrong: five minutes, a clock that was never synchronised.
pub const SKEW_STEPS: u64 = 10;

/// A TOTP shared secret. Its `Debug` shows no byte of it, and it is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

/// Why a secret's text is refused. Never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("not base32 (RFC 4648: letters A-Z and digits 2-7, no padding)")]
    NotBase32,
    #[error(
        "{len} bytes; a secret has {}-{} bytes",
        TotpSecret::MIN_LEN,
        TotpSecret::MAX_LEN
    )]
    Length { len: usize },
}

impl TotpSecret {
    /// RFC 4226 section 4, R6: at least 128 bits.
    pub const MIN_LEN: usize = 16;
    /// One SHA-1 block: a longer key is hashed first and gains nothing.
    pub const MAX_LEN: usize = 64;
    /// What [`TotpSecret::generate`] makes: 160 bits, RFC 4226's recommendation and the
    /// length of an HMAC-SHA1 output.
    pub const GENERATED_LEN: usize = 20;

    /// A fresh random secret of [`TotpSecret::GENERATED_LEN`] bytes.
    pub fn generate() -> TotpSecret {
        TotpSecret(rand::random::<[u8; TotpSecret::GENERATED_LEN]>().to_vec())
    }

    /// A secret of raw bytes, within the length bounds.
    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, SecretError> {
        if !(TotpSecret::MIN_LEN..=TotpSecret::MAX_LEN).contains(&bytes.len()) {
            return Err(SecretError::Length { len: bytes.len() });
        }
        Ok(TotpSecret(bytes.to_vec()))
    }

    /// A secret written in base32 as authenticator apps show it: upper case, no padding.
    pub fn from_base32(text: &str) -> Result<TotpSecret, SecretError> {
        let bytes = data_encoding::BASE32_NOPAD
            .decode(text.as_bytes())
            .map_err(|_| SecretError::NotBase32)?;
        let secret = TotpSecret::from_bytes(&bytes);
        wipe(bytes);
        secret
    }

    /// The base32 text of the secret (upper case, no padding), for the users file and the
    /// `otpauth://` URI.
    pub fn to_base32(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl Drop for TotpSecret {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

/// The HOTP value (RFC 4226 section 5.3) of `key` at `counter`, `digits` long (at most 9).
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let mac = HmacSha1::new(key).sign(&counter.to_be_bytes());
    // Dynamic truncation: the low nibble of the last byte picks four bytes.
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let word = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    word % 10u32.pow(digits.min(9))
}

/// The step of Unix time `unix_secs`.
pub fn step_at(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// The code of `secret` at `step`, as the user types it.
pub fn code_at(secret: &TotpSecret, step: u64) -> String {
    format!(
        "{:0width$}",
        hotp(secret.bytes(), step, DIGITS),
        width = DIGITS as usize
    )
}

/// The issuer `adduser --totp` names when none is given.
pub const DEFAULT_ISSUER: &str = "tunnel";

/// The `otpauth://` URI an authenticator app reads (usually as a QR code) to add `secret` for
/// user `name` of `issuer` ("Key Uri Format" of Google Authenticator, which the others follow):
/// `otpauth://totp/ISSUER:NAME?secret=...&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, name: &str) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        percent_encode(name),
        secret.to_base32()
    )
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, so that a name
/// with ':', '?', '&', '#', '/', spaces or non-ASCII letters stays one field of the URI.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What became of a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotpCheck {
    /// Right, for `step`, which is now used up for this user.
    Accepted { step: u64 },
    /// Not the code of any step near now (or not a code at all).
    Wrong,
    /// Right, but for a step this user has already logged in with (or an earlier one).
    Reused,
    /// The code of a step `offset` steps from now, beyond the window but within
    /// [`SKEW_STEPS`]: the device's clock is off.
    OtherTime { offset: i64 },
}

/// The six digits of `code`, if it is exactly that.
fn digits(code: &str) -> Option<[u8; DIGITS as usize]> {
    let bytes: [u8; DIGITS as usize] = code.trim().as_bytes().try_into().ok()?;
    bytes.iter().all(u8::is_ascii_digit).then_some(bytes)
}

/// Which steps within [`SKEW_STEPS`] of `now_step` `code` matches, as offsets. Every step is
/// computed and compared in constant time, so the time taken does not depend on the code.
fn matching_offsets(secret: &TotpSecret, code: &[u8; DIGITS as usize], now_step: u64) -> Vec<i64> {
    let skew = SKEW_STEPS as i64;
    let mut found = Vec::new();
    for offset in -skew..=skew {
        let Some(step) = now_step.checked_add_signed(offset) else {
            continue;
        };
        let expected = code_at(secret, step);
        if bool::from(expected.as_bytes().ct_eq(code)) {
            found.push(offset);
        }
    }
    found
}

/// Per user, the last step accepted: a step is accepted at most once, and never one before
/// it. In memory only: a restart forgets it, which reopens at most the codes of the last
/// [`WINDOW_STEPS`] steps.
#[derive(Debug, Default)]
pub struct TotpGuard {
    last: HashMap<String, u64>,
}

impl TotpGuard {
    pub fn new() -> TotpGuard {
        TotpGuard::default()
    }

    /// Checks `code` for `user` with `secret` at Unix time `now_unix`, and, when accepted,
    /// uses its step up.
    pub fn verify(
        &mut self,
        user: &str,
        secret: &TotpSecret,
        code: &str,
        now_unix: u64,
    ) -> TotpCheck {
        let now_step = step_at(now_unix);
        self.forget_before(now_step);
        let Some(code) = digits(code) else {
            return TotpCheck::Wrong;
        };
        let offsets = matching_offsets(secret, &code, now_step);
        let window = WINDOW_STEPS as i64;
        let in_window: Vec<u64> = offsets
            .iter()
            .filter(|o| o.abs() <= window)
            .filter_map(|&o| now_step.checked_add_signed(o))
            .collect();
        let last = self.last.get(user).copied();
        if let Some(&step) = in_window
            .iter()
            .filter(|&&s| last.is_none_or(|l| s > l))
            .max()
        {
            self.last.insert(user.to_string(), step);
            return TotpCheck::Accepted { step };
        }
        if !in_window.is_empty() {
            return TotpCheck::Reused;
        }
        match offsets.iter().min_by_key(|o| o.abs()) {
            Some(&offset) => TotpCheck::OtherTime { offset },
            None => TotpCheck::Wrong,
        }
    }

    /// Users remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// An entry only matters while its step or an earlier one can still be in the window:
    /// once the window's lower edge has passed it, it says nothing any more.
    fn forget_before(&mut self, now_step: u64) {
        let oldest_useful = now_step.saturating_sub(WINDOW_STEPS);
        self.last.retain(|_, step| *step >= oldest_useful);
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};

    use super::*;

    /// RFC 6238 Appendix B and RFC 4226 Appendix D use this ASCII key for SHA-1.
    const RFC_KEY: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_appendix_b_sha1_vectors() {
        let vectors: [(u64, u32); 6] = [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ];
        let secret = TotpSecret::from_bytes(RFC_KEY).unwrap();
        for (time, eight) in vectors {
            assert_eq!(hotp(RFC_KEY, step_at(time), 8), eight, "T={time}");
            // Six digits are the last six of the same truncated value.
            assert_eq!(
                code_at(&secret, step_at(time)),
                format!("{:06}", eight % 1_000_000),
                "T={time}"
            );
        }
    }

    #[test]
    fn rfc_4226_appendix_d_hotp_vectors() {
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(hotp(RFC_KEY, counter as u64, 6), code, "counter {counter}");
        }
    }

    /// HOTP written straight from RFC 4226 on the `hmac` crate.
    fn reference_hotp(key: &[u8], counter: u64) -> u32 {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
        mac.update(&counter.to_be_bytes());
        let h = mac.finalize().into_bytes();
        let o = (h[19] & 0xf) as usize;
        let bin = ((u32::from(h[o]) & 0x7f) << 24)
            | (u32::from(h[o + 1]) << 16)
            | (u32::from(h[o + 2]) << 8)
            | u32::from(h[o + 3]);
        bin % 1_000_000
    }

    /// The verdict without replay memory, written the obvious way.
    fn reference_check(key: &[u8], code: &str, now: u64) -> TotpCheck {
        let Ok(n) = code.parse::<u32>() else {
            return TotpCheck::Wrong;
        };
        if code.len() != 6 {
            return TotpCheck::Wrong;
        }
        let now_step = now / 30;
        for o in [0i64, -1, 1] {
            let step = now_step as i64 + o;
            if step >= 0 && reference_hotp(key, step as u64) == n {
                // The greatest matching step in the window wins.
                let best = [1i64, 0, -1]
                    .into_iter()
                    .map(|o| now_step as i64 + o)
                    .find(|&s| s >= 0 && reference_hotp(key, s as u64) == n)
                    .unwrap();
                return TotpCheck::Accepted { step: best as u64 };
            }
        }
        for d in 2..=10i64 {
            for o in [-d, d] {
                let step = now_step as i64 + o;
                if step >= 0 && reference_hotp(key, step as u64) == n {
                    return TotpCheck::OtherTime { offset: o };
                }
            }
        }
        TotpCheck::Wrong
    }

    #[test]
    fn hotp_agrees_with_a_reference_on_random_keys_and_counters() {
        for _ in 0..2000 {
            let len = rand::random_range(1..=80usize);
            let key: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            let counter = rand::random::<u64>() >> rand::random_range(0..64u32);
            assert_eq!(
                hotp(&key, counter, 6),
                reference_hotp(&key, counter),
                "{key:?} {counter}"
            );
        }
    }

    #[test]
    fn verdicts_agree_with_a_reference() {
        for _ in 0..300 {
            let secret = TotpSecret::generate();
            let now = rand::random_range(0..4_000_000_000u64);
            let now_step = step_at(now) as i64;
            // Codes of nearby steps, random codes and malformed ones.
            let mut codes: Vec<String> = (-12i64..=12)
                .filter(|o| now_step + o >= 0)
                .map(|o| code_at(&secret, (now_step + o) as u64))
                .collect();
            codes.extend((0..5).map(|_| format!("{:06}", rand::random_range(0..1_000_000u32))));
            codes.extend(["12345", "1234567", "12a456", ""].map(String::from));
            for code in codes {
                let mut guard = TotpGuard::new();
                assert_eq!(
                    guard.verify("alice", &secret, &code, now),
                    reference_check(&secret.0, &code, now),
                    "code {code} at {now}"
                );
            }
        }
    }

    #[test]
    fn window_is_one_step_either_side_and_skew_is_reported() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_000 + 15;
        let step = step_at(now);
        let check = |offset: i64| {
            let code = code_at(&secret, step.checked_add_signed(offset).unwrap());
            TotpGuard::new().verify("alice", &secret, &code, now)
        };
        for o in [-1i64, 0, 1] {
            assert_eq!(
                check(o),
                TotpCheck::Accepted {
                    step: step.checked_add_signed(o).unwrap()
                }
            );
        }
        for o in [-10i64, -2, 2, 10] {
            assert_eq!(check(o), TotpCheck::OtherTime { offset: o });
        }
        for o in [-11i64, 11, 40] {
            // Beyond the skew no step is looked at: never reported as that step. (The code
            // may repeat at a nearby step by chance, so "wrong" is not asserted.)
            let verdict = check(o);
            assert_ne!(verdict, TotpCheck::OtherTime { offset: o });
            assert_ne!(
                verdict,
                TotpCheck::Accepted {
                    step: step.checked_add_signed(o).unwrap()
                }
            );
        }
    }

    #[test]
    fn a_code_is_accepted_once_and_earlier_steps_never_after() {
        let secret = TotpSecret::generate();
        let mut guard = TotpGuard::new();
        let now = 1_700_000_010;
        let step = step_at(now);
        let current = code_at(&secret, step);
        assert_eq!(
            guard.verify("alice", &secret, &current, now),
            TotpCheck::Accepted { step }
        );
        // The same code again, even a few seconds later in the same step: replay.
        assert_eq!(
            guard.verify("alice", &secret, &current, now + 5),
            TotpCheck::Reused
        );
        // The previous step's code is still in the window but before the accepted one.
        let previous = code_at(&secret, step - 1);
        assert_eq!(
            guard.verify("alice", &secret, &previous, now),
            TotpCheck::Reused
        );
        // Another user with the same secret is not affected.
        assert_eq!(
            guard.verify("bob", &secret, &current, now),
            TotpCheck::Accepted { step }
        );
        // The next step's code is strictly later: accepted, and it uses that step up.
        let next = code_at(&secret, step + 1);
        assert_eq!(
            guard.verify("alice", &secret, &next, now),
            TotpCheck::Accepted { step: step + 1 }
        );
        assert_eq!(
            guard.verify("alice", &secret, &next, now + STEP_SECS),
            TotpCheck::Reused
        );
        // A step later than the last accepted one is fine.
        let later = code_at(&secret, step + 2);
        assert_eq!(
            guard.verify("alice", &secret, &later, now + STEP_SECS),
            TotpCheck::Accepted { step: step + 2 }
        );
    }

    #[test]
    fn the_guard_forgets_steps_that_can_no_longer_be_replayed() {
        let secret = TotpSecret::generate();
        let mut guard = TotpGuard::new();
        let now = 1_700_000_000;
        for i in 0..100 {
            let user = format!("user{i}");
            let code = code_at(&secret, step_at(now));
            assert!(matches!(
                guard.verify(&user, &secret, &code, now),
                TotpCheck::Accepted { .. }
            ));
        }
        assert_eq!(guard.len(), 100);
        // One step later the accepted step is the window's lower edge: still kept...
        let code = code_at(&secret, step_at(now) + 1);
        guard.verify("user0", &secret, &code, now + STEP_SECS);
        assert_eq!(guard.len(), 100);
        // ... two steps later it can no longer be replayed, and only user0 (step +1) and
        // the new user are kept.
        let code = code_at(&secret, step_at(now) + 2);
        guard.verify("late", &secret, &code, now + 2 * STEP_SECS);
        assert_eq!(guard.len(), 2);
        // Forgetting did not reopen anything: user1's old code is out of the window anyway.
        let old = code_at(&secret, step_at(now));
        assert_ne!(
            guard.verify("user1", &secret, &old, now + 2 * STEP_SECS),
            TotpCheck::Accepted { step: step_at(now) }
        );
    }

    #[test]
    fn malformed_codes_are_wrong() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_000;
        let code = code_at(&secret, step_at(now));
        let mut guard = TotpGuard::new();
        for bad in [
            &code[..5],
            &format!("{code}0"),
            &format!("+{}", &code[1..]),
            "",
            "abcdef",
            "１２３４５６",
        ] {
            assert_eq!(
                guard.verify("alice", &secret, bad, now),
                TotpCheck::Wrong,
                "{bad:?}"
            );
        }
        // Surrounding spaces, as some clients send them, are not part of the code.
        assert!(matches!(
            guard.verify("alice", &secret, &format!(" {code}\n"), now),
            TotpCheck::Accepted { .. }
        ));
    }

    #[test]
    fn secrets_round_trip_through_base32_and_never_show_in_debug() {
        let secret = TotpSecret::generate();
        let text = secret.to_base32();
        assert_eq!(text.len(), 32, "20 bytes are 32 base32 characters");
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(TotpSecret::from_base32(&text).unwrap(), secret);
        assert_eq!(format!("{secret:?}"), "TotpSecret(..)");
        assert_eq!(
            TotpSecret::from_base32("JBSWY3DPEHPK3PXP"),
            Err(SecretError::Length { len: 10 })
        );
        assert_eq!(
            TotpSecret::from_base32("jbswy3dpehpk3pxpjbswy3dpehpk3pxp"),
            Err(SecretError::NotBase32)
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ====").map(|_| ()),
            Err(SecretError::NotBase32)
        );
        // RFC 6238's key in base32.
        let rfc = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(rfc.bytes(), RFC_KEY);
    }

    #[test]
    fn otpauth_uris_encode_names_and_issuers() {
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(
            otpauth_uri(&secret, DEFAULT_ISSUER, "alice"),
            "otpauth://totp/tunnel:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=tunnel\
             &algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(
            otpauth_uri(&secret, "ACME VPN", "j.doe@corp:x?y&z#é"),
            "otpauth://totp/ACME%20VPN:j.doe%40corp%3Ax%3Fy%26z%23%C3%A9\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=ACME%20VPN\
             &algorithm=SHA1&digits=6&period=30"
        );
    }
}
