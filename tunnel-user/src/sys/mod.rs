//! The operating system under the fast path and the control path: TUN devices, UDP sockets
//! with segmentation offload, rtnetlink configuration, the links as they come and go, and the
//! TLS link's socket.

pub(crate) mod bpf_link;
pub(crate) mod epoll;
pub mod linkwatch;
pub mod netconf;
pub(crate) mod own_socket;
pub mod peercred;
pub mod sd_notify;
pub mod tls_link;
pub mod tun;
pub mod udp_gso;
