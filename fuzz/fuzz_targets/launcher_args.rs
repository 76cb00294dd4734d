//! pulselauncher argument vectors on arbitrary input: never a panic, and every refusal is
//! exit code 1 with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

fuzz_target!(|data: &[u8]| {
    // NUL separates arguments, as in a real argv.
    let text = String::from_utf8_lossy(data);
    let args: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\0').collect()
    };
    match parse_launcher_args(&args) {
        Ok(LauncherAction::Connect(c)) => {
            let t = c.timeout.as_secs();
            assert!((LAUNCHER_TIMEOUT_MIN..=LAUNCHER_TIMEOUT_MAX).contains(&t));
        }
        Ok(_) => {}
        Err(e) => {
            assert_eq!(e.exit_code(), ExitCode::BadParameter);
            assert!(!e.to_string().is_empty());
        }
    }
});
