//! IF-T/TLS framing and the HTTP upgrade that precedes it.
//!
//! Owns: the 16-byte frame header, the streaming [`FrameDecoder`] that reassembles frames across
//! arbitrary TLS record boundaries, the frame encoder, the typed [`Message`] view of every frame
//! kind the Pulse protocol uses on the TLS channel, and the `GET … Upgrade: IF-T/TLS 1.0` /
//! `101 Switching Protocols` exchange as pure functions.
//!
//! Does not own: what is inside an authentication frame (EAP, see `eap`), the layout of a config
//! frame (see `config`), or any ordering of messages (see `client` and `server`).
//!
//! Every frame on the wire is:
//!
//! ```text
//!  0               4               8               12              16
//! +---------------+---------------+---------------+---------------+----------------
//! | rsvd | vendor |  message type | total length  |   sequence    | payload ...
//! +---------------+---------------+---------------+---------------+----------------
//! ```
//!
//! all big-endian, the length counting the header itself. The vendor is 24 bits (TCG `0x5597`
//! or Juniper `0xa4c`); openconnect masks the reserved top byte, and so do we.

use crate::wire::{be32, put_be32};
use std::fmt;

/// TCG vendor id (IF-T/TLS base messages).
pub const VENDOR_TCG: u32 = 0x5597;
/// Juniper vendor id (Pulse extensions: data, config, logout …).
pub const VENDOR_JUNIPER: u32 = 0xa4c;
/// IF-T authentication type "Juniper/1": Juniper vendor shifted left 8, type 1. Every auth
/// challenge/response/success frame starts with it.
pub(crate) const AUTH_TYPE_JUNIPER_1: u32 = (VENDOR_JUNIPER << 8) | 1;
/// Size of the IF-T header.
pub const HEADER_LEN: usize = 16;
/// Default upper bound for a frame, header included: openconnect refuses config packets over
/// 1 MiB as "unreasonably large" (pulse.c, `pulse_connect`).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 0x10_0000;
/// Highest IF-T version we speak. openconnect advertises min 1, max 2, preferred 2 because the
/// server only offers HMAC-SHA256 to clients that advertise version 2, although the
/// authentication itself stays version 1 (pulse.c).
pub(crate) const IFT_VERSION_MAX: u8 = 2;
/// Lowest IF-T version we accept.
pub(crate) const IFT_VERSION_MIN: u8 = 1;
/// Longest HTTP head (request or response line plus headers) we buffer before giving up.
pub const MAX_HTTP_HEAD: usize = 8192;

const TCG_VERSION_REQUEST: u32 = 1;
const TCG_VERSION_RESPONSE: u32 = 2;
const TCG_AUTH_CHALLENGE: u32 = 5;
const TCG_AUTH_RESPONSE: u32 = 6;
const TCG_AUTH_SUCCESS: u32 = 7;
const JUNIPER_CONFIG: u32 = 1;
const JUNIPER_DATA: u32 = 4;
const JUNIPER_ESP_ENABLE: u32 = 5;
const JUNIPER_CLIENT_INFO: u32 = 0x88;
const JUNIPER_LOGOUT: u32 = 0x89;
const JUNIPER_END_OF_CONFIG: u32 = 0x8f;
const JUNIPER_FATAL_ERROR: u32 = 0x93;
const JUNIPER_LICENCE: u32 = 0x96;

