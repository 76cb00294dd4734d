//! The Juniper configuration packets (IF-T Juniper type 1): tunnel settings and the ESP key
//! exchange, encoded and decoded.
//!
//! Owns: the layout of the main config packet (route block with IPv4 include/exclude ranges,
//! then type-length-value attributes), the typed [`Config`] it decodes to, and the ESP key
//! exchange block (magic `0x21202400`, SPI little-endian, encryption key then HMAC key).
//!
//! Does not own: the IF-T header around the payload (see `ift`), the crypto that uses the keys
//! (see `esp`), or when these packets are sent (see `client` / `server`).
//!
//! Main config payload (offsets from the end of the IF-T header), as reverse-engineered in
//! openconnect's pulse.c:
//!
//! ```text
//! 0x00  16 zero bytes
//! 0x10  magic 0x2c20f000 (0x2e20f000 on 9.1R14+, with leading attribute blocks)
//! 0x14  0
//! 0x18  payload length
//! 0x1c  0x2e00 | routes length (n*16+8) | n (one byte, then 3 zero bytes)
//! 0x24  n x { 0x07000010 include | 0xf1000010 exclude, 0x0000ffff, first IPv4, last IPv4 }
//!  ..   attributes length (u32, counting itself) | 0x03000000 | TLVs {type u16, len u16, value}
//! ```

use crate::wire::{be16, be32, le32};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Magic of the main config packet.
pub const CONFIG_MAGIC: u32 = 0x2c20_f000;
/// Magic of the main config packet seen on Pulse 9.1R14 and later.
pub const CONFIG_MAGIC_R14: u32 = 0x2e20_f000;
/// Magic of the ESP key exchange packet.
pub const ESP_CONFIG_MAGIC: u32 = 0x2120_2400;
/// Route entry type: include (split tunnel) range.
pub(crate) const ROUTE_INCLUDE: u32 = 0x0700_0010;
/// Route entry type: exclude range.
pub(crate) const ROUTE_EXCLUDE: u32 = 0xf100_0010;
/// Size of the ESP secrets area: encryption key, then HMAC key, then zero padding.
pub const ESP_SECRETS_LEN: usize = 0x40;
/// Most IPv4 route entries one config packet can carry: openconnect reads the count from a
/// single byte.
pub(crate) const MAX_V4_ROUTES: usize = 255;

const ROUTE_MARKER: u16 = 0x2e00;
const ATTR_BLOCK_END: u16 = 0x2c00;
const ATTR_MARKER: u32 = 0x0300_0000;
const ESP_MARKER: u32 = 0x0100_0000;
const ROUTE_FILLER: u32 = 0x0000_ffff;

/// TLV types in the attribute section.
pub(crate) mod tlv {
    /// IPv4 address (4 bytes).
    pub const IPV4_ADDRESS: u16 = 0x0001;
    /// IPv4 netmask (4 bytes).
    pub const IPV4_NETMASK: u16 = 0x0002;
    /// IPv4 DNS server (4 bytes).
    pub const DNS_V4: u16 = 0x0003;
    /// WINS server (4 bytes).
    pub const WINS: u16 = 0x0004;
    /// IPv6 address and prefix length (17 bytes).
    pub const IPV6_ADDRESS: u16 = 0x0008;
    /// IPv6 DNS server (16 bytes).
    pub const DNS_V6: u16 = 0x000a;
    /// IPv6 include route (17 bytes).
    pub const IPV6_INCLUDE: u16 = 0x000f;
    /// IPv6 exclude route (17 bytes).
    pub const IPV6_EXCLUDE: u16 = 0x0010;
    /// MTU (u32).
    pub const MTU: u16 = 0x4005;
    /// DNS search domains (text, comma separated, maybe NUL terminated).
    pub const SEARCH_DOMAIN: u16 = 0x4006;
    /// Internal gateway IPv4 address (4 bytes).
    pub const INTERNAL_GATEWAY: u16 = 0x400b;
    /// ESP cipher (u16: 2 AES-128-CBC, 5 AES-256-CBC).
    pub const ESP_CIPHER: u16 = 0x4010;
    /// ESP HMAC (u16: 1 MD5, 2 SHA1, 3 SHA256).
    pub const ESP_HMAC: u16 = 0x4011;
    /// ESP key lifetime in seconds (u32).
    pub const ESP_LIFETIME_SECONDS: u16 = 0x4012;
    /// ESP key lifetime in bytes (u32).
    pub const ESP_LIFETIME_BYTES: u16 = 0x4013;
    /// ESP replay protection (u32, non-zero on).
    pub const ESP_REPLAY_PROTECTION: u16 = 0x4014;
    /// ESP UDP port (u16).
    pub const ESP_PORT: u16 = 0x4016;
    /// Seconds without ESP before falling back to TLS (u32).
    pub const ESP_TO_TLS_FALLBACK: u16 = 0x4017;
    /// ESP only (u8).
    pub const ESP_ONLY: u16 = 0x401a;
    /// Internal gateway IPv6 address (16 bytes).
    pub const INTERNAL_GATEWAY6: u16 = 0x401e;
    /// ESP may carry the other IP family (6in4 / 4in6) (u8).
    pub const ESP_ALLOW_6IN4: u16 = 0x4024;
}

/// Human name of a TLV type, for error messages.
pub(crate) fn tlv_name(kind: u16) -> &'static str {
    match kind {
        tlv::IPV4_ADDRESS => "IPv4 address",
        tlv::IPV4_NETMASK => "IPv4 netmask",
        tlv::DNS_V4 => "IPv4 DNS",
        tlv::WINS => "WINS",
        tlv::IPV6_ADDRESS => "IPv6 address",
        tlv::DNS_V6 => "IPv6 DNS",
        tlv::IPV6_INCLUDE => "IPv6 include route",
        tlv::IPV6_EXCLUDE => "IPv6 exclude route",
        tlv::MTU => "MTU",
        tlv::SEARCH_DOMAIN => "search domain",
        tlv::INTERNAL_GATEWAY => "internal gateway",
        tlv::ESP_CIPHER => "ESP cipher",
        tlv::ESP_HMAC => "ESP HMAC",
        tlv::ESP_LIFETIME_SECONDS => "ESP lifetime (seconds)",
        tlv::ESP_LIFETIME_BYTES => "ESP lifetime (bytes)",
        tlv::ESP_REPLAY_PROTECTION => "ESP replay protection",
        tlv::ESP_PORT => "ESP port",
        tlv::ESP_TO_TLS_FALLBACK => "ESP-to-TLS fallback",
        tlv::ESP_ONLY => "ESP only",
        tlv::INTERNAL_GATEWAY6 => "internal IPv6 gateway",
        tlv::ESP_ALLOW_6IN4 => "ESP 6in4",
        _ => "unknown",
    }
}

