//! Sockets of tunneld's own: to the gateway, to the machine's DNS servers, to a captive
//! portal's probe. They carry `OWN_SOCKET_MARK`, which the classifier lets bypass the tunnel
//! and lock-down before any policy is read.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking socket of `peer`'s family, `Type::STREAM` (TCP) or `Type::DGRAM` (UDP),
/// with our mark when `marked`.
pub(crate) fn socket_for(peer: SocketAddr, kind: Type, marked: bool) -> io::Result<Socket> {
    let domain = if peer.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let protocol = if kind == Type::STREAM {
        Protocol::TCP
    } else {
        Protocol::UDP
    };
    let socket = Socket::new(domain, kind, Some(protocol))?;
    if marked {
        socket.set_mark(tunnel_common::OWN_SOCKET_MARK)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}