/// Errors of the IF-T layer: framing, message payloads and the HTTP upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IftError {
    /// The header's length field is below the 16-byte header size.
    #[error("IF-T frame length {length} is shorter than the 16-byte header")]
    FrameTooShort {
        /// Length field as received.
        length: u32,
    },
    /// The header's length field is above the configured limit.
    #[error("IF-T frame length {length} exceeds the limit of {max} bytes")]
    FrameTooLong {
        /// Length field as received (or as it would be encoded).
        length: u64,
        /// Configured maximum.
        max: u32,
    },
    /// A whole frame was expected but the slice is shorter than its header says.
    #[error("IF-T frame truncated: header says {expected} bytes, have {got}")]
    Truncated {
        /// Length from the header (or the header size).
        expected: usize,
        /// Bytes available.
        got: usize,
    },
    /// The decoder hit a framing error earlier; the stream cannot be resynchronised.
    #[error("IF-T stream is desynchronised after an earlier framing error")]
    Poisoned,
    /// A payload has the wrong size for its message type.
    #[error("IF-T {kind} payload is {got} bytes, expected {expected}")]
    PayloadLength {
        /// Message kind.
        kind: FrameKind,
        /// Expected payload length.
        expected: usize,
        /// Received payload length.
        got: usize,
    },
    /// An authentication frame carries an auth type other than Juniper/1.
    #[error(
        "IF-T {kind} has auth type {got:#010x}, expected Juniper/1 ({AUTH_TYPE_JUNIPER_1:#010x})"
    )]
    AuthType {
        /// Message kind.
        kind: FrameKind,
        /// Auth type received.
        got: u32,
    },
    /// A fatal-error (0x93) payload does not match `errorType=N errorString=...`.
    #[error("malformed fatal-error payload: {what}")]
    FatalErrorSyntax {
        /// Which part was wrong.
        what: &'static str,
    },
    /// A text payload (client info, fatal error, ESP enable) is not UTF-8.
    #[error("IF-T {kind} payload is not UTF-8")]
    NotUtf8 {
        /// Message kind.
        kind: FrameKind,
    },
    /// The caller's output buffer is too small for the encoded frame.
    #[error("output buffer too small: need {need} bytes, have {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The HTTP head did not end within [`MAX_HTTP_HEAD`] bytes.
    #[error("HTTP head longer than {limit} bytes without a blank line")]
    HttpHeadTooLong {
        /// The limit.
        limit: usize,
    },
    /// The HTTP head is not syntactically valid.
    #[error("malformed HTTP head: {what}")]
    HttpMalformed {
        /// Which part was wrong.
        what: &'static str,
    },
    /// The upgrade request used a method other than GET.
    #[error("HTTP method {method:?} is not GET")]
    HttpMethod {
        /// Method received.
        method: String,
    },
    /// A header the upgrade needs is absent.
    #[error("HTTP header {name} is missing")]
    HttpMissingHeader {
        /// Header name.
        name: &'static str,
    },
    /// A header the upgrade needs has the wrong value.
    #[error("HTTP header {name} is {got:?}, expected {expected:?}")]
    HttpHeaderValue {
        /// Header name.
        name: &'static str,
        /// Expected value.
        expected: &'static str,
        /// Value received.
        got: String,
    },
    /// The server answered the upgrade with something other than 101.
    #[error("server answered the IF-T upgrade with HTTP {status} {reason:?}")]
    HttpStatus {
        /// Status code.
        status: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// What a frame is, from its (vendor, type) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameKind {
    /// TCG 1: client's version request.
    VersionRequest,
    /// TCG 2: server's version choice.
    VersionResponse,
    /// TCG 5: server's authentication challenge (EAP request).
    AuthChallenge,
    /// TCG 6: client's authentication response (EAP response).
    AuthResponse,
    /// TCG 7: authentication success (EAP success).
    AuthSuccess,
    /// Juniper 1: configuration or ESP key exchange.
    Config,
    /// Juniper 4: one raw IP packet.
    Data,
    /// Juniper 5: client asks the server to start ESP (`ncmo=1`).
    EspEnable,
    /// Juniper 0x88: client information (`clientHostName=...`).
    ClientInfo,
    /// Juniper 0x89: logout.
    Logout,
    /// Juniper 0x8f: end of configuration.
    EndOfConfig,
    /// Juniper 0x93: fatal error, session is over.
    FatalError,
    /// Juniper 0x96: licence information the server sends after set-up.
    Licence,
    /// Anything else.
    Unknown {
        /// Vendor id (24 bits).
        vendor: u32,
        /// Message type.
        msg_type: u32,
    },
}

impl FrameKind {
    /// Classifies a (vendor, type) pair.
    pub fn from_wire(vendor: u32, msg_type: u32) -> Self {
        match (vendor & 0x00ff_ffff, msg_type) {
            (VENDOR_TCG, TCG_VERSION_REQUEST) => Self::VersionRequest,
            (VENDOR_TCG, TCG_VERSION_RESPONSE) => Self::VersionResponse,
            (VENDOR_TCG, TCG_AUTH_CHALLENGE) => Self::AuthChallenge,
            (VENDOR_TCG, TCG_AUTH_RESPONSE) => Self::AuthResponse,
            (VENDOR_TCG, TCG_AUTH_SUCCESS) => Self::AuthSuccess,
            (VENDOR_JUNIPER, JUNIPER_CONFIG) => Self::Config,
            (VENDOR_JUNIPER, JUNIPER_DATA) => Self::Data,
            (VENDOR_JUNIPER, JUNIPER_ESP_ENABLE) => Self::EspEnable,
            (VENDOR_JUNIPER, JUNIPER_CLIENT_INFO) => Self::ClientInfo,
            (VENDOR_JUNIPER, JUNIPER_LOGOUT) => Self::Logout,
            (VENDOR_JUNIPER, JUNIPER_END_OF_CONFIG) => Self::EndOfConfig,
            (VENDOR_JUNIPER, JUNIPER_FATAL_ERROR) => Self::FatalError,
            (VENDOR_JUNIPER, JUNIPER_LICENCE) => Self::Licence,
            (vendor, msg_type) => Self::Unknown { vendor, msg_type },
        }
    }

    /// The (vendor, type) pair this kind is sent with.
    pub fn to_wire(self) -> (u32, u32) {
        match self {
            Self::VersionRequest => (VENDOR_TCG, TCG_VERSION_REQUEST),
            Self::VersionResponse => (VENDOR_TCG, TCG_VERSION_RESPONSE),
            Self::AuthChallenge => (VENDOR_TCG, TCG_AUTH_CHALLENGE),
            Self::AuthResponse => (VENDOR_TCG, TCG_AUTH_RESPONSE),
            Self::AuthSuccess => (VENDOR_TCG, TCG_AUTH_SUCCESS),
            Self::Config => (VENDOR_JUNIPER, JUNIPER_CONFIG),
            Self::Data => (VENDOR_JUNIPER, JUNIPER_DATA),
            Self::EspEnable => (VENDOR_JUNIPER, JUNIPER_ESP_ENABLE),
            Self::ClientInfo => (VENDOR_JUNIPER, JUNIPER_CLIENT_INFO),
            Self::Logout => (VENDOR_JUNIPER, JUNIPER_LOGOUT),
            Self::EndOfConfig => (VENDOR_JUNIPER, JUNIPER_END_OF_CONFIG),
            Self::FatalError => (VENDOR_JUNIPER, JUNIPER_FATAL_ERROR),
            Self::Licence => (VENDOR_JUNIPER, JUNIPER_LICENCE),
            Self::Unknown { vendor, msg_type } => (vendor & 0x00ff_ffff, msg_type),
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VersionRequest => f.write_str("version request"),
            Self::VersionResponse => f.write_str("version response"),
            Self::AuthChallenge => f.write_str("auth challenge"),
            Self::AuthResponse => f.write_str("auth response"),
            Self::AuthSuccess => f.write_str("auth success"),
            Self::Config => f.write_str("config"),
            Self::Data => f.write_str("data"),
            Self::EspEnable => f.write_str("ESP enable"),
            Self::ClientInfo => f.write_str("client info"),
            Self::Logout => f.write_str("logout"),
            Self::EndOfConfig => f.write_str("end of config"),
            Self::FatalError => f.write_str("fatal error"),
            Self::Licence => f.write_str("licence"),
            Self::Unknown { vendor, msg_type } => {
                write!(f, "unknown frame (vendor {vendor:#x}, type {msg_type:#x})")
            }
        }
    }
}