/// Errors decoding or encoding config packets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The payload ends before a fixed-size field.
    #[error(
        "config packet truncated reading {what} at offset {offset:#x}: need {need} bytes, have {got}"
    )]
    Truncated {
        /// The field.
        what: &'static str,
        /// Offset in the payload.
        offset: usize,
        /// Bytes needed from that offset.
        need: usize,
        /// Bytes available from that offset.
        got: usize,
    },
    /// Bytes that are always zero are not.
    #[error("config packet has non-zero reserved bytes at offset {offset:#x}")]
    NonZeroReserved {
        /// Offset in the payload.
        offset: usize,
    },
    /// The identifier at 0x20 of the frame is not a known config kind.
    #[error("unknown config packet identifier {got:#010x}")]
    UnknownMagic {
        /// The identifier.
        got: u32,
    },
    /// A length field disagrees with the data.
    #[error("config {field} is {got}, expected {expected}")]
    LengthField {
        /// Which field.
        field: &'static str,
        /// What the data implies.
        expected: usize,
        /// What the field says.
        got: usize,
    },
    /// A fixed marker word has the wrong value.
    #[error("config {what} marker is {got:#x}, expected {expected:#x}")]
    Marker {
        /// Which marker.
        what: &'static str,
        /// Expected value.
        expected: u32,
        /// Received value.
        got: u32,
    },
    /// A route entry has an unknown type.
    #[error("route {index} has unknown type {got:#010x}")]
    RouteType {
        /// Index of the entry.
        index: usize,
        /// Its type word.
        got: u32,
    },
    /// A route range ends before it starts.
    #[error("route {index} range {first}-{last} is reversed")]
    RouteRange {
        /// Index of the entry.
        index: usize,
        /// First address.
        first: Ipv4Addr,
        /// Last address.
        last: Ipv4Addr,
    },
    /// A TLV header or value runs past the attribute section.
    #[error("TLV at offset {offset:#x} runs past the end of the attributes")]
    TlvTruncated {
        /// Offset in the payload.
        offset: usize,
    },
    /// A known TLV has the wrong length.
    #[error("TLV {kind:#06x} ({name}) has length {got}, expected {expected}")]
    TlvLength {
        /// Type.
        kind: u16,
        /// Name.
        name: &'static str,
        /// Expected length.
        expected: usize,
        /// Received length.
        got: usize,
    },
    /// A known TLV has an invalid value.
    #[error("TLV {kind:#06x} ({name}) is invalid: {what}")]
    TlvValue {
        /// Type.
        kind: u16,
        /// Name.
        name: &'static str,
        /// What was wrong.
        what: &'static str,
    },
    /// The ESP secrets area is not 64 bytes.
    #[error("ESP secrets length is {got}, expected {expected}")]
    EspSecretsLength {
        /// Expected length.
        expected: usize,
        /// Received length.
        got: usize,
    },
    /// More IPv4 routes than one packet can carry.
    #[error("{count} IPv4 routes do not fit in one config packet (max {max})")]
    TooManyRoutes {
        /// Routes given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A value is too long for its 16-bit length field.
    #[error("{what} is {len} bytes, at most {max} fit")]
    TooLong {
        /// Which value.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The prefix length exceeds the address width.
    #[error("prefix length {len} exceeds {max}")]
    PrefixLength {
        /// Given prefix length.
        len: u8,
        /// Address width.
        max: u8,
    },
}

/// An IPv4 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
}

impl Ipv4Net {
    /// A prefix; fails when `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, ConfigError> {
        if prefix_len > 32 {
            return Err(ConfigError::PrefixLength {
                len: prefix_len,
                max: 32,
            });
        }
        Ok(Self { addr, prefix_len })
    }

    fn host_mask(&self) -> u32 {
        u32::MAX
            .checked_shr(u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    /// First and last address covered.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let first = u32::from(self.addr) & !self.host_mask();
        (
            Ipv4Addr::from(first),
            Ipv4Addr::from(first | self.host_mask()),
        )
    }

    /// The netmask, e.g. 255.255.255.0 for /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(!self.host_mask())
    }
}

/// An IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    /// Address.
    pub addr: Ipv6Addr,
    /// Prefix length, 0..=128.
    pub prefix_len: u8,
}

impl Ipv6Net {
    /// A prefix; fails when `prefix_len > 128`.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Result<Self, ConfigError> {
        if prefix_len > 128 {
            return Err(ConfigError::PrefixLength {
                len: prefix_len,
                max: 128,
            });
        }
        Ok(Self { addr, prefix_len })
    }
}

/// Splits an inclusive IPv4 range into the fewest CIDR prefixes covering exactly it.
pub fn range_to_prefixes(first: Ipv4Addr, last: Ipv4Addr) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u64::from(u32::from(first)), u64::from(u32::from(last)));
    while lo <= hi {
        // Largest aligned block starting at `lo` that does not pass `hi`.
        let mut size_log = if lo == 0 {
            32
        } else {
            lo.trailing_zeros().min(32)
        };
        while size_log > 0 && lo + (1u64 << size_log) - 1 > hi {
            size_log -= 1;
        }
        out.push(Ipv4Net {
            addr: Ipv4Addr::from(lo as u32),
            prefix_len: (32 - size_log) as u8,
        });
        lo += 1u64 << size_log;
    }
    out
}

/// ESP parameters from the attribute section. Cipher and HMAC stay as wire codes so an offer
/// we cannot use (say HMAC-MD5) disables ESP instead of failing the whole config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EspSettings {
    /// 0x4010: 2 AES-128-CBC, 5 AES-256-CBC.
    pub cipher: Option<u16>,
    /// 0x4011: 1 MD5, 2 SHA1, 3 SHA256.
    pub hmac: Option<u16>,
    /// 0x4012: key lifetime in seconds.
    pub lifetime_seconds: Option<u32>,
    /// 0x4013: key lifetime in bytes.
    pub lifetime_bytes: Option<u32>,
    /// 0x4014: replay protection.
    pub replay_protection: Option<bool>,
    /// 0x4016: UDP port.
    pub port: Option<u16>,
    /// 0x4017: seconds without ESP before falling back to TLS.
    pub fallback_seconds: Option<u32>,
    /// 0x401a: ESP only.
    pub esp_only: Option<bool>,
    /// 0x4024: ESP may carry the other IP family.
    pub allow_6in4: Option<bool>,
}

/// A TLV nobody interprets, kept for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTlv {
    /// Type.
    pub kind: u16,
    /// Value.
    pub value: Vec<u8>,
}

