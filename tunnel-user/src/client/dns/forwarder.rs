//! The split-DNS forwarder: a DNS server on a loopback address (UDP and TCP) that sends each
//! query to the tunnel's servers or to the original ones by its name, and relays the answer.
//!
//! ```text
//!  resolver ─query─▶ 127.0.77.53:53 ─parse the question─▶ Routes::pick
//!     in a match domain (or every name when there are none) ─▶ the tunnel's servers
//!                                                              (routed into the tunnel)
//!     any other name ─▶ the original servers, from a socket with OWN_SOCKET_MARK
//!                        (the classifier lets it bypass the tunnel)
//!  the first answer from the server asked, with the query's ID ─▶ back to the resolver
//!  no answer from any: SERVFAIL; unreadable query: FORMERR (or dropped without a header)
//! ```
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] queries at once (more are answered SERVFAIL at once),
//! [`UPSTREAM_TIMEOUT`] per server, at most [`MAX_TCP`] TCP clients, each idle for at most
//! [`TCP_IDLE`]; messages are at most 64 KiB by the protocol's framing, datagrams 4 KiB.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::Name,
};
use socket2::Type;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::sys::own_socket::socket_for;

/// Queries answered at once; more get SERVFAIL without being sent anywhere.
pub(crate) const MAX_IN_FLIGHT: usize = 256;
/// How long one server has to answer before the next is asked.
pub(crate) const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// TCP clients at once; more are closed at accept.
pub(crate) const MAX_TCP: usize = 32;
/// How long a TCP client may stay without sending a whole query.
pub(crate) const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest datagram read or relayed.
const MAX_DATAGRAM: usize = 4096;

/// Where each name's queries go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Routes {
    /// The tunnel's servers.
    pub(crate) tunnel: Vec<SocketAddr>,
    /// The servers the machine had before.
    pub(crate) original: Vec<SocketAddr>,
    /// Names under these go to the tunnel's servers, the rest to the original ones; empty:
    /// every name goes to the tunnel's.
    pub(crate) routing: Vec<Name>,
}

/// Which servers, and whether the sockets to them carry our mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Tunnel,
    Original,
}

impl Routes {
    /// Where a query for `name` goes.
    pub(crate) fn pick(&self, name: &Name) -> Side {
        if self.routing.is_empty() || self.routing.iter().any(|d| d.zone_of(name)) {
            Side::Tunnel
        } else {
            Side::Original
        }
    }

    fn servers(&self, side: Side) -> &[SocketAddr] {
        match side {
            Side::Tunnel => &self.tunnel,
            Side::Original => &self.original,
        }
    }
}

/// What the forwarder did, for the status and the tests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub to_tunnel: AtomicU64,
    pub to_original: AtomicU64,
    pub unanswered: AtomicU64,
    pub refused_busy: AtomicU64,
    pub malformed: AtomicU64,
}

/// A running forwarder; stops when dropped.
pub(crate) struct Forwarder {
    pub(crate) counts: Arc<Counts>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    routes: Routes,
    counts: Arc<Counts>,
    in_flight: Arc<Semaphore>,
}

impl Forwarder {
    /// Listens on `listen` (UDP and TCP) and forwards by `routes`. Called on a tokio runtime.
    pub(crate) async fn start(listen: SocketAddr, routes: Routes) -> std::io::Result<Forwarder> {
        let udp = Arc::new(UdpSocket::bind(listen).await?);
        let tcp = TcpListener::bind(listen).await?;
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            routes,
            counts: counts.clone(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(udp, shared.clone())),
            tokio::spawn(serve_tcp(tcp, shared)),
        ];
        Ok(Forwarder { counts, tasks })
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "forwarder: receive");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            shared.counts.refused_busy.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = refusal(&query, ResponseCode::ServFail) {
                let _ = socket.send_to(&reply, client).await;
            }
            continue;
        };
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(answer) = answer(&shared, &query, Transport::Udp).await {
                let _ = socket.send_to(&answer, client).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = clients.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = serve_tcp_client(stream, &shared).await;
            drop(slot);
        });
    }
}