/// The decoded 16-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Vendor id, reserved top byte masked off.
    pub vendor: u32,
    /// Message type.
    pub msg_type: u32,
    /// Total length including the header.
    pub length: u32,
    /// Sender's sequence number; each side counts its own frames from 0 after the upgrade.
    pub seq: u32,
}

impl FrameHeader {
    /// Parses the header at the start of `buf` without checking the length field.
    pub fn parse(buf: &[u8]) -> Result<Self, IftError> {
        match (be32(buf, 0), be32(buf, 4), be32(buf, 8), be32(buf, 12)) {
            (Some(vendor), Some(msg_type), Some(length), Some(seq)) => Ok(Self {
                vendor: vendor & 0x00ff_ffff,
                msg_type,
                length,
                seq,
            }),
            _ => Err(IftError::Truncated {
                expected: HEADER_LEN,
                got: buf.len(),
            }),
        }
    }

    /// What the frame is.
    pub fn kind(&self) -> FrameKind {
        FrameKind::from_wire(self.vendor, self.msg_type)
    }

    fn check_length(&self, max: u32) -> Result<usize, IftError> {
        if (self.length as usize) < HEADER_LEN {
            return Err(IftError::FrameTooShort {
                length: self.length,
            });
        }
        if self.length > max {
            return Err(IftError::FrameTooLong {
                length: u64::from(self.length),
                max,
            });
        }
        Ok(self.length as usize)
    }
}

/// One whole frame, borrowed from the decoder's buffer or the caller's slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The bytes after the header (`length - 16` of them).
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses exactly one frame occupying all of `buf`, with length checks against `max_len`.
    pub fn parse(buf: &'a [u8], max_len: u32) -> Result<Self, IftError> {
        let header = FrameHeader::parse(buf)?;
        let len = header.check_length(max_len)?;
        if buf.len() != len {
            return Err(IftError::Truncated {
                expected: len,
                got: buf.len(),
            });
        }
        Ok(Self {
            header,
            payload: &buf[HEADER_LEN..],
        })
    }

    /// Interprets the frame.
    pub fn message(&self) -> Result<Message<'a>, IftError> {
        Message::parse(self.header.kind(), self.payload)
    }
}