/// The tunnel configuration the gateway pushes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// 0x0001.
    pub ipv4_address: Option<Ipv4Addr>,
    /// 0x0002.
    pub ipv4_netmask: Option<Ipv4Addr>,
    /// 0x0008: address and prefix length.
    pub ipv6_address: Option<Ipv6Net>,
    /// 0x0003 and 0x000a, in the order received.
    pub dns: Vec<IpAddr>,
    /// 0x0004.
    pub wins: Vec<Ipv4Addr>,
    /// 0x4006, split on commas and spaces.
    pub search_domains: Vec<String>,
    /// 0x4005.
    pub mtu: Option<u32>,
    /// 0x400b.
    pub internal_gateway: Option<Ipv4Addr>,
    /// 0x401e.
    pub internal_gateway6: Option<Ipv6Addr>,
    /// Route block include ranges, as CIDR prefixes.
    pub include_v4: Vec<Ipv4Net>,
    /// Route block exclude ranges, as CIDR prefixes.
    pub exclude_v4: Vec<Ipv4Net>,
    /// 0x000f.
    pub include_v6: Vec<Ipv6Net>,
    /// 0x0010.
    pub exclude_v6: Vec<Ipv6Net>,
    /// ESP parameters.
    pub esp: EspSettings,
    /// TLVs not interpreted above, in order.
    pub unknown: Vec<RawTlv>,
}

/// One side's ESP keys: the SPI the peer must put in packets to us and the secrets area
/// (encryption key immediately followed by HMAC key, zero padded to 64 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct EspKeys {
    /// SPI (sent little-endian).
    pub spi: u32,
    /// Encryption key then HMAC key, zero padded.
    pub secrets: [u8; ESP_SECRETS_LEN],
}

impl Drop for EspKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secrets);
    }
}

impl std::fmt::Debug for EspKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("EspKeys")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .finish_non_exhaustive()
    }
}

/// The ESP key exchange packet. The server sends its keys (what the client must encrypt with)
/// followed by an empty block; the client answers with its own keys followed by a copy of the
/// server's, exactly as pulse.c builds its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspKeyExchange {
    /// The sender's inbound keys.
    pub keys: EspKeys,
    /// The peer's keys echoed back (client reply only).
    pub echo: Option<EspKeys>,
}

/// A decoded Juniper type-1 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigPacket {
    /// Tunnel settings.
    Main(Box<Config>),
    /// ESP keys.
    Esp(EspKeyExchange),
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl Cursor<'_> {
    fn be32(&self, what: &'static str, at: usize) -> Result<u32, ConfigError> {
        be32(self.buf, at).ok_or(self.short(what, at, 4))
    }

    fn be16(&self, what: &'static str, at: usize) -> Result<u16, ConfigError> {
        be16(self.buf, at).ok_or(self.short(what, at, 2))
    }

    fn short(&self, what: &'static str, offset: usize, need: usize) -> ConfigError {
        ConfigError::Truncated {
            what,
            offset,
            need,
            got: self.buf.len().saturating_sub(offset),
        }
    }
}

impl ConfigPacket {
    /// Decodes the payload of a Juniper type-1 frame (everything after the IF-T header).
    pub fn parse(payload: &[u8]) -> Result<Self, ConfigError> {
        let c = Cursor { buf: payload };
        if payload.len() < 0x1c {
            return Err(c.short("config header", 0, 0x1c));
        }
        if let Some(offset) = (0..0x10)
            .step_by(4)
            .chain([0x14])
            .find(|&o| be32(payload, o) != Some(0))
        {
            return Err(ConfigError::NonZeroReserved { offset });
        }
        let declared = c.be32("payload length", 0x18)? as usize;
        if declared != payload.len() {
            return Err(ConfigError::LengthField {
                field: "payload length",
                expected: payload.len(),
                got: declared,
            });
        }
        match c.be32("identifier", 0x10)? {
            CONFIG_MAGIC => parse_main(&c, 0x1c).map(|cfg| Self::Main(Box::new(cfg))),
            CONFIG_MAGIC_R14 => parse_main_r14(&c).map(|cfg| Self::Main(Box::new(cfg))),
            ESP_CONFIG_MAGIC => parse_esp(&c).map(Self::Esp),
            got => Err(ConfigError::UnknownMagic { got }),
        }
    }
}

fn common_header(out: &mut Vec<u8>, magic: u32) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&[0u8; 4]); // payload length, patched by finish()
    start
}