async fn serve_tcp_client(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let query = query?;
        let reply = match shared.in_flight.clone().try_acquire_owned() {
            Ok(_permit) => answer(shared, &query, Transport::Tcp).await,
            Err(_) => {
                shared.counts.refused_busy.fetch_add(1, Ordering::Relaxed);
                refusal(&query, ResponseCode::ServFail)
            }
        };
        match reply {
            Some(r) => write_framed(&mut stream, &r).await?,
            None => return Ok(()),
        }
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(msg)
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(std::io::Error::other)?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// The answer to `query`: from the servers its name goes to, or a refusal; None where not
/// even a header could be read (nothing to answer to).
async fn answer(shared: &Shared, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let message = match Message::from_vec(query) {
        Ok(m) if m.message_type() == MessageType::Query && m.queries().len() == 1 => m,
        _ => {
            shared.counts.malformed.fetch_add(1, Ordering::Relaxed);
            return refusal(query, ResponseCode::FormErr);
        }
    };
    let name = message.queries()[0].name();
    let side = shared.routes.pick(name);
    match side {
        Side::Tunnel => &shared.counts.to_tunnel,
        Side::Original => &shared.counts.to_original,
    }
    .fetch_add(1, Ordering::Relaxed);
    for server in shared.routes.servers(side) {
        let asked = match transport {
            Transport::Udp => ask_udp(*server, side, query).await,
            Transport::Tcp => ask_tcp(*server, side, query).await,
        };
        match asked {
            Ok(reply) if answers(&reply, message.id()) => return Some(reply),
            Ok(_) => debug!(%server, "forwarder: an answer that is not to this query"),
            Err(e) => debug!(%server, error = %e, "forwarder: no answer"),
        }
    }
    shared.counts.unanswered.fetch_add(1, Ordering::Relaxed);
    refusal(query, ResponseCode::ServFail)
}

/// Whether `reply` is a response with the query's `id`.
fn answers(reply: &[u8], id: u16) -> bool {
    reply.len() >= 12 && u16::from_be_bytes([reply[0], reply[1]]) == id && reply[2] & 0x80 != 0
}

async fn ask_udp(server: SocketAddr, side: Side, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket =
        UdpSocket::from_std(socket_for(server, Type::DGRAM, side == Side::Original)?.into())?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    buf.truncate(n);
    Ok(buf)
}

async fn ask_tcp(server: SocketAddr, side: Side, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = tokio::net::TcpSocket::from_std_stream(
        socket_for(server, Type::STREAM, side == Side::Original)?.into(),
    );
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut stream = socket.connect(server).await?;
        write_framed(&mut stream, query).await?;
        read_framed(&mut stream).await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// A response with `code` to the query in `query` (its ID, opcode and question), or None
/// when not even its header can be read.
fn refusal(query: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    let mut reply = Message::error_msg(id, OpCode::Query, code);
    if let Ok(m) = Message::from_vec(query) {
        reply.add_queries(m.queries().to_vec());
    }
    match reply.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            warn!(error = %e, "forwarder: building a refusal");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn routes(routing: &[&str]) -> Routes {
        Routes {
            tunnel: vec!["10.0.0.53:53".parse().unwrap()],
            original: vec!["192.168.1.1:53".parse().unwrap()],
            routing: routing.iter().map(|d| Name::from_str(d).unwrap()).collect(),
        }
    }

    #[test]
    fn match_domains_pick_the_tunnel_and_nothing_else() {
        let name = |n: &str| Name::from_str(n).unwrap();
        let r = routes(&["corp.example.", "lab.test."]);
        assert_eq!(r.pick(&name("intranet.corp.example.")), Side::Tunnel);
        assert_eq!(r.pick(&name("corp.example.")), Side::Tunnel);
        assert_eq!(r.pick(&name("LAB.test.")), Side::Tunnel);
        assert_eq!(r.pick(&name("notcorp.example.")), Side::Original);
        assert_eq!(r.pick(&name("www.example.org.")), Side::Original);
        assert_eq!(routes(&[]).pick(&name("www.example.org.")), Side::Tunnel);
    }

    #[test]
    fn refusals_answer_what_can_be_read() {
        assert_eq!(refusal(&[1, 2, 3], ResponseCode::FormErr), None);
        let mut q = Message::new();
        q.set_id(0xbeef);
        q.add_query(hickory_proto::op::Query::query(
            Name::from_str("a.corp.example.").unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        let r = Message::from_vec(&refusal(&q.to_vec().unwrap(), ResponseCode::ServFail).unwrap())
            .unwrap();
        assert_eq!(r.id(), 0xbeef);
        assert_eq!(r.response_code(), ResponseCode::ServFail);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.queries().len(), 1);
        assert!(answers(&r.to_vec().unwrap(), 0xbeef));
        assert!(!answers(&r.to_vec().unwrap(), 0xbeee));
        assert!(
            !answers(&q.to_vec().unwrap(), 0xbeef),
            "a query is no answer"
        );
    }

    /// A flood of queries to a server that never answers: at most MAX_IN_FLIGHT wait at
    /// once, the rest are refused at once and counted.
    #[tokio::test]
    async fn a_flood_is_bounded() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let routes = Routes {
            tunnel: vec![silent.local_addr().unwrap()],
            original: vec![],
            routing: vec![],
        };
        // Port 0 would give UDP and TCP different ports: a free one, for both.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let f = Forwarder::start(listen, routes).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut q = Message::new();
        q.add_query(hickory_proto::op::Query::query(
            Name::from_str("x.example.").unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        const SENT: usize = 1000;
        for id in 0..SENT {
            q.set_id(id as u16);
            client.send_to(&q.to_vec().unwrap(), listen).await.unwrap();
        }
        // The refusals come back at once.
        let mut refused = 0;
        let mut buf = [0u8; 512];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await
        {
            let r = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(r.response_code(), ResponseCode::ServFail);
            refused += 1;
        }
        // Some of the flood may be lost in the socket's buffer; of what arrived, exactly
        // MAX_IN_FLIGHT went upstream and the rest were refused.
        let busy = f.counts.refused_busy.load(Ordering::Relaxed) as usize;
        let forwarded = f.counts.to_tunnel.load(Ordering::Relaxed) as usize;
        assert_eq!(
            forwarded, MAX_IN_FLIGHT,
            "in flight at most {MAX_IN_FLIGHT}"
        );
        assert!(busy > 0 && forwarded + busy <= SENT, "{busy} refused");
        assert_eq!(refused, busy);
    }
}
