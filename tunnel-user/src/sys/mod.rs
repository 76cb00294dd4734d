//! The operating system under the fast path and the control path: TUN devices, UDP sockets
//! with segmentation offload, rtnetlink configuration and the TLS link's socket.

pub(crate) mod epoll;
pub mod netconf;
pub mod tls_link;
pub mod tun;
pub mod udp_gso;