fn finish(out: &mut [u8], start: usize) -> Result<(), ConfigError> {
    let len = out.len() - start;
    let len32 = u32::try_from(len).map_err(|_| ConfigError::TooLong {
        what: "config payload",
        len,
        max: u32::MAX as usize,
    })?;
    out[start + 0x18..start + 0x1c].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

fn parse_main_r14(c: &Cursor<'_>) -> Result<Config, ConfigError> {
    // 9.1R14+: attribute blocks {0x2c00|0x2e00, len u16, 0x03000000, TLVs} precede the routes;
    // the block with marker 0x2c00 is the last of them (pulse.c).
    let mut cfg = Config::default();
    let mut off = 0x1c;
    loop {
        let marker = c.be16("attribute block marker", off)?;
        let len = usize::from(c.be16("attribute block length", off + 2)?);
        if len < 8 {
            return Err(ConfigError::LengthField {
                field: "attribute block length",
                expected: 8,
                got: len,
            });
        }
        if off + len > c.buf.len() {
            return Err(c.short("attribute block", off, len));
        }
        parse_attrs(c, off, len, &mut cfg)?;
        off += len;
        if marker == ATTR_BLOCK_END {
            break;
        }
    }
    let routes = parse_main(c, off)?;
    merge(&mut cfg, routes);
    Ok(cfg)
}

fn merge(into: &mut Config, from: Config) {
    let Config {
        ipv4_address,
        ipv4_netmask,
        ipv6_address,
        dns,
        wins,
        search_domains,
        mtu,
        internal_gateway,
        internal_gateway6,
        include_v4,
        exclude_v4,
        include_v6,
        exclude_v6,
        esp,
        unknown,
    } = from;
    into.ipv4_address = ipv4_address.or(into.ipv4_address);
    into.ipv4_netmask = ipv4_netmask.or(into.ipv4_netmask);
    into.ipv6_address = ipv6_address.or(into.ipv6_address);
    into.dns.extend(dns);
    into.wins.extend(wins);
    into.search_domains.extend(search_domains);
    into.mtu = mtu.or(into.mtu);
    into.internal_gateway = internal_gateway.or(into.internal_gateway);
    into.internal_gateway6 = internal_gateway6.or(into.internal_gateway6);
    into.include_v4.extend(include_v4);
    into.exclude_v4.extend(exclude_v4);
    into.include_v6.extend(include_v6);
    into.exclude_v6.extend(exclude_v6);
    let e = &mut into.esp;
    e.cipher = esp.cipher.or(e.cipher);
    e.hmac = esp.hmac.or(e.hmac);
    e.lifetime_seconds = esp.lifetime_seconds.or(e.lifetime_seconds);
    e.lifetime_bytes = esp.lifetime_bytes.or(e.lifetime_bytes);
    e.replay_protection = esp.replay_protection.or(e.replay_protection);
    e.port = esp.port.or(e.port);
    e.fallback_seconds = esp.fallback_seconds.or(e.fallback_seconds);
    e.esp_only = esp.esp_only.or(e.esp_only);
    e.allow_6in4 = esp.allow_6in4.or(e.allow_6in4);
    into.unknown.extend(unknown);
}

fn parse_main(c: &Cursor<'_>, off: usize) -> Result<Config, ConfigError> {
    let marker = c.be16("route block marker", off)?;
    if marker != ROUTE_MARKER {
        return Err(ConfigError::Marker {
            what: "route block",
            expected: u32::from(ROUTE_MARKER),
            got: u32::from(marker),
        });
    }
    let routes_len = usize::from(c.be16("route block length", off + 2)?);
    // openconnect reads only the first byte; it looks like a little-endian word.
    let count = le32(c.buf, off + 4).ok_or(c.short("route count", off + 4, 4))? as usize;
    if routes_len != count.saturating_mul(16).saturating_add(8) {
        return Err(ConfigError::LengthField {
            field: "route block length",
            expected: count.saturating_mul(16).saturating_add(8),
            got: routes_len,
        });
    }
    let attrs_at = off + routes_len;
    let attrs_len = c.be32("attributes length", attrs_at)? as usize;
    if attrs_at.checked_add(attrs_len) != Some(c.buf.len()) {
        return Err(ConfigError::LengthField {
            field: "attributes length",
            expected: c.buf.len() - attrs_at,
            got: attrs_len,
        });
    }
    let mut cfg = Config::default();
    for index in 0..count {
        let at = off + 8 + index * 16;
        let kind = c.be32("route type", at)?;
        let filler = c.be32("route filler", at + 4)?;
        if filler != ROUTE_FILLER {
            return Err(ConfigError::Marker {
                what: "route filler",
                expected: ROUTE_FILLER,
                got: filler,
            });
        }
        let first = Ipv4Addr::from(c.be32("route first address", at + 8)?);
        let last = Ipv4Addr::from(c.be32("route last address", at + 12)?);
        if first > last {
            return Err(ConfigError::RouteRange { index, first, last });
        }
        let nets = range_to_prefixes(first, last);
        match kind {
            ROUTE_INCLUDE => cfg.include_v4.extend(nets),
            ROUTE_EXCLUDE => cfg.exclude_v4.extend(nets),
            got => return Err(ConfigError::RouteType { index, got }),
        }
    }
    parse_attrs(c, attrs_at, attrs_len, &mut cfg)?;
    Ok(cfg)
}

/// Parses an attribute section at `off`: 4 bytes of length/marker, 0x03000000, TLVs.
fn parse_attrs(
    c: &Cursor<'_>,
    off: usize,
    len: usize,
    cfg: &mut Config,
) -> Result<(), ConfigError> {
    if len < 8 {
        return Err(ConfigError::LengthField {
            field: "attributes length",
            expected: 8,
            got: len,
        });
    }
    let marker = c.be32("attributes marker", off + 4)?;
    if marker != ATTR_MARKER {
        return Err(ConfigError::Marker {
            what: "attributes",
            expected: ATTR_MARKER,
            got: marker,
        });
    }
    let end = off + len;
    let mut at = off + 8;
    while at < end {
        if end - at < 4 {
            return Err(ConfigError::TlvTruncated { offset: at });
        }
        let kind = c.be16("TLV type", at)?;
        let vlen = usize::from(c.be16("TLV length", at + 2)?);
        let value = c
            .buf
            .get(at + 4..at + 4 + vlen)
            .filter(|_| at + 4 + vlen <= end)
            .ok_or(ConfigError::TlvTruncated { offset: at })?;
        apply_tlv(cfg, kind, value)?;
        at += 4 + vlen;
    }
    Ok(())
}

fn fixed<const N: usize>(kind: u16, value: &[u8]) -> Result<[u8; N], ConfigError> {
    <[u8; N]>::try_from(value).map_err(|_| ConfigError::TlvLength {
        kind,
        name: tlv_name(kind),
        expected: N,
        got: value.len(),
    })
}

fn v6net(kind: u16, value: &[u8]) -> Result<Ipv6Net, ConfigError> {
    let raw: [u8; 17] = fixed(kind, value)?;
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&raw[..16]);
    if raw[16] > 128 {
        return Err(ConfigError::TlvValue {
            kind,
            name: tlv_name(kind),
            what: "prefix length above 128",
        });
    }
    Ok(Ipv6Net {
        addr: Ipv6Addr::from(addr),
        prefix_len: raw[16],
    })
}

fn apply_tlv(cfg: &mut Config, kind: u16, value: &[u8]) -> Result<(), ConfigError> {
    let v4 = |v: &[u8]| fixed::<4>(kind, v).map(Ipv4Addr::from);
    let flag = |v: &[u8]| fixed::<1>(kind, v).map(|[b]| b != 0);
    let word = |v: &[u8]| fixed::<4>(kind, v).map(u32::from_be_bytes);
    let half = |v: &[u8]| fixed::<2>(kind, v).map(u16::from_be_bytes);
    match kind {
        tlv::IPV4_ADDRESS => cfg.ipv4_address = Some(v4(value)?),
        tlv::IPV4_NETMASK => cfg.ipv4_netmask = Some(v4(value)?),
        tlv::DNS_V4 => cfg.dns.push(IpAddr::V4(v4(value)?)),
        tlv::WINS => cfg.wins.push(v4(value)?),
        tlv::IPV6_ADDRESS => cfg.ipv6_address = Some(v6net(kind, value)?),
        tlv::DNS_V6 => cfg
            .dns
            .push(IpAddr::V6(Ipv6Addr::from(fixed::<16>(kind, value)?))),
        tlv::IPV6_INCLUDE => cfg.include_v6.push(v6net(kind, value)?),
        tlv::IPV6_EXCLUDE => cfg.exclude_v6.push(v6net(kind, value)?),
        tlv::MTU => cfg.mtu = Some(word(value)?),
        tlv::SEARCH_DOMAIN => {
            if value.is_empty() {
                return Err(ConfigError::TlvLength {
                    kind,
                    name: tlv_name(kind),
                    expected: 1,
                    got: 0,
                });
            }
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            let text = std::str::from_utf8(text).map_err(|_| ConfigError::TlvValue {
                kind,
                name: tlv_name(kind),
                what: "not UTF-8",
            })?;
            cfg.search_domains.extend(
                text.split([',', ' '])
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned),
            );
        }
        tlv::INTERNAL_GATEWAY => cfg.internal_gateway = Some(v4(value)?),
        tlv::INTERNAL_GATEWAY6 => {
            cfg.internal_gateway6 = Some(Ipv6Addr::from(fixed::<16>(kind, value)?))
        }
        tlv::ESP_CIPHER => cfg.esp.cipher = Some(half(value)?),
        tlv::ESP_HMAC => cfg.esp.hmac = Some(half(value)?),
        tlv::ESP_LIFETIME_SECONDS => cfg.esp.lifetime_seconds = Some(word(value)?),
        tlv::ESP_LIFETIME_BYTES => cfg.esp.lifetime_bytes = Some(word(value)?),
        tlv::ESP_REPLAY_PROTECTION => cfg.esp.replay_protection = Some(word(value)? != 0),
        tlv::ESP_PORT => cfg.esp.port = Some(half(value)?),
        tlv::ESP_TO_TLS_FALLBACK => cfg.esp.fallback_seconds = Some(word(value)?),
        tlv::ESP_ONLY => cfg.esp.esp_only = Some(flag(value)?),
        tlv::ESP_ALLOW_6IN4 => cfg.esp.allow_6in4 = Some(flag(value)?),
        _ => cfg.unknown.push(RawTlv {
            kind,
            value: value.to_vec(),
        }),
    }
    Ok(())
}

