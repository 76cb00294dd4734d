//! tunneld's own name lookups (the gateway's name above all), through the uplink and never
//! through the tunnel: `/etc/hosts` first, then the machine's own servers (the original
//! `/etc/resolv.conf`, kept aside while the forwarder is in place), asked from sockets with
//! `OWN_SOCKET_MARK`, which the classifier lets bypass the tunnel and lock-down. In a full
//! tunnel being rebuilt, a lookup through the system resolver would go into the tunnel it is
//! rebuilding, or to the forwarder that sends it there.
//!
//! A and AAAA are asked of each server in turn (2 s each); an answer counts when it comes
//! from the server asked, with the query's ID and question, and holds addresses; IPv4 ones
//! come first. Responses are read up to 4 KiB; a truncated one is taken for what it holds.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, Query},
    rr::{Name, RData, RecordType},
};
use socket2::Type;

use crate::sys::own_socket::socket_for;
use tokio::net::UdpSocket;

/// How long one server has to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses of `host` (an address is itself), IPv4 first.
pub(crate) async fn lookup(host: &str, servers: &[IpAddr]) -> io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let from_hosts = in_hosts(&hosts, host);
    if !from_hosts.is_empty() {
        return Ok(from_hosts);
    }
    let name = Name::from_str(&format!("{}.", host.trim_end_matches('.')))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        "no DNS server to ask (the original resolver configuration names none)",
    );
    for server in servers {
        let mut found = Vec::new();
        for kind in [RecordType::A, RecordType::AAAA] {
            match ask(SocketAddr::new(*server, 53), &name, kind).await {
                Ok(addrs) => found.extend(addrs),
                Err(e) => last = e,
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Err(last)
}

/// The addresses `/etc/hosts` (its text) gives `host`.
fn in_hosts(text: &str, host: &str) -> Vec<IpAddr> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|n| n.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect()
}

/// A UDP socket with our mark, connected to `server`.
async fn marked(server: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket_for(server, Type::DGRAM, true)?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(server).await?;
    Ok(socket)
}

async fn ask(server: SocketAddr, name: &Name, kind: RecordType) -> io::Result<Vec<IpAddr>> {
    let mut query = Message::new();
    query.set_id(rand::random());
    query.set_recursion_desired(true);
    query.add_query(Query::query(name.clone(), kind));
    let socket = marked(server).await?;
    socket
        .send(&query.to_vec().map_err(io::Error::other)?)
        .await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        // A connected socket only hears its server; anything else about this query is
        // ignored until the deadline.
        if let Some(addrs) = addresses(&buf[..n], &query) {
            return Ok(addrs);
        }
    }
}

/// The addresses in `reply` when it answers `query`.
fn addresses(reply: &[u8], query: &Message) -> Option<Vec<IpAddr>> {
    let reply = Message::from_vec(reply).ok()?;
    if reply.message_type() != MessageType::Response
        || reply.id() != query.id()
        || reply.queries() != query.queries()
    {
        return None;
    }
    Some(
        reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{Record, rdata::A};

    use super::*;

    #[test]
    fn hosts_lines_name_their_addresses() {
        let text = "127.0.0.1 localhost\n# 10.9.9.9 vpn.example.com\n192.0.2.7 vpn.example.com vpn # the gateway\n";
        assert_eq!(
            in_hosts(text, "VPN.example.com"),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            in_hosts(text, "vpn"),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert!(in_hosts(text, "other.example.com").is_empty());
    }

    #[test]
    fn only_an_answer_to_the_question_asked_counts() {
        let name = Name::from_str("vpn.example.com.").unwrap();
        let mut query = Message::new();
        query.set_id(7);
        query.add_query(Query::query(name.clone(), RecordType::A));
        let answer = |id: u16, asked: &str| {
            let mut m = Message::new();
            m.set_id(id);
            m.set_message_type(MessageType::Response);
            m.add_query(Query::query(Name::from_str(asked).unwrap(), RecordType::A));
            m.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::A(A::new(192, 0, 2, 7)),
            ));
            m.to_vec().unwrap()
        };
        assert_eq!(
            addresses(&answer(7, "vpn.example.com."), &query),
            Some(vec!["192.0.2.7".parse().unwrap()])
        );
        assert_eq!(
            addresses(&answer(8, "vpn.example.com."), &query),
            None,
            "another ID"
        );
        assert_eq!(
            addresses(&answer(7, "evil.example.com."), &query),
            None,
            "another question"
        );
        assert_eq!(addresses(&query.to_vec().unwrap(), &query), None, "a query");
        assert_eq!(addresses(&[0u8; 5], &query), None, "garbage");
    }
}