/// Streaming IF-T decoder: push whatever TLS hands you, pop whole frames.
///
/// TLS record boundaries mean nothing to IF-T (openconnect once assumed they did and had to be
/// fixed), so a frame may arrive split over many pushes or many frames in one push. After a
/// length error the stream cannot be trusted again and every later call returns
/// [`IftError::Poisoned`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_len: u32,
    poisoned: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_len` bytes (header included).
    pub fn new(max_len: u32) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_len: max_len.max(HEADER_LEN as u32),
            poisoned: false,
        }
    }

    /// Refuses frames longer than `max_len` bytes from now on (a server takes larger frames
    /// once the client has logged in).
    pub fn set_max_len(&mut self, max_len: u32) {
        self.max_len = max_len.max(HEADER_LEN as u32);
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 4096) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Pops the next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, IftError> {
        if self.poisoned {
            return Err(IftError::Poisoned);
        }
        let pending = &self.buf[self.start..];
        if pending.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = FrameHeader::parse(pending)?;
        let len = match header.check_length(self.max_len) {
            Ok(len) => len,
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        if pending.len() < len {
            return Ok(None);
        }
        let begin = self.start;
        self.start += len;
        Ok(Some(Frame {
            header,
            payload: &self.buf[begin + HEADER_LEN..begin + len],
        }))
    }
}

/// Writes a frame header for `payload_len` bytes of payload into `out[..16]`.
pub(crate) fn encode_header(
    kind: FrameKind,
    seq: u32,
    payload_len: usize,
    out: &mut [u8],
) -> Result<(), IftError> {
    let total = frame_len(payload_len)?;
    if out.len() < HEADER_LEN {
        return Err(IftError::BufferTooSmall {
            need: HEADER_LEN,
            have: out.len(),
        });
    }
    let (vendor, msg_type) = kind.to_wire();
    put_be32(out, 0, vendor);
    put_be32(out, 4, msg_type);
    put_be32(out, 8, total);
    put_be32(out, 12, seq);
    Ok(())
}

fn frame_len(payload_len: usize) -> Result<u32, IftError> {
    payload_len
        .checked_add(HEADER_LEN)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or(IftError::FrameTooLong {
            length: payload_len as u64 + HEADER_LEN as u64,
            max: u32::MAX,
        })
}

/// Encodes a data frame (Juniper 4) around `packet` into `out`; returns the bytes written.
/// This is the TLS fallback hot path, so it writes straight into the caller's buffer.
pub(crate) fn encode_data_frame(
    seq: u32,
    packet: &[u8],
    out: &mut [u8],
) -> Result<usize, IftError> {
    let need = HEADER_LEN + packet.len();
    if out.len() < need {
        return Err(IftError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    encode_header(FrameKind::Data, seq, packet.len(), out)?;
    out[HEADER_LEN..need].copy_from_slice(packet);
    Ok(need)
}

/// The `errorType` numbers openconnect has seen in fatal-error (0x93) frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FatalErrorKind {
    /// 6: "agentd error", typically another session started and replaced this one.
    SessionReplaced,
    /// 7: the session has been terminated.
    SessionTerminated,
    /// 8: the session timed out (idle timeout).
    IdleTimeout,
    /// Any other number.
    Other(u32),
}

impl FatalErrorKind {
    /// Numeric `errorType`.
    pub fn code(self) -> u32 {
        match self {
            Self::SessionReplaced => 6,
            Self::SessionTerminated => 7,
            Self::IdleTimeout => 8,
            Self::Other(code) => code,
        }
    }

    /// From the numeric `errorType`.
    pub fn from_code(code: u32) -> Self {
        match code {
            6 => Self::SessionReplaced,
            7 => Self::SessionTerminated,
            8 => Self::IdleTimeout,
            other => Self::Other(other),
        }
    }
}

/// The client information frame (Juniper 0x88): `clientHostName=<name>[ clientIp=<ip>]\n\0`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo {
    /// `clientHostName` value.
    pub hostname: String,
    /// `clientIp` value, if sent.
    pub client_ip: Option<String>,
}

impl ClientInfo {
    fn to_text(&self) -> String {
        let mut s = format!("clientHostName={}", self.hostname);
        if let Some(ip) = &self.client_ip {
            s.push_str(" clientIp=");
            s.push_str(ip);
        }
        s.push('\n');
        s.push('\0');
        s
    }

    /// Parses the payload; unknown `key=value` pairs are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, IftError> {
        let text = std::str::from_utf8(payload).map_err(|_| IftError::NotUtf8 {
            kind: FrameKind::ClientInfo,
        })?;
        let text = text.trim_end_matches('\0').trim_end_matches('\n');
        let mut info = Self::default();
        for pair in text.split(' ') {
            match pair.split_once('=') {
                Some(("clientHostName", v)) => info.hostname = v.to_owned(),
                Some(("clientIp", v)) => info.client_ip = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(info)
    }
}

/// A typed view of one IF-T frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// TCG 1: versions the client accepts.
    VersionRequest {
        /// Lowest version.
        min: u8,
        /// Highest version.
        max: u8,
        /// Preferred version.
        preferred: u8,
    },
    /// TCG 2: version the server picked.
    VersionResponse {
        /// Selected version.
        version: u8,
    },
    /// TCG 5: auth challenge; `eap` is empty in the first, header-only challenge.
    AuthChallenge {
        /// The EAP packet (request).
        eap: &'a [u8],
    },
    /// TCG 6: auth response carrying an EAP response.
    AuthResponse {
        /// The EAP packet (response).
        eap: &'a [u8],
    },
    /// TCG 7: auth success carrying EAP success.
    AuthSuccess {
        /// The EAP packet (success).
        eap: &'a [u8],
    },
    /// Juniper 1: configuration or ESP key exchange; decode with `config`.
    Config(&'a [u8]),
    /// Juniper 4: one IP packet.
    Data(&'a [u8]),
    /// Juniper 5: ESP enable request, text such as `ncmo=1`.
    EspEnable(&'a str),
    /// Juniper 0x88: client information.
    ClientInfo(ClientInfo),
    /// Juniper 0x89: logout.
    Logout,
    /// Juniper 0x8f: end of configuration.
    EndOfConfig,
    /// Juniper 0x93: fatal error.
    FatalError {
        /// `errorType`.
        kind: FatalErrorKind,
        /// `errorString`, percent-decoded.
        message: String,
    },
    /// Juniper 0x96: licence information (opaque).
    Licence(&'a [u8]),
    /// A frame we do not interpret.
    Unknown {
        /// Vendor id.
        vendor: u32,
        /// Message type.
        msg_type: u32,
        /// Payload.
        payload: &'a [u8],
    },
}

impl<'a> Message<'a> {
    /// Interprets a payload of the given kind.
    pub fn parse(kind: FrameKind, payload: &'a [u8]) -> Result<Self, IftError> {
        Ok(match kind {
            FrameKind::VersionRequest => {
                let [_, min, max, preferred] = four(kind, payload)?;
                Self::VersionRequest {
                    min,
                    max,
                    preferred,
                }
            }
            FrameKind::VersionResponse => {
                let [_, _, _, version] = four(kind, payload)?;
                Self::VersionResponse { version }
            }
            FrameKind::AuthChallenge => Self::AuthChallenge {
                eap: auth_payload(kind, payload)?,
            },
            FrameKind::AuthResponse => Self::AuthResponse {
                eap: auth_payload(kind, payload)?,
            },
            FrameKind::AuthSuccess => Self::AuthSuccess {
                eap: auth_payload(kind, payload)?,
            },
            FrameKind::Config => Self::Config(payload),
            FrameKind::Data => Self::Data(payload),
            FrameKind::EspEnable => Self::EspEnable(
                std::str::from_utf8(payload)
                    .map_err(|_| IftError::NotUtf8 { kind })?
                    .trim_end_matches('\0')
                    .trim_end_matches('\n'),
            ),
            FrameKind::ClientInfo => Self::ClientInfo(ClientInfo::parse(payload)?),
            FrameKind::Logout => Self::Logout,
            FrameKind::EndOfConfig => Self::EndOfConfig,
            FrameKind::FatalError => parse_fatal(payload)?,
            FrameKind::Licence => Self::Licence(payload),
            FrameKind::Unknown { vendor, msg_type } => Self::Unknown {
                vendor,
                msg_type,
                payload,
            },
        })
    }

    /// The kind this message is sent as.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::VersionRequest { .. } => FrameKind::VersionRequest,
            Self::VersionResponse { .. } => FrameKind::VersionResponse,
            Self::AuthChallenge { .. } => FrameKind::AuthChallenge,
            Self::AuthResponse { .. } => FrameKind::AuthResponse,
            Self::AuthSuccess { .. } => FrameKind::AuthSuccess,
            Self::Config(_) => FrameKind::Config,
            Self::Data(_) => FrameKind::Data,
            Self::EspEnable(_) => FrameKind::EspEnable,
            Self::ClientInfo(_) => FrameKind::ClientInfo,
            Self::Logout => FrameKind::Logout,
            Self::EndOfConfig => FrameKind::EndOfConfig,
            Self::FatalError { .. } => FrameKind::FatalError,
            Self::Licence(_) => FrameKind::Licence,
            Self::Unknown {
                vendor, msg_type, ..
            } => FrameKind::Unknown {
                vendor: *vendor,
                msg_type: *msg_type,
            },
        }
    }

    /// Appends the encoded frame (header included) to `out`.
    pub fn encode_to_vec(&self, seq: u32, out: &mut Vec<u8>) -> Result<(), IftError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        match self {
            Self::VersionRequest {
                min,
                max,
                preferred,
            } => out.extend_from_slice(&[0, *min, *max, *preferred]),
            Self::VersionResponse { version } => out.extend_from_slice(&[0, 0, 0, *version]),
            Self::AuthChallenge { eap }
            | Self::AuthResponse { eap }
            | Self::AuthSuccess { eap } => {
                out.extend_from_slice(&AUTH_TYPE_JUNIPER_1.to_be_bytes());
                out.extend_from_slice(eap);
            }
            Self::Config(p) | Self::Data(p) | Self::Licence(p) => out.extend_from_slice(p),
            Self::Unknown { payload, .. } => out.extend_from_slice(payload),
            Self::EspEnable(text) => {
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\n\0");
            }
            Self::ClientInfo(info) => out.extend_from_slice(info.to_text().as_bytes()),
            Self::Logout => {}
            // openconnect: "Seems to have a 4-byte payload of zeroes".
            Self::EndOfConfig => out.extend_from_slice(&[0; 4]),
            Self::FatalError { kind, message } => {
                let text = format!(
                    "errorType={} errorString={}\n",
                    kind.code(),
                    percent_encode(message)
                );
                out.extend_from_slice(text.as_bytes());
            }
        }
        let payload_len = out.len() - start - HEADER_LEN;
        if let Err(e) = encode_header(self.kind(), seq, payload_len, &mut out[start..]) {
            out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Encodes the frame into `out`, returning the bytes written.
    pub fn encode(&self, seq: u32, out: &mut [u8]) -> Result<usize, IftError> {
        if let Self::Data(packet) = self {
            return encode_data_frame(seq, packet, out);
        }
        let mut tmp = Vec::new();
        self.encode_to_vec(seq, &mut tmp)?;
        let have = out.len();
        let dst = out.get_mut(..tmp.len()).ok_or(IftError::BufferTooSmall {
            need: tmp.len(),
            have,
        })?;
        dst.copy_from_slice(&tmp);
        Ok(tmp.len())
    }
}

fn four(kind: FrameKind, payload: &[u8]) -> Result<[u8; 4], IftError> {
    <[u8; 4]>::try_from(payload).map_err(|_| IftError::PayloadLength {
        kind,
        expected: 4,
        got: payload.len(),
    })
}

fn auth_payload(kind: FrameKind, payload: &[u8]) -> Result<&[u8], IftError> {
    let auth_type = be32(payload, 0).ok_or(IftError::PayloadLength {
        kind,
        expected: 4,
        got: payload.len(),
    })?;
    if auth_type != AUTH_TYPE_JUNIPER_1 {
        return Err(IftError::AuthType {
            kind,
            got: auth_type,
        });
    }
    Ok(&payload[4..])
}

fn parse_fatal(payload: &[u8]) -> Result<Message<'static>, IftError> {
    let text = std::str::from_utf8(payload).map_err(|_| IftError::NotUtf8 {
        kind: FrameKind::FatalError,
    })?;
    let text = text.trim_end_matches('\0');
    let text = text.strip_suffix('\n').unwrap_or(text);
    let rest = text
        .strip_prefix("errorType=")
        .ok_or(IftError::FatalErrorSyntax {
            what: "missing errorType=",
        })?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let code: u32 = rest[..digits]
        .parse()
        .map_err(|_| IftError::FatalErrorSyntax {
            what: "errorType is not a number",
        })?;
    let message =
        rest[digits..]
            .strip_prefix(" errorString=")
            .ok_or(IftError::FatalErrorSyntax {
                what: "missing errorString=",
            })?;
    Ok(Message::FatalError {
        kind: FatalErrorKind::from_code(code),
        message: percent_decode(message).ok_or(IftError::FatalErrorSyntax {
            what: "bad percent-encoding in errorString",
        })?,
    })
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// HTTP upgrade
// ---------------------------------------------------------------------------------------------

/// What the server learned from the client's upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Request path, e.g. `/` or `/realm-url`.
    pub path: String,
    /// `Host` header, if present.
    pub host: Option<String>,
    /// `User-Agent` header, if present.
    pub user_agent: Option<String>,
    /// The client offered AES-256-GCM ESP (`X-Tunnel-ESP: aes256-gcm`, tunnel's own header).
    pub offers_aes_gcm: bool,
    /// The client reads IF-T as a byte stream, so several frames may share a TLS record
    /// (`X-Tunnel-Records: stream`, tunnel's own header). openconnect does not: it reads one
    /// record at a time and expects exactly one frame in it.
    pub stream_records: bool,
}

/// The header in which tunnel's client offers its own ESP suites.
pub const ESP_OFFER_HEADER: &str = "X-Tunnel-ESP";

/// The header in which tunnel's client says it takes several IF-T frames per TLS record.
pub const RECORDS_HEADER: &str = "X-Tunnel-Records";

/// What the client learned from the server's upgrade answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeResponse {
    /// `Upgrade` header, if present (openconnect does not require it).
    pub upgrade: Option<String>,
}

/// Builds the client's upgrade request, as openconnect sends it, plus tunnel's own headers:
/// the AES-GCM offer and the stream-records capability.
pub fn build_upgrade_request(
    host: &str,
    path: &str,
    user_agent: &str,
    offer_aes_gcm: bool,
    stream_records: bool,
) -> String {
    let path = path.trim_start_matches('/');
    let mut offer = String::new();
    if offer_aes_gcm {
        offer.push_str(&format!("{ESP_OFFER_HEADER}: aes256-gcm\r\n"));
    }
    if stream_records {
        offer.push_str(&format!("{RECORDS_HEADER}: stream\r\n"));
    }
    format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n{offer}\
         Content-Type: EAP\r\nUpgrade: IF-T/TLS 1.0\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The server's `101 Switching Protocols` answer.
pub fn build_upgrade_response() -> &'static [u8] {
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: IF-T/TLS 1.0\r\n\r\n"
}

/// A minimal HTTP error answer for a refused upgrade (the connection is closed after it).
pub(crate) fn build_http_error(status: u16, reason: &str) -> String {
    format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
}

struct HttpHead<'a> {
    start_line: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    consumed: usize,
}

impl HttpHead<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

fn split_head(buf: &[u8]) -> Result<Option<HttpHead<'_>>, IftError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HTTP_HEAD {
            return Err(IftError::HttpHeadTooLong {
                limit: MAX_HTTP_HEAD,
            });
        }
        return Ok(None);
    };
    if end + 4 > MAX_HTTP_HEAD {
        return Err(IftError::HttpHeadTooLong {
            limit: MAX_HTTP_HEAD,
        });
    }
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| IftError::HttpMalformed {
        what: "head is not UTF-8",
    })?;
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(IftError::HttpMalformed {
            what: "header line without a colon",
        })?;
        if name.is_empty() || name.contains(' ') {
            return Err(IftError::HttpMalformed {
                what: "invalid header name",
            });
        }
        headers.push((name, value.trim()));
    }
    Ok(Some(HttpHead {
        start_line,
        headers,
        consumed: end + 4,
    }))
}

/// Parses the client's upgrade request. `Ok(None)`: incomplete, push more bytes. On success,
/// also returns how many bytes the head used; anything after it is IF-T.
pub fn parse_upgrade_request(buf: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, IftError> {
    let Some(head) = split_head(buf)? else {
        return Ok(None);
    };
    let mut parts = head.start_line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IftError::HttpMalformed {
            what: "request line is not `METHOD PATH VERSION`",
        });
    };
    if method != "GET" {
        return Err(IftError::HttpMethod {
            method: method.to_owned(),
        });
    }
    if !version.starts_with("HTTP/1.") {
        return Err(IftError::HttpMalformed {
            what: "not HTTP/1.x",
        });
    }
    if !path.starts_with('/') {
        return Err(IftError::HttpMalformed {
            what: "path does not start with /",
        });
    }
    expect_header(&head, "Upgrade", "IF-T/TLS 1.0")?;
    expect_header(&head, "Content-Type", "EAP")?;
    Ok(Some((
        UpgradeRequest {
            path: path.to_owned(),
            host: head.header("Host").map(str::to_owned),
            user_agent: head.header("User-Agent").map(str::to_owned),
            offers_aes_gcm: head.header(ESP_OFFER_HEADER).is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("aes256-gcm"))
            }),
            stream_records: head
                .header(RECORDS_HEADER)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("stream")),
        },
        head.consumed,
    )))
}

fn expect_header(
    head: &HttpHead<'_>,
    name: &'static str,
    expected: &'static str,
) -> Result<(), IftError> {
    let got = head
        .header(name)
        .ok_or(IftError::HttpMissingHeader { name })?;
    if !got.eq_ignore_ascii_case(expected) {
        return Err(IftError::HttpHeaderValue {
            name,
            expected,
            got: got.to_owned(),
        });
    }
    Ok(())
}

/// Parses the server's answer to the upgrade. Anything but 101 is
/// [`IftError::HttpStatus`]. `Ok(None)`: incomplete.
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Option<(UpgradeResponse, usize)>, IftError> {
    let Some(head) = split_head(buf)? else {
        return Ok(None);
    };
    let mut parts = head.start_line.splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(IftError::HttpMalformed {
            what: "status line is not `VERSION STATUS REASON`",
        });
    };
    if !version.starts_with("HTTP/1.") {
        return Err(IftError::HttpMalformed {
            what: "not HTTP/1.x",
        });
    }
    let status: u16 = status
        .parse()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or(IftError::HttpMalformed {
            what: "status is not a 3-digit number",
        })?;
    if status != 101 {
        return Err(IftError::HttpStatus {
            status,
            reason: parts.next().unwrap_or_default().to_owned(),
        });
    }
    Ok(Some((
        UpgradeResponse {
            upgrade: head.header("Upgrade").map(str::to_owned),
        },
        head.consumed,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(msg: &Message<'_>, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        msg.encode_to_vec(seq, &mut v).expect("encode");
        v
    }

    #[test]
    fn version_request_matches_openconnect_bytes() {
        let bytes = frame_bytes(
            &Message::VersionRequest {
                min: 1,
                max: 2,
                preferred: 2,
            },
            0,
        );
        assert_eq!(
            bytes,
            [
                0, 0, 0x55, 0x97, 0, 0, 0, 1, 0, 0, 0, 0x14, 0, 0, 0, 0, 0, 1, 2, 2
            ]
        );
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::VersionRequest {
                min: 1,
                max: 2,
                preferred: 2,
            },
            Message::VersionResponse { version: 2 },
            Message::AuthChallenge { eap: &[] },
            Message::AuthResponse {
                eap: &[2, 1, 0, 5, 1],
            },
            Message::AuthSuccess { eap: &[3, 9, 0, 4] },
            Message::Config(&[1, 2, 3]),
            Message::Data(&[0x45, 0, 0, 20]),
            Message::EspEnable("ncmo=1"),
            Message::ClientInfo(ClientInfo {
                hostname: "box".into(),
                client_ip: Some("192.0.2.1".into()),
            }),
            Message::Logout,
            Message::EndOfConfig,
            Message::FatalError {
                kind: FatalErrorKind::IdleTimeout,
                message: "session timed out (idle) 100%".into(),
            },
            Message::Licence(b"lic"),
            Message::Unknown {
                vendor: 0x1234,
                msg_type: 77,
                payload: b"x",
            },
        ];
        for (seq, msg) in msgs.iter().enumerate() {
            let bytes = frame_bytes(msg, seq as u32);
            let frame = Frame::parse(&bytes, DEFAULT_MAX_FRAME_LEN).expect("frame");
            assert_eq!(frame.header.seq, seq as u32);
            assert_eq!(frame.header.length as usize, bytes.len());
            assert_eq!(&frame.message().expect("message"), msg, "{msg:?}");
            let mut buf = vec![0u8; bytes.len()];
            assert_eq!(msg.encode(seq as u32, &mut buf), Ok(bytes.len()));
            assert_eq!(buf, bytes);
        }
    }

    #[test]
    fn decoder_reassembles_across_every_split() {
        let mut stream = Vec::new();
        Message::Data(&[1, 2, 3, 4, 5])
            .encode_to_vec(0, &mut stream)
            .expect("encode");
        Message::Logout
            .encode_to_vec(1, &mut stream)
            .expect("encode");
        Message::Data(&[9; 40])
            .encode_to_vec(2, &mut stream)
            .expect("encode");
        for chunk in 1..=stream.len() {
            let mut dec = FrameDecoder::default();
            let mut seqs = Vec::new();
            for piece in stream.chunks(chunk) {
                dec.push(piece);
                while let Some(f) = dec.next_frame().expect("frame") {
                    seqs.push(f.header.seq);
                }
            }
            assert_eq!(seqs, [0, 1, 2], "chunk size {chunk}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn decoder_rejects_short_and_long_lengths_and_stays_poisoned() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0, 0x0a, 0x4c, 0, 0, 0, 4, 0, 0, 0, 15, 0, 0, 0, 0]);
        assert_eq!(
            dec.next_frame(),
            Err(IftError::FrameTooShort { length: 15 })
        );
        assert_eq!(dec.next_frame(), Err(IftError::Poisoned));

        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0, 0x0a, 0x4c, 0, 0, 0, 4, 0, 0, 0, 101, 0, 0, 0, 0]);
        assert_eq!(
            dec.next_frame(),
            Err(IftError::FrameTooLong {
                length: 101,
                max: 100
            })
        );
    }

    #[test]
    fn frame_parse_rejects_trailing_or_missing_bytes() {
        let mut bytes = frame_bytes(&Message::Logout, 0);
        bytes.push(0);
        assert_eq!(
            Frame::parse(&bytes, DEFAULT_MAX_FRAME_LEN),
            Err(IftError::Truncated {
                expected: 16,
                got: 17
            })
        );
        assert!(matches!(
            Frame::parse(&bytes[..10], DEFAULT_MAX_FRAME_LEN),
            Err(IftError::Truncated { .. })
        ));
    }

    #[test]
    fn malformed_payloads_have_typed_errors() {
        assert_eq!(
            Message::parse(FrameKind::VersionResponse, &[0, 2]),
            Err(IftError::PayloadLength {
                kind: FrameKind::VersionResponse,
                expected: 4,
                got: 2
            })
        );
        assert_eq!(
            Message::parse(FrameKind::AuthChallenge, &[0, 0, 0x55, 0x97]),
            Err(IftError::AuthType {
                kind: FrameKind::AuthChallenge,
                got: 0x5597
            })
        );
        assert!(matches!(
            Message::parse(FrameKind::AuthResponse, &[0, 0]),
            Err(IftError::PayloadLength { .. })
        ));
        assert_eq!(
            Message::parse(FrameKind::FatalError, b"errorTyp=1"),
            Err(IftError::FatalErrorSyntax {
                what: "missing errorType="
            })
        );
        assert_eq!(
            Message::parse(FrameKind::FatalError, b"errorType=x errorString=a"),
            Err(IftError::FatalErrorSyntax {
                what: "errorType is not a number"
            })
        );
        assert_eq!(
            Message::parse(FrameKind::FatalError, b"errorType=8 errorString=%G1"),
            Err(IftError::FatalErrorSyntax {
                what: "bad percent-encoding in errorString"
            })
        );
        assert_eq!(
            Message::parse(FrameKind::ClientInfo, &[0xff]),
            Err(IftError::NotUtf8 {
                kind: FrameKind::ClientInfo
            })
        );
    }

    #[test]
    fn fatal_error_as_ivanti_sends_it() {
        let msg = Message::parse(
            FrameKind::FatalError,
            b"errorType=8 errorString=session%20timed%20out\n",
        )
        .expect("parse");
        assert_eq!(
            msg,
            Message::FatalError {
                kind: FatalErrorKind::IdleTimeout,
                message: "session timed out".into()
            }
        );
    }

    #[test]
    fn encode_into_small_buffer_fails_cleanly() {
        let mut buf = [0u8; 10];
        assert_eq!(
            encode_data_frame(0, &[1, 2, 3], &mut buf),
            Err(IftError::BufferTooSmall { need: 19, have: 10 })
        );
        assert_eq!(
            Message::Logout.encode(0, &mut buf),
            Err(IftError::BufferTooSmall { need: 16, have: 10 })
        );
    }

    #[test]
    fn upgrade_round_trip() {
        let req = build_upgrade_request("vpn.example.com", "/", "tunnel/0.1", false, false);
        assert!(req.starts_with("GET / HTTP/1.1\r\n"));
        let mut bytes = req.clone().into_bytes();
        bytes.extend_from_slice(&[0, 0, 0x55, 0x97]);
        let (parsed, used) = parse_upgrade_request(&bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, req.len());
        assert_eq!(parsed.path, "/");
        assert_eq!(parsed.host.as_deref(), Some("vpn.example.com"));
        assert_eq!(parsed.user_agent.as_deref(), Some("tunnel/0.1"));
        assert!(!parsed.offers_aes_gcm && !parsed.stream_records);
        assert_eq!(parse_upgrade_request(&bytes[..20]), Ok(None));
        // tunnel's own headers, and only those values.
        for (gcm, stream) in [(true, false), (false, true), (true, true)] {
            let req = build_upgrade_request("gw", "/", "tunnel/0.1", gcm, stream);
            let (parsed, _) = parse_upgrade_request(req.as_bytes())
                .expect("valid")
                .expect("complete");
            assert_eq!(
                (parsed.offers_aes_gcm, parsed.stream_records),
                (gcm, stream)
            );
        }
        let odd = build_upgrade_request("gw", "/", "x", false, false).replacen(
            "Host:",
            "X-Tunnel-Records: datagram\r\nHost:",
            1,
        );
        let (parsed, _) = parse_upgrade_request(odd.as_bytes())
            .expect("valid")
            .expect("complete");
        assert!(
            !parsed.stream_records,
            "an unknown value is not the capability"
        );

        let resp = build_upgrade_response();
        let (parsed, used) = parse_upgrade_response(resp)
            .expect("valid")
            .expect("complete");
        assert_eq!(used, resp.len());
        assert_eq!(parsed.upgrade.as_deref(), Some("IF-T/TLS 1.0"));
    }

    #[test]
    fn upgrade_rejections_are_typed() {
        assert_eq!(
            parse_upgrade_request(b"POST / HTTP/1.1\r\n\r\n"),
            Err(IftError::HttpMethod {
                method: "POST".into()
            })
        );
        assert_eq!(
            parse_upgrade_request(b"GET / HTTP/1.1\r\nContent-Type: EAP\r\n\r\n"),
            Err(IftError::HttpMissingHeader { name: "Upgrade" })
        );
        assert_eq!(
            parse_upgrade_request(
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nContent-Type: EAP\r\n\r\n"
            ),
            Err(IftError::HttpHeaderValue {
                name: "Upgrade",
                expected: "IF-T/TLS 1.0",
                got: "websocket".into()
            })
        );
        assert_eq!(
            parse_upgrade_request(b"GET / HTTP/1.1\r\nUpgrade: IF-T/TLS 1.0\r\n\r\n"),
            Err(IftError::HttpMissingHeader {
                name: "Content-Type"
            })
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 401 Unauthorized\r\n\r\n"),
            Err(IftError::HttpStatus {
                status: 401,
                reason: "Unauthorized".into()
            })
        );
        assert!(matches!(
            parse_upgrade_response(b"HTTP/1.1 abc x\r\n\r\n"),
            Err(IftError::HttpMalformed { .. })
        ));
        assert_eq!(
            parse_upgrade_response(&[b'a'; MAX_HTTP_HEAD + 1]),
            Err(IftError::HttpHeadTooLong {
                limit: MAX_HTTP_HEAD
            })
        );
        assert!(matches!(
            parse_upgrade_request(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"),
            Err(IftError::HttpMalformed { .. })
        ));
    }
}
