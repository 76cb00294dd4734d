//! The gateway's operator-facing requests on arbitrary bytes: never a panic.
//!
//! - The metrics listener's request head (`metrics_asked`): a head without its blank line
//!   is incomplete up to the limit and too large past it; a complete one is answered from
//!   its first line alone, so bytes after the blank line never change the answer.
//! - The control socket's request line (JSON): one that parses serializes back to a line
//!   that parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_user::gateway::{METRICS_MAX_HEAD, MetricsAsked, Request, metrics_asked};

fuzz_target!(|input: &[u8]| {
    let what = metrics_asked(input);
    let ended = input.windows(4).any(|w| w == b"\r\n\r\n") || input.windows(2).any(|w| w == b"\n\n");
    match what {
        MetricsAsked::Incomplete => assert!(!ended && input.len() <= METRICS_MAX_HEAD),
        MetricsAsked::TooLarge => assert!(!ended && input.len() > METRICS_MAX_HEAD),
        answered => {
            assert!(ended);
            let mut longer = input.to_vec();
            longer.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
            assert_eq!(metrics_asked(&longer), answered);
        }
    }
    if let Ok(request) = serde_json::from_slice::<Request>(input) {
        let line = serde_json::to_vec(&request).expect("a request serializes");
        let again: Request = serde_json::from_slice(&line).expect("and parses back");
        assert_eq!(again, request);
    }
});