fn put_tlv(out: &mut Vec<u8>, kind: u16, value: &[u8]) -> Result<(), ConfigError> {
    let len = u16::try_from(value.len()).map_err(|_| ConfigError::TooLong {
        what: tlv_name(kind),
        len: value.len(),
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

fn v6net_bytes(net: &Ipv6Net) -> [u8; 17] {
    let mut b = [0u8; 17];
    b[..16].copy_from_slice(&net.addr.octets());
    b[16] = net.prefix_len;
    b
}

impl Config {
    /// Appends the payload of a main config packet (classic 0x2c20f000 layout, which every
    /// server version's clients understand) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ConfigError> {
        let routes: Vec<(u32, &Ipv4Net)> = self
            .include_v4
            .iter()
            .map(|n| (ROUTE_INCLUDE, n))
            .chain(self.exclude_v4.iter().map(|n| (ROUTE_EXCLUDE, n)))
            .collect();
        if routes.len() > MAX_V4_ROUTES {
            return Err(ConfigError::TooManyRoutes {
                count: routes.len(),
                max: MAX_V4_ROUTES,
            });
        }
        for (_, net) in &routes {
            Ipv4Net::new(net.addr, net.prefix_len)?;
        }
        let start = common_header(out, CONFIG_MAGIC);
        out.extend_from_slice(&ROUTE_MARKER.to_be_bytes());
        out.extend_from_slice(&((routes.len() * 16 + 8) as u16).to_be_bytes());
        out.extend_from_slice(&(routes.len() as u32).to_le_bytes());
        for (kind, net) in &routes {
            let (first, last) = net.range();
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&ROUTE_FILLER.to_be_bytes());
            out.extend_from_slice(&first.octets());
            out.extend_from_slice(&last.octets());
        }
        let attrs_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&ATTR_MARKER.to_be_bytes());
        if let Err(e) = self.encode_tlvs(out) {
            out.truncate(start);
            return Err(e);
        }
        let attrs_len = (out.len() - attrs_at) as u32;
        out[attrs_at..attrs_at + 4].copy_from_slice(&attrs_len.to_be_bytes());
        finish(out, start)
    }

    fn encode_tlvs(&self, out: &mut Vec<u8>) -> Result<(), ConfigError> {
        if let Some(mtu) = self.mtu {
            put_tlv(out, tlv::MTU, &mtu.to_be_bytes())?;
        }
        if let Some(a) = self.ipv4_address {
            put_tlv(out, tlv::IPV4_ADDRESS, &a.octets())?;
        }
        if let Some(m) = self.ipv4_netmask {
            put_tlv(out, tlv::IPV4_NETMASK, &m.octets())?;
        }
        if let Some(net) = &self.ipv6_address {
            Ipv6Net::new(net.addr, net.prefix_len)?;
            put_tlv(out, tlv::IPV6_ADDRESS, &v6net_bytes(net))?;
        }
        for dns in &self.dns {
            match dns {
                IpAddr::V4(a) => put_tlv(out, tlv::DNS_V4, &a.octets())?,
                IpAddr::V6(a) => put_tlv(out, tlv::DNS_V6, &a.octets())?,
            }
        }
        for w in &self.wins {
            put_tlv(out, tlv::WINS, &w.octets())?;
        }
        if !self.search_domains.is_empty() {
            let mut text = self.search_domains.join(",").into_bytes();
            text.push(0);
            put_tlv(out, tlv::SEARCH_DOMAIN, &text)?;
        }
        if let Some(g) = self.internal_gateway {
            put_tlv(out, tlv::INTERNAL_GATEWAY, &g.octets())?;
        }
        if let Some(g) = self.internal_gateway6 {
            put_tlv(out, tlv::INTERNAL_GATEWAY6, &g.octets())?;
        }
        for (kind, list) in [
            (tlv::IPV6_INCLUDE, &self.include_v6),
            (tlv::IPV6_EXCLUDE, &self.exclude_v6),
        ] {
            for net in list {
                Ipv6Net::new(net.addr, net.prefix_len)?;
                put_tlv(out, kind, &v6net_bytes(net))?;
            }
        }
        let e = &self.esp;
        let halves = [
            (tlv::ESP_CIPHER, e.cipher),
            (tlv::ESP_HMAC, e.hmac),
            (tlv::ESP_PORT, e.port),
        ];
        for (kind, v) in halves {
            if let Some(v) = v {
                put_tlv(out, kind, &v.to_be_bytes())?;
            }
        }
        let words = [
            (tlv::ESP_LIFETIME_SECONDS, e.lifetime_seconds),
            (tlv::ESP_LIFETIME_BYTES, e.lifetime_bytes),
            (
                tlv::ESP_REPLAY_PROTECTION,
                e.replay_protection.map(u32::from),
            ),
            (tlv::ESP_TO_TLS_FALLBACK, e.fallback_seconds),
        ];
        for (kind, v) in words {
            if let Some(v) = v {
                put_tlv(out, kind, &v.to_be_bytes())?;
            }
        }
        for (kind, v) in [
            (tlv::ESP_ONLY, e.esp_only),
            (tlv::ESP_ALLOW_6IN4, e.allow_6in4),
        ] {
            if let Some(v) = v {
                put_tlv(out, kind, &[u8::from(v)])?;
            }
        }
        for raw in &self.unknown {
            put_tlv(out, raw.kind, &raw.value)?;
        }
        Ok(())
    }
}

