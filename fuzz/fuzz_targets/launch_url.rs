//! Launch URLs and server URLs on arbitrary text: never a panic; a parsed launch URL prints
//! to a URL that parses back to the same request, and a server URL's normal form is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnel_config::*;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    launch(&text);
    // Behind the scheme and action, so that the parameter paths are reached.
    launch(&format!("pulsesecureclient://connect?{text}"));
    launch(&format!("pulsesecureclient://connect?name=n&server={text}"));
    server(&text);
});

fn launch(text: &str) {
    match LaunchRequest::parse(text) {
        Ok(r) => {
            let url = r.to_url();
            assert_eq!(LaunchRequest::parse(&url).ok(), Some(r), "{url}");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn server(text: &str) {
    if let Ok(u) = ServerUrl::parse(text) {
        let printed = u.to_string();
        let again = ServerUrl::parse(&printed).expect("the normal form parses");
        assert_eq!(again, u);
        assert_eq!(again.to_string(), printed);
    }
}
