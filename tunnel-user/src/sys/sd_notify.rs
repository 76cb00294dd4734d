//! systemd's readiness protocol (`Type=notify`): a datagram with `READY=1` (or `STOPPING=1`)
//! to the socket named by `$NOTIFY_SOCKET`, a path or, after `@`, an abstract name. Without
//! the variable (not started by systemd) nothing is sent.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
};

/// Tells systemd the service is ready (`READY=1`).
pub fn ready() -> io::Result<()> {
    notify("READY=1")
}

/// Tells systemd the service is stopping (`STOPPING=1`).
pub fn stopping() -> io::Result<()> {
    notify("STOPPING=1")
}

fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state),
        None => Ok(()),
    }
}

fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_the_socket_by_path_or_abstract_name() {
        let dir = std::env::temp_dir().join(format!("tunnel-sd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let path = path.to_str().unwrap();
        notify_to(path, "READY=1").unwrap();
        notify_to(path, "STOPPING=1").unwrap();
        let abstract_name = format!("@tunnel-sd-notify-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = SocketAddr::from_abstract_name(&abstract_name.as_bytes()[1..]).unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        notify_to(&abstract_name, "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