fn parse_esp(c: &Cursor<'_>) -> Result<EspKeyExchange, ConfigError> {
    let inner = c.be32("ESP length", 0x1c)? as usize;
    if inner != c.buf.len() - 0x1c {
        return Err(ConfigError::LengthField {
            field: "ESP length",
            expected: c.buf.len() - 0x1c,
            got: inner,
        });
    }
    let marker = c.be32("ESP marker", 0x20)?;
    if marker != ESP_MARKER {
        return Err(ConfigError::Marker {
            what: "ESP",
            expected: ESP_MARKER,
            got: marker,
        });
    }
    let (keys, next) = parse_key_block(c, 0x24)?;
    let rest = &c.buf[next..];
    // The server ends its packet with an empty block (SPI 0, length 0).
    let echo = if rest.is_empty() || (rest.len() == 6 && rest.iter().all(|&b| b == 0)) {
        None
    } else {
        let (echo, end) = parse_key_block(c, next)?;
        if end != c.buf.len() {
            return Err(ConfigError::LengthField {
                field: "ESP key blocks",
                expected: end,
                got: c.buf.len(),
            });
        }
        Some(echo)
    };
    Ok(EspKeyExchange { keys, echo })
}

fn parse_key_block(c: &Cursor<'_>, at: usize) -> Result<(EspKeys, usize), ConfigError> {
    let spi = le32(c.buf, at).ok_or(c.short("ESP SPI", at, 4))?;
    let len = usize::from(c.be16("ESP secrets length", at + 4)?);
    if len != ESP_SECRETS_LEN {
        return Err(ConfigError::EspSecretsLength {
            expected: ESP_SECRETS_LEN,
            got: len,
        });
    }
    let secrets = c.buf.get(at + 6..at + 6 + ESP_SECRETS_LEN).ok_or(c.short(
        "ESP secrets",
        at + 6,
        ESP_SECRETS_LEN,
    ))?;
    let mut keys = EspKeys {
        spi,
        secrets: [0; ESP_SECRETS_LEN],
    };
    keys.secrets.copy_from_slice(secrets);
    Ok((keys, at + 6 + ESP_SECRETS_LEN))
}

impl EspKeyExchange {
    /// Appends the payload of an ESP key exchange packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ConfigError> {
        let start = common_header(out, ESP_CONFIG_MAGIC);
        let inner_at = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&ESP_MARKER.to_be_bytes());
        for keys in std::iter::once(&self.keys).chain(self.echo.as_ref()) {
            out.extend_from_slice(&keys.spi.to_le_bytes());
            out.extend_from_slice(&(ESP_SECRETS_LEN as u16).to_be_bytes());
            out.extend_from_slice(&keys.secrets);
        }
        if self.echo.is_none() {
            out.extend_from_slice(&[0u8; 6]);
        }
        let inner = (out.len() - inner_at) as u32;
        out[inner_at..inner_at + 4].copy_from_slice(&inner.to_be_bytes());
        finish(out, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The main config packet from pulse.c's comment, IF-T header stripped.
    pub(crate) fn captured_main_config() -> Vec<u8> {
        let hex = "\
            00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00 \
            2c 20 f0 00 00 00 00 00  00 00 01 70 2e 00 00 78 \
            07 00 00 00 07 00 00 10  00 00 ff ff 05 05 00 00 \
            05 05 ff ff 07 00 00 10  00 00 ff ff 07 00 00 00 \
            07 00 00 ff 07 00 00 10  00 00 ff ff 08 08 08 08 \
            08 08 08 08 f1 00 00 10  00 00 ff ff 06 06 06 06 \
            06 06 06 07 f1 00 00 10  00 00 ff ff 09 09 09 09 \
            09 09 09 09 f1 00 00 10  00 00 ff ff 0a 0a 0a 0a \
            0a 0a 0a 0a f1 00 00 10  00 00 ff ff 0b 0b 0b 0b \
            0b 0b 0b 0b 00 00 00 dc  03 00 00 00 40 00 00 01 \
            00 40 01 00 01 00 40 1f  00 01 00 40 20 00 01 00 \
            40 21 00 01 00 40 05 00  04 00 00 05 78 00 03 00 \
            04 08 08 08 08 00 03 00  04 08 08 04 04 40 06 00 \
            0c 70 73 65 63 75 72 65  2e 6e 65 74 00 40 07 00 \
            04 00 00 00 00 00 04 00  04 01 01 01 01 40 19 00 \
            01 01 40 1a 00 01 00 40  0f 00 02 00 00 40 10 00 \
            02 00 05 40 11 00 02 00  02 40 12 00 04 00 00 04 \
            b0 40 13 00 04 00 00 00  00 40 14 00 04 00 00 00 \
            01 40 15 00 04 00 00 00  00 40 16 00 02 11 94 40 \
            17 00 04 00 00 00 0f 40  18 00 04 00 00 00 3c 00 \
            01 00 04 0a 14 03 01 00  02 00 04 ff ff ff ff 40 \
            0b 00 04 0a c8 c8 c8 40  0c 00 01 00 40 0d 00 01 \
            00 40 0e 00 01 00 40 1b  00 01 00 40 1c 00 01 00";
        hex.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    fn parse_main_cfg(payload: &[u8]) -> Config {
        match ConfigPacket::parse(payload).expect("parse") {
            ConfigPacket::Main(cfg) => *cfg,
            other => panic!("expected main config, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_packet_captured_in_pulse_c() {
        let cfg = parse_main_cfg(&captured_main_config());
        let net = |a: [u8; 4], l| Ipv4Net {
            addr: Ipv4Addr::from(a),
            prefix_len: l,
        };
        assert_eq!(
            cfg.include_v4,
            [
                net([5, 5, 0, 0], 16),
                net([7, 0, 0, 0], 24),
                net([8, 8, 8, 8], 32)
            ]
        );
        assert_eq!(
            cfg.exclude_v4,
            [
                net([6, 6, 6, 6], 31),
                net([9, 9, 9, 9], 32),
                net([10, 10, 10, 10], 32),
                net([11, 11, 11, 11], 32)
            ]
        );
        assert_eq!(cfg.ipv4_address, Some(Ipv4Addr::new(10, 20, 3, 1)));
        assert_eq!(cfg.ipv4_netmask, Some(Ipv4Addr::new(255, 255, 255, 255)));
        assert_eq!(
            cfg.dns,
            [
                IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
                IpAddr::V4(Ipv4Addr::new(8, 8, 4, 4))
            ]
        );
        assert_eq!(cfg.wins, [Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(cfg.search_domains, ["psecure.net"]);
        assert_eq!(cfg.mtu, Some(1400));
        assert_eq!(cfg.internal_gateway, Some(Ipv4Addr::new(10, 200, 200, 200)));
        assert_eq!(
            cfg.esp,
            EspSettings {
                cipher: Some(5),
                hmac: Some(2),
                lifetime_seconds: Some(1200),
                lifetime_bytes: Some(0),
                replay_protection: Some(true),
                port: Some(4500),
                fallback_seconds: Some(15),
                esp_only: Some(false),
                allow_6in4: None,
            }
        );
        assert!(cfg.unknown.iter().any(|t| t.kind == 0x4018));
    }

    #[test]
    fn r14_variant_with_leading_attribute_blocks() {
        let classic = captured_main_config();
        let mut p = classic[..0x1c].to_vec();
        p[0x10..0x14].copy_from_slice(&CONFIG_MAGIC_R14.to_be_bytes());
        // R16 order from pulse.c: a 0x2e00 block, then the closing 0x2c00 block.
        p.extend_from_slice(&[0x2e, 0, 0, 13, 3, 0, 0, 0, 0x40, 0x26, 0, 1, 1]);
        p.extend_from_slice(&[0x2c, 0, 0, 13, 3, 0, 0, 0, 0x40, 0x25, 0, 1, 1]);
        p.extend_from_slice(&classic[0x1c..]);
        let len = p.len() as u32;
        p[0x18..0x1c].copy_from_slice(&len.to_be_bytes());
        let cfg = parse_main_cfg(&p);
        assert_eq!(cfg.mtu, Some(1400));
        assert_eq!(
            cfg.unknown[0],
            RawTlv {
                kind: 0x4026,
                value: vec![1]
            }
        );
        assert_eq!(
            cfg.unknown[1],
            RawTlv {
                kind: 0x4025,
                value: vec![1]
            }
        );
        assert_eq!(cfg.include_v4.len(), 3);
    }

    fn sample_config() -> Config {
        Config {
            ipv4_address: Some(Ipv4Addr::new(10, 1, 2, 3)),
            ipv4_netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            ipv6_address: Some(Ipv6Net {
                addr: "fd00::5".parse().expect("v6"),
                prefix_len: 64,
            }),
            dns: vec![
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53)),
                IpAddr::V6("fd00::53".parse().expect("v6")),
            ],
            wins: vec![],
            search_domains: vec!["corp.example".into(), "example.com".into()],
            mtu: Some(1400),
            internal_gateway: None,
            internal_gateway6: None,
            include_v4: vec![Ipv4Net {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                prefix_len: 8,
            }],
            exclude_v4: vec![Ipv4Net {
                addr: Ipv4Addr::new(10, 9, 0, 0),
                prefix_len: 16,
            }],
            include_v6: vec![Ipv6Net {
                addr: "fd00::".parse().expect("v6"),
                prefix_len: 8,
            }],
            exclude_v6: vec![Ipv6Net {
                addr: "fd00:9::".parse().expect("v6"),
                prefix_len: 32,
            }],
            esp: EspSettings {
                cipher: Some(2),
                hmac: Some(3),
                lifetime_seconds: Some(3600),
                lifetime_bytes: Some(0),
                replay_protection: Some(true),
                port: Some(4500),
                fallback_seconds: Some(15),
                esp_only: Some(false),
                allow_6in4: Some(true),
            },
            unknown: vec![RawTlv {
                kind: 0x4018,
                value: vec![0, 0, 0, 60],
            }],
        }
    }

    #[test]
    fn main_config_round_trip() {
        let cfg = sample_config();
        let mut out = Vec::new();
        cfg.encode(&mut out).expect("encode");
        assert_eq!(parse_main_cfg(&out), cfg);
        // Encoding the decoded capture gives a packet that decodes the same.
        let captured = parse_main_cfg(&captured_main_config());
        let mut out = Vec::new();
        captured.encode(&mut out).expect("encode");
        assert_eq!(parse_main_cfg(&out), captured);
    }

    #[test]
    fn esp_exchange_matches_captured_layout() {
        // Server packet from pulse.c: SPI ec 52 1b 6c (LE), 0x40 secrets, 6 zero bytes.
        let mut secrets = [0u8; ESP_SECRETS_LEN];
        for (i, b) in secrets.iter_mut().enumerate() {
            *b = i as u8;
        }
        let server = EspKeyExchange {
            keys: EspKeys {
                spi: 0x6c1b_52ec,
                secrets,
            },
            echo: None,
        };
        let mut out = Vec::new();
        server.encode(&mut out).expect("encode");
        assert_eq!(out.len() + 16, 0x80);
        assert_eq!(&out[0x10..0x14], &[0x21, 0x20, 0x24, 0]);
        assert_eq!(&out[0x18..0x1c], &[0, 0, 0, 0x70]);
        assert_eq!(&out[0x1c..0x20], &[0, 0, 0, 0x54]);
        assert_eq!(&out[0x20..0x28], &[1, 0, 0, 0, 0xec, 0x52, 0x1b, 0x6c]);
        assert_eq!(&out[0x28..0x2a], &[0, 0x40]);
        assert_eq!(&out[0x6a..], &[0; 6]);
        assert_eq!(
            ConfigPacket::parse(&out),
            Ok(ConfigPacket::Esp(server.clone()))
        );

        // Client reply: own keys then the server's; 0xc0 bytes with the header as in pulse.c.
        let reply = EspKeyExchange {
            keys: EspKeys {
                spi: 0x0102_0304,
                secrets: [7; ESP_SECRETS_LEN],
            },
            echo: Some(server.keys.clone()),
        };
        let mut out = Vec::new();
        reply.encode(&mut out).expect("encode");
        assert_eq!(out.len() + 16, 0xc0);
        assert_eq!(&out[0x1c..0x20], &0x94u32.to_be_bytes());
        assert_eq!(ConfigPacket::parse(&out), Ok(ConfigPacket::Esp(reply)));
    }

    #[test]
    fn range_to_prefixes_is_exact() {
        let r =
            |a: &str, b: &str| range_to_prefixes(a.parse().expect("v4"), b.parse().expect("v4"));
        assert_eq!(r("0.0.0.0", "255.255.255.255").len(), 1);
        assert_eq!(r("0.0.0.0", "255.255.255.255")[0].prefix_len, 0);
        assert_eq!(r("10.0.0.1", "10.0.0.6").len(), 4); // .1/32 .2/31 .4/31 .6/32
        assert_eq!(r("255.255.255.255", "255.255.255.255")[0].prefix_len, 32);
        let nets = r("10.0.0.0", "10.0.63.255");
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].netmask(), Ipv4Addr::new(255, 255, 192, 0));
    }

    fn with_len(mut p: Vec<u8>) -> Vec<u8> {
        let len = p.len() as u32;
        p[0x18..0x1c].copy_from_slice(&len.to_be_bytes());
        p
    }

    #[test]
    fn malformed_main_config_errors_name_the_problem() {
        let good = captured_main_config();
        assert!(matches!(
            ConfigPacket::parse(&good[..10]),
            Err(ConfigError::Truncated { .. })
        ));
        let mut p = good.clone();
        p[3] = 1;
        assert_eq!(
            ConfigPacket::parse(&p),
            Err(ConfigError::NonZeroReserved { offset: 0 })
        );
        let mut p = good.clone();
        p[0x10] = 0x99;
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::UnknownMagic { .. })
        ));
        let mut p = good.clone();
        p.push(0);
        assert_eq!(
            ConfigPacket::parse(&p),
            Err(ConfigError::LengthField {
                field: "payload length",
                expected: 0x171,
                got: 0x170
            })
        );
        let mut p = good.clone();
        p[0x1c] = 0x2f;
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::Marker {
                what: "route block",
                ..
            })
        ));
        let mut p = good.clone();
        p[0x20] = 8; // count no longer matches the route block length
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::LengthField {
                field: "route block length",
                ..
            })
        ));
        let mut p = good.clone();
        p[0x24] = 0x08; // first route type
        assert_eq!(
            ConfigPacket::parse(&p),
            Err(ConfigError::RouteType {
                index: 0,
                got: 0x0800_0010
            })
        );
        let mut p = good.clone();
        p[0x2a] = 0xfe;
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::Marker {
                what: "route filler",
                ..
            })
        ));
        let mut p = good.clone();
        p[0x2c] = 200; // first address 200.5.0.0, last still 5.5.255.255
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::RouteRange { index: 0, .. })
        ));
        let mut p = good.clone();
        p[0x97] = 0xdd; // attributes length
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::LengthField {
                field: "attributes length",
                ..
            })
        ));
        let mut p = good.clone();
        p[0x98] = 4; // attributes marker
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::Marker {
                what: "attributes",
                ..
            })
        ));
    }

    #[test]
    fn malformed_tlvs_errors_name_the_tlv() {
        let tlv_packet = |tlvs: &[u8]| {
            let mut p = Vec::new();
            Config::default().encode(&mut p).expect("encode");
            let attrs_at = 0x1c + 8;
            p.extend_from_slice(tlvs);
            let attrs_len = (p.len() - attrs_at) as u32;
            p[attrs_at..attrs_at + 4].copy_from_slice(&attrs_len.to_be_bytes());
            with_len(p)
        };
        assert_eq!(
            ConfigPacket::parse(&tlv_packet(&[0x40, 0x05, 0, 2, 5, 0x78])),
            Err(ConfigError::TlvLength {
                kind: tlv::MTU,
                name: "MTU",
                expected: 4,
                got: 2
            })
        );
        assert_eq!(
            ConfigPacket::parse(&tlv_packet(&[0, 1, 0, 3, 1, 2, 3])),
            Err(ConfigError::TlvLength {
                kind: tlv::IPV4_ADDRESS,
                name: "IPv4 address",
                expected: 4,
                got: 3
            })
        );
        let mut v6 = vec![0, 0x0f, 0, 17];
        v6.extend_from_slice(&[0; 16]);
        v6.push(129);
        assert!(matches!(
            ConfigPacket::parse(&tlv_packet(&v6)),
            Err(ConfigError::TlvValue {
                kind: tlv::IPV6_INCLUDE,
                ..
            })
        ));
        assert!(matches!(
            ConfigPacket::parse(&tlv_packet(&[0x40, 0x05, 0, 9, 0])),
            Err(ConfigError::TlvTruncated { .. })
        ));
        assert!(matches!(
            ConfigPacket::parse(&tlv_packet(&[0x40, 0x05])),
            Err(ConfigError::TlvTruncated { .. })
        ));
        assert!(matches!(
            ConfigPacket::parse(&tlv_packet(&[0x40, 0x06, 0, 1, 0xff])),
            Err(ConfigError::TlvValue {
                kind: tlv::SEARCH_DOMAIN,
                what: "not UTF-8",
                ..
            })
        ));
        assert!(matches!(
            ConfigPacket::parse(&tlv_packet(&[0x40, 0x06, 0, 0])),
            Err(ConfigError::TlvLength {
                kind: tlv::SEARCH_DOMAIN,
                ..
            })
        ));
    }

    #[test]
    fn malformed_esp_exchange_is_rejected() {
        let server = EspKeyExchange {
            keys: EspKeys {
                spi: 1,
                secrets: [1; ESP_SECRETS_LEN],
            },
            echo: None,
        };
        let mut good = Vec::new();
        server.encode(&mut good).expect("encode");
        let mut p = good.clone();
        p[0x21] = 1;
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::Marker { what: "ESP", .. })
        ));
        let mut p = good.clone();
        p[0x29] = 0x20;
        assert_eq!(
            ConfigPacket::parse(&p),
            Err(ConfigError::EspSecretsLength {
                expected: 64,
                got: 32
            })
        );
        let mut p = good.clone();
        p[0x1f] = 0x55;
        assert!(matches!(
            ConfigPacket::parse(&p),
            Err(ConfigError::LengthField {
                field: "ESP length",
                ..
            })
        ));
        // A truncated second block.
        let mut p = good[..good.len() - 6].to_vec();
        p.extend_from_slice(&[1, 0, 0, 0, 0, 0x40, 9, 9]);
        let inner = (p.len() - 0x1c) as u32;
        p[0x1c..0x20].copy_from_slice(&inner.to_be_bytes());
        assert!(matches!(
            ConfigPacket::parse(&with_len(p)),
            Err(ConfigError::Truncated {
                what: "ESP secrets",
                ..
            })
        ));
    }

    #[test]
    fn encoder_limits() {
        let cfg = Config {
            include_v4: vec![
                Ipv4Net {
                    addr: Ipv4Addr::new(10, 0, 0, 0),
                    prefix_len: 32
                };
                MAX_V4_ROUTES + 1
            ],
            ..Config::default()
        };
        assert_eq!(
            cfg.encode(&mut Vec::new()),
            Err(ConfigError::TooManyRoutes {
                count: 256,
                max: 255
            })
        );
        let cfg = Config {
            include_v6: vec![Ipv6Net {
                addr: Ipv6Addr::UNSPECIFIED,
                prefix_len: 129,
            }],
            ..Config::default()
        };
        let mut out = vec![1, 2];
        assert_eq!(
            cfg.encode(&mut out),
            Err(ConfigError::PrefixLength { len: 129, max: 128 })
        );
        assert_eq!(out, [1, 2], "failed encode leaves the buffer as it was");
    }
}
