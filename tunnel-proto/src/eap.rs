//! EAP, Juniper expanded EAP and the Juniper AVPs that carry the Pulse login dialogue.
//!
//! Owns: the EAP packet format (RFC 3748: request, response, success, failure, identity,
//! expanded type 254), the Diameter-style AVPs of RFC 5281 §10 as Pulse uses them (code, flags,
//! optional vendor, 24-bit length, padding to 4 bytes), the Juniper "J2" password sub-protocol
//! carried in the EAP-Message AVP (79), and two typed views of a Juniper/1 payload:
//! [`AuthRequest`] (server to client) and [`AuthResponse`] (client to server).
//!
//! Does not own: the IF-T frame around the EAP packet (see `ift`) or which message comes when
//! (see `client` / `server`).
//!
//! Nesting, as openconnect's pulse.c draws it:
//!
//! ```text
//! IF-T auth frame | auth type Juniper/1 | EAP (expanded, vendor 0xa4c, subtype 1)
//!                                           | AVP | AVP | AVP 79 (EAP-Message)
//!                                                           | EAP (expanded, subtype 2: J2 password)
//! ```
//!
//! Note that the AVP vendor is `0x583`, not the IF-T Juniper vendor `0xa4c`.

use crate::wire::{be16, be32};

/// EAP type: identity.
pub(crate) const EAP_TYPE_IDENTITY: u8 = 1;
/// EAP type: generic token card (token-code logins).
pub const EAP_TYPE_GTC: u8 = 6;
/// EAP type: TTLS (client-certificate logins).
pub const EAP_TYPE_TTLS: u8 = 0x15;
/// EAP type: expanded.
pub(crate) const EAP_TYPE_EXPANDED: u8 = 254;
/// Vendor id in Juniper expanded EAP packets (24 bits).
pub const EAP_VENDOR_JUNIPER: u32 = 0x000a4c;
/// Expanded subtype 1: a container of Juniper AVPs.
pub const JUNIPER_SUBTYPE_AVPS: u32 = 1;
/// Expanded subtype 2: password request / response ("J2").
pub(crate) const JUNIPER_SUBTYPE_PASSWORD: u32 = 2;
/// Expanded subtype 3: host checker (TNCC); not supported.
pub const JUNIPER_SUBTYPE_HOST_CHECKER: u32 = 3;
/// Expanded subtype 5: the password request of current Ivanti Connect Secure releases
/// (openconnect: "code 5"), answered with a fixed-length password field.
pub const JUNIPER_SUBTYPE_PASSWORD_CURRENT: u32 = 5;
/// Bytes of the password field in a [`JUNIPER_SUBTYPE_PASSWORD_CURRENT`] answer. A longer
/// password is cut to this length, as the official client does.
pub const CURRENT_PASSWORD_FIELD: usize = 18;
/// Bytes after the code in a [`JUNIPER_SUBTYPE_PASSWORD_CURRENT`] request (meaning unknown;
/// gateways send zeros).
const CURRENT_REQUEST_TAIL: usize = 5;

/// AVP flag: a vendor id follows the length.
pub(crate) const AVP_FLAG_VENDOR: u8 = 0x80;
/// AVP flag: the receiver must understand this AVP.
pub(crate) const AVP_FLAG_MANDATORY: u8 = 0x40;
/// Vendor id used in Juniper AVPs.
pub const AVP_VENDOR_JUNIPER: u32 = 0x583;
/// AVP 79 (no vendor): EAP-Message.
pub const AVP_EAP_MESSAGE: u32 = 79;

/// Juniper AVP codes (vendor [`AVP_VENDOR_JUNIPER`]), named after what pulse.c does with them.
pub mod avp {
    /// Server information word (first request).
    pub const SERVER_INFO_1: u32 = 0xd49;
    /// Server information word (first request).
    pub const SERVER_INFO_2: u32 = 0xd4a;
    /// One realm name in a realm choice list.
    pub const REALM_CHOICE: u32 = 0xd4e;
    /// Server asks the user to type a realm.
    pub const REALM_ENTRY: u32 = 0xd4f;
    /// Client's selected or typed realm.
    pub const REALM_SELECTION: u32 = 0xd50;
    /// One region name in a region choice list.
    pub const REGION_CHOICE: u32 = 0xd51;
    /// Client's selected region.
    pub const REGION_SELECTION: u32 = 0xd52;
    /// The DSID session cookie.
    pub const COOKIE: u32 = 0xd53;
    /// MD5 of the server certificate (informational).
    pub const CERT_MD5: u32 = 0xd55;
    /// Server licensing information.
    pub const LICENCE: u32 = 0xd56;
    /// Seconds until the authentication expires.
    pub const AUTH_EXPIRATION: u32 = 0xd5c;
    /// Client operating system name.
    pub const OS_NAME: u32 = 0xd5e;
    /// Authentication failure code (0x0d locked out, 0x0e client certificate required).
    pub const FAILURE_CODE: u32 = 0xd60;
    /// One entry of the "too many sessions" list, holding the three AVPs below.
    pub const SESSION_ENTRY: u32 = 0xd65;
    /// Inside a session entry: the session's id.
    pub const SESSION_ID: u32 = 0xd66;
    /// Inside a session entry: where the session comes from.
    pub const SESSION_FROM: u32 = 0xd67;
    /// Inside a session entry: when it started (64-bit big-endian Unix seconds).
    pub const SESSION_START: u32 = 0xd68;
    /// The client's choice of the session to end.
    pub const SESSION_END: u32 = 0xd69;
    /// Username.
    pub const USERNAME: u32 = 0xd6d;
    /// Client user agent.
    pub const USER_AGENT: u32 = 0xd70;
    /// Which credentials to prompt for (1 both, 3/15 password, 5 username).
    pub const PROMPT_FLAGS: u32 = 0xd73;
    /// Idle timeout in seconds.
    pub const IDLE_TIMEOUT: u32 = 0xd75;
    /// Sign-in notice to show (and to accept, when it comes alone).
    pub const SIGNIN_PROMPT: u32 = 0xd7b;
    /// The client's acceptance of a sign-in notice (the word 1).
    pub const SIGNIN_ACK: u32 = 0xd7c;
    /// Primary username prompt text.
    pub const USERNAME_PROMPT: u32 = 0xd80;
    /// Primary password prompt text.
    pub const PASSWORD_PROMPT: u32 = 0xd81;
}

/// J2 code: password requested.
pub const J2_PASSWORD_REQUEST: u8 = 0x01;
/// J2 code: client's password response.
pub(crate) const J2_PASSWORD_RESPONSE: u8 = 0x02;
/// J2 code: password expired, change requested.
pub(crate) const J2_PASSWORD_CHANGE: u8 = 0x43;
/// J2 code: password wrong, try again.
pub const J2_PASSWORD_RETRY: u8 = 0x81;
/// J2 code: authentication failed, with a message.
pub(crate) const J2_PASSWORD_FAILURE: u8 = 0xc5;

/// Longest password or message a J2 TLV can carry (one length byte counting its 2-byte header).
pub const J2_MAX_VALUE: usize = 253;

/// Errors of the EAP / AVP layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EapError {
    /// Fewer bytes than the fixed part of the structure needs.
    #[error("{what} truncated: need {need} bytes, have {got}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// The EAP length field disagrees with the bytes that carry it.
    #[error("EAP length field says {header} bytes but the packet has {actual}")]
    LengthMismatch {
        /// Length field.
        header: usize,
        /// Bytes available.
        actual: usize,
    },
    /// Unknown EAP code.
    #[error("unknown EAP code {0}")]
    BadCode(u8),
    /// An AVP length is below its header size or runs past the buffer.
    #[error("AVP {code} at offset {offset} has length {length}, but {available} bytes remain")]
    AvpLength {
        /// AVP code.
        code: u32,
        /// Offset of the AVP in its container.
        offset: usize,
        /// Length field.
        length: usize,
        /// Bytes remaining from the AVP start.
        available: usize,
    },
    /// An AVP value has the wrong size for its code.
    #[error("AVP {code:#x} value is {got} bytes, expected {expected}")]
    AvpValueLength {
        /// AVP code.
        code: u32,
        /// Expected value length.
        expected: usize,
        /// Received value length.
        got: usize,
    },
    /// A text AVP or J2 value is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// What was being read.
        what: &'static str,
    },
    /// The packet is a different EAP code or type than the step expects.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What arrived (debug rendering).
        got: String,
    },
    /// A J2 (password) payload is malformed.
    #[error("malformed J2 password payload: {what}")]
    J2Malformed {
        /// What was wrong.
        what: &'static str,
    },
    /// An [`InnerRequest`] to encode holds what would parse back as another variant.
    #[error("InnerRequest::{variant} cannot hold {what}")]
    InnerVariant {
        /// The variant.
        variant: &'static str,
        /// What it held.
        what: &'static str,
    },
    /// A value is too long for its length field.
    #[error("{what} is {len} bytes, at most {max} fit")]
    TooLong {
        /// What was being encoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// EAP codes (RFC 3748 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EapCode {
    /// 1
    Request,
    /// 2
    Response,
    /// 3
    Success,
    /// 4
    Failure,
}

impl EapCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Success => 3,
            Self::Failure => 4,
        }
    }

    fn from_u8(b: u8) -> Result<Self, EapError> {
        Ok(match b {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Success,
            4 => Self::Failure,
            other => return Err(EapError::BadCode(other)),
        })
    }
}

/// What follows the EAP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EapBody<'a> {
    /// Success and failure carry nothing.
    Empty,
    /// Type 1.
    Identity(&'a [u8]),
    /// Type 254.
    Expanded {
        /// 24-bit vendor id.
        vendor: u32,
        /// Vendor type (Juniper: 1 AVPs, 2 password, 3 host checker, 5 newer password).
        subtype: u32,
        /// The rest.
        data: &'a [u8],
    },
    /// Any other type.
    Other {
        /// EAP type.
        eap_type: u8,
        /// The rest.
        data: &'a [u8],
    },
}

/// One EAP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EapPacket<'a> {
    /// Code.
    pub code: EapCode,
    /// Identifier, echoed by the response.
    pub identifier: u8,
    /// Body.
    pub body: EapBody<'a>,
}

impl<'a> EapPacket<'a> {
    /// Parses a packet that must occupy all of `buf` (its length field is checked against it,
    /// as pulse.c does for both the outer and the nested EAP).
    pub fn parse(buf: &'a [u8]) -> Result<Self, EapError> {
        if buf.len() < 4 {
            return Err(EapError::Truncated {
                what: "EAP header",
                need: 4,
                got: buf.len(),
            });
        }
        let code = EapCode::from_u8(buf[0])?;
        let identifier = buf[1];
        let length = usize::from(be16(buf, 2).unwrap_or(0));
        if length != buf.len() {
            return Err(EapError::LengthMismatch {
                header: length,
                actual: buf.len(),
            });
        }
        let body = match code {
            EapCode::Success | EapCode::Failure => {
                if buf.len() != 4 {
                    return Err(EapError::LengthMismatch {
                        header: 4,
                        actual: buf.len(),
                    });
                }
                EapBody::Empty
            }
            EapCode::Request | EapCode::Response => {
                let eap_type = *buf.get(4).ok_or(EapError::Truncated {
                    what: "EAP type",
                    need: 5,
                    got: buf.len(),
                })?;
                match eap_type {
                    EAP_TYPE_IDENTITY => EapBody::Identity(&buf[5..]),
                    EAP_TYPE_EXPANDED => {
                        let (Some(vendor), Some(subtype)) = (be32(buf, 4), be32(buf, 8)) else {
                            return Err(EapError::Truncated {
                                what: "expanded EAP header",
                                need: 12,
                                got: buf.len(),
                            });
                        };
                        EapBody::Expanded {
                            vendor: vendor & 0x00ff_ffff,
                            subtype,
                            data: &buf[12..],
                        }
                    }
                    eap_type => EapBody::Other {
                        eap_type,
                        data: &buf[5..],
                    },
                }
            }
        };
        Ok(Self {
            code,
            identifier,
            body,
        })
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        let start = out.len();
        out.extend_from_slice(&[self.code.to_u8(), self.identifier, 0, 0]);
        match self.body {
            EapBody::Empty => {}
            EapBody::Identity(id) => {
                out.push(EAP_TYPE_IDENTITY);
                out.extend_from_slice(id);
            }
            EapBody::Expanded {
                vendor,
                subtype,
                data,
            } => {
                out.extend_from_slice(
                    &((u32::from(EAP_TYPE_EXPANDED) << 24) | (vendor & 0x00ff_ffff)).to_be_bytes(),
                );
                out.extend_from_slice(&subtype.to_be_bytes());
                out.extend_from_slice(data);
            }
            EapBody::Other { eap_type, data } => {
                out.push(eap_type);
                out.extend_from_slice(data);
            }
        }
        let len = out.len() - start;
        let Ok(len16) = u16::try_from(len) else {
            out.truncate(start);
            return Err(EapError::TooLong {
                what: "EAP packet",
                len,
                max: usize::from(u16::MAX),
            });
        };
        out[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
        Ok(())
    }

    /// Expects a Juniper expanded packet of `code` and `subtype`; returns its data.
    pub fn juniper_data(&self, code: EapCode, subtype: u32) -> Result<&'a [u8], EapError> {
        match self.body {
            EapBody::Expanded {
                vendor: EAP_VENDOR_JUNIPER,
                subtype: s,
                data,
            } if self.code == code && s == subtype => Ok(data),
            _ => Err(EapError::Unexpected {
                expected: match (code, subtype) {
                    (EapCode::Request, JUNIPER_SUBTYPE_AVPS) => "EAP request Juniper/1",
                    (EapCode::Response, JUNIPER_SUBTYPE_AVPS) => "EAP response Juniper/1",
                    (EapCode::Request, _) => "EAP request Juniper/2",
                    _ => "EAP response Juniper/2",
                },
                got: format!("{:?} {:?}", self.code, self.body),
            }),
        }
    }
}

/// Encodes a Juniper/1 EAP packet around already encoded AVPs.
pub fn encode_juniper_avps(
    code: EapCode,
    identifier: u8,
    avps: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EapError> {
    EapPacket {
        code,
        identifier,
        body: EapBody::Expanded {
            vendor: EAP_VENDOR_JUNIPER,
            subtype: JUNIPER_SUBTYPE_AVPS,
            data: avps,
        },
    }
    .encode(out)
}

/// One AVP, borrowed from its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avp<'a> {
    /// AVP code.
    pub code: u32,
    /// Flags ([`AVP_FLAG_VENDOR`], [`AVP_FLAG_MANDATORY`]).
    pub flags: u8,
    /// Vendor id, present when the vendor flag is set.
    pub vendor: Option<u32>,
    /// Value, without padding.
    pub data: &'a [u8],
}

impl Avp<'_> {
    /// True for a Juniper AVP with this code.
    pub fn is_juniper(&self, code: u32) -> bool {
        self.vendor == Some(AVP_VENDOR_JUNIPER) && self.code == code
    }

    fn text(&self, what: &'static str) -> Result<String, EapError> {
        std::str::from_utf8(self.data)
            .map(|s| s.trim_end_matches('\0').to_owned())
            .map_err(|_| EapError::NotUtf8 { what })
    }

    fn word(&self) -> Result<u32, EapError> {
        <[u8; 4]>::try_from(self.data)
            .map(u32::from_be_bytes)
            .map_err(|_| EapError::AvpValueLength {
                code: self.code,
                expected: 4,
                got: self.data.len(),
            })
    }
}

/// An AVP with an owned value, kept for logging when nobody interprets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAvp {
    /// AVP code.
    pub code: u32,
    /// Flags.
    pub flags: u8,
    /// Vendor id.
    pub vendor: Option<u32>,
    /// Value.
    pub data: Vec<u8>,
}

impl RawAvp {
    /// Appends the AVP with its flags exactly as received (reserved bits included), so that
    /// re-encoding a parsed message reproduces it. The vendor flag follows `vendor`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        let start = out.len();
        append_avp(out, self.code, self.vendor, false, &self.data)?;
        let flags = match self.vendor {
            Some(_) => self.flags | AVP_FLAG_VENDOR,
            None => self.flags & !AVP_FLAG_VENDOR,
        };
        out[start + 4] = flags;
        Ok(())
    }
}

impl From<Avp<'_>> for RawAvp {
    fn from(a: Avp<'_>) -> Self {
        Self {
            code: a.code,
            flags: a.flags,
            vendor: a.vendor,
            data: a.data.to_vec(),
        }
    }
}

/// Iterates over the AVPs in a buffer. Yields an error (once, then stops) on malformed input.
/// Like pulse.c, missing padding after the last AVP is tolerated; anywhere else it is not.
#[derive(Debug, Clone)]
pub struct AvpIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

/// Iterates over the AVPs in `buf`.
pub fn parse_avps(buf: &[u8]) -> AvpIter<'_> {
    AvpIter {
        buf,
        pos: 0,
        failed: false,
    }
}

impl<'a> AvpIter<'a> {
    fn parse_one(&mut self) -> Result<Avp<'a>, EapError> {
        let rest = &self.buf[self.pos..];
        let (Some(code), Some(word)) = (be32(rest, 0), be32(rest, 4)) else {
            return Err(EapError::Truncated {
                what: "AVP header",
                need: 8,
                got: rest.len(),
            });
        };
        let flags = (word >> 24) as u8;
        let length = (word & 0x00ff_ffff) as usize;
        let header = if flags & AVP_FLAG_VENDOR != 0 { 12 } else { 8 };
        if length < header || length > rest.len() {
            return Err(EapError::AvpLength {
                code,
                offset: self.pos,
                length,
                available: rest.len(),
            });
        }
        let vendor = if header == 12 { be32(rest, 8) } else { None };
        let data = &rest[header..length];
        let padded = length.next_multiple_of(4);
        self.pos += padded.min(rest.len());
        Ok(Avp {
            code,
            flags,
            vendor,
            data,
        })
    }
}

impl<'a> Iterator for AvpIter<'a> {
    type Item = Result<Avp<'a>, EapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let r = self.parse_one();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Appends one AVP (header, value, zero padding to 4 bytes) to `out`.
pub fn append_avp(
    out: &mut Vec<u8>,
    code: u32,
    vendor: Option<u32>,
    mandatory: bool,
    data: &[u8],
) -> Result<(), EapError> {
    let header = if vendor.is_some() { 12 } else { 8 };
    let length = header + data.len();
    if length > 0x00ff_ffff {
        return Err(EapError::TooLong {
            what: "AVP",
            len: length,
            max: 0x00ff_ffff,
        });
    }
    let mut flags = 0u8;
    if vendor.is_some() {
        flags |= AVP_FLAG_VENDOR;
    }
    if mandatory {
        flags |= AVP_FLAG_MANDATORY;
    }
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | length as u32).to_be_bytes());
    if let Some(v) = vendor {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(data);
    out.resize(out.len() + (length.next_multiple_of(4) - length), 0);
    Ok(())
}

fn append_juniper(out: &mut Vec<u8>, code: u32, data: &[u8]) -> Result<(), EapError> {
    // pulse.c writes Juniper AVPs with the vendor flag only (0x80), never mandatory.
    append_avp(out, code, Some(AVP_VENDOR_JUNIPER), false, data)
}

/// The J2 password sub-protocol carried in the EAP-Message AVP: a code byte, then TLVs of
/// (type u8, length u8 counting the 2-byte TLV header, value).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordMessage {
    /// Server asks for a password: [`J2_PASSWORD_REQUEST`], [`J2_PASSWORD_RETRY`] or
    /// [`J2_PASSWORD_CHANGE`].
    Request {
        /// The J2 code.
        code: u8,
    },
    /// Client's password (TLV 2).
    Response {
        /// The password.
        password: String,
    },
    /// Client's answer to a change request: old (TLV 2) and new (TLV 3) password.
    ChangeResponse {
        /// Current password.
        old: String,
        /// New password.
        new: String,
    },
    /// Server reports failure with a message (TLV 1).
    Failure {
        /// The message.
        message: String,
    },
}

impl PasswordMessage {
    /// Parses a J2 payload (the data after the expanded header).
    pub fn parse(code: EapCode, data: &[u8]) -> Result<Self, EapError> {
        let (&j2, tlvs) = data.split_first().ok_or(EapError::J2Malformed {
            what: "no J2 code byte",
        })?;
        let mut values: Vec<(u8, &[u8])> = Vec::new();
        let mut rest = tlvs;
        while !rest.is_empty() {
            let [t, l, ..] = rest else {
                return Err(EapError::J2Malformed {
                    what: "truncated TLV header",
                });
            };
            let l = usize::from(*l);
            if l < 2 || l > rest.len() {
                return Err(EapError::J2Malformed {
                    what: "TLV length out of range",
                });
            }
            values.push((*t, &rest[2..l]));
            rest = &rest[l..];
        }
        let find = |t: u8| values.iter().find(|(ty, _)| *ty == t).map(|(_, v)| *v);
        let text = |v: &[u8]| {
            std::str::from_utf8(v)
                .map(str::to_owned)
                .map_err(|_| EapError::NotUtf8 { what: "J2 value" })
        };
        match (code, j2) {
            (EapCode::Request, J2_PASSWORD_FAILURE) => Ok(Self::Failure {
                message: text(find(1).ok_or(EapError::J2Malformed {
                    what: "failure without message TLV",
                })?)?,
            }),
            (EapCode::Request, code) if values.is_empty() => Ok(Self::Request { code }),
            (EapCode::Request, _) => Err(EapError::J2Malformed {
                what: "request carries TLVs",
            }),
            (EapCode::Response, J2_PASSWORD_RESPONSE) => {
                let old = text(find(2).ok_or(EapError::J2Malformed {
                    what: "response without password TLV",
                })?)?;
                match find(3) {
                    Some(new) => Ok(Self::ChangeResponse {
                        old,
                        new: text(new)?,
                    }),
                    None => Ok(Self::Response { password: old }),
                }
            }
            _ => Err(EapError::J2Malformed {
                what: "unknown J2 code for this EAP code",
            }),
        }
    }

    /// The EAP code this message travels in.
    pub fn eap_code(&self) -> EapCode {
        match self {
            Self::Request { .. } | Self::Failure { .. } => EapCode::Request,
            Self::Response { .. } | Self::ChangeResponse { .. } => EapCode::Response,
        }
    }

    /// Appends the J2 payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        fn tlv(out: &mut Vec<u8>, t: u8, v: &[u8]) -> Result<(), EapError> {
            if v.len() > J2_MAX_VALUE {
                return Err(EapError::TooLong {
                    what: "J2 value",
                    len: v.len(),
                    max: J2_MAX_VALUE,
                });
            }
            out.push(t);
            out.push((v.len() + 2) as u8);
            out.extend_from_slice(v);
            Ok(())
        }
        match self {
            Self::Request { code } => out.push(*code),
            Self::Response { password } => {
                out.push(J2_PASSWORD_RESPONSE);
                tlv(out, 2, password.as_bytes())?;
            }
            Self::ChangeResponse { old, new } => {
                out.push(J2_PASSWORD_RESPONSE);
                tlv(out, 2, old.as_bytes())?;
                tlv(out, 3, new.as_bytes())?;
            }
            Self::Failure { message } => {
                out.push(J2_PASSWORD_FAILURE);
                tlv(out, 1, message.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Appends an EAP-Message AVP holding a J2 EAP packet with `identifier`.
    pub fn append_as_avp(&self, identifier: u8, out: &mut Vec<u8>) -> Result<(), EapError> {
        let mut j2 = Vec::new();
        self.encode(&mut j2)?;
        let mut eap = Vec::new();
        EapPacket {
            code: self.eap_code(),
            identifier,
            body: EapBody::Expanded {
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD,
                data: &j2,
            },
        }
        .encode(&mut eap)?;
        append_avp(out, AVP_EAP_MESSAGE, None, true, &eap)
    }
}

/// What an EAP-Message AVP inside a server request holds.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InnerRequest {
    /// J2 password dialogue (expanded subtype 2): the older password request, the password
    /// change request, a failure message.
    Password {
        /// Identifier of the nested EAP packet (the response must echo it).
        identifier: u8,
        /// The J2 message.
        message: PasswordMessage,
    },
    /// The password request of current gateways (expanded subtype 5): a code (1: password
    /// requested) and five bytes of unknown meaning.
    CurrentPassword {
        /// Nested identifier.
        identifier: u8,
        /// The request code.
        code: u8,
    },
    /// Generic token card prompt (EAP type 6): a token code, or the next one.
    TokenCode {
        /// Nested identifier.
        identifier: u8,
        /// Prompt text.
        prompt: String,
    },
    /// Any other plain nested EAP type (identity, EAP-TLS …). Never GTC or expanded: those
    /// are [`InnerRequest::TokenCode`] and [`InnerRequest::Expanded`].
    Other {
        /// Nested identifier.
        identifier: u8,
        /// EAP type.
        eap_type: u8,
    },
    /// A nested expanded EAP type this module does not interpret: Juniper's host checker
    /// (subtype 3), a subtype 5 request of another form, another vendor's. The vendor is
    /// kept, as a subtype means nothing without it.
    Expanded {
        /// Nested identifier.
        identifier: u8,
        /// 24-bit vendor id.
        vendor: u32,
        /// Vendor type.
        subtype: u32,
        /// The first data byte (the request code of Juniper's password subtypes), if any.
        code: Option<u8>,
    },
}

impl InnerRequest {
    /// What the request asks, for messages: EAP type, vendor, subtype and code.
    pub fn describe(&self) -> String {
        match self {
            Self::Password { message, .. } => match message {
                PasswordMessage::Request { code } => {
                    format!("Juniper password request (expanded subtype 2), code {code:#04x}")
                }
                other => format!("Juniper password message (expanded subtype 2): {other:?}"),
            },
            Self::CurrentPassword { code, .. } => {
                format!("Juniper password request (expanded subtype 5), code {code:#04x}")
            }
            Self::TokenCode { .. } => "token code (EAP type 6, GTC)".into(),
            Self::Other { eap_type, .. } => format!("EAP type {eap_type}"),
            Self::Expanded {
                vendor,
                subtype,
                code,
                ..
            } => {
                let what = match (*vendor, *subtype) {
                    (EAP_VENDOR_JUNIPER, JUNIPER_SUBTYPE_HOST_CHECKER) => " (host checker)",
                    _ => "",
                };
                let code = code.map(|c| format!(", code {c:#04x}")).unwrap_or_default();
                format!("expanded EAP vendor {vendor:#x} subtype {subtype}{what}{code}")
            }
        }
    }
}

/// One of the user's sessions, listed when the user is at the realm's session limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    /// The id the client answers with to end this session (AVP 0xd66).
    pub id: String,
    /// Where the session comes from, as the gateway shows it (AVP 0xd67).
    pub from: String,
    /// When it started, Unix seconds (AVP 0xd68).
    pub started: u64,
}

impl ActiveSession {
    fn parse(data: &[u8]) -> Result<Self, EapError> {
        let (mut id, mut from, mut started) = (None, None, None);
        for a in parse_avps(data) {
            let a = a?;
            if a.vendor != Some(AVP_VENDOR_JUNIPER) {
                continue;
            }
            match a.code {
                avp::SESSION_ID => id = Some(a.text("session id")?),
                avp::SESSION_FROM => from = Some(a.text("session origin")?),
                avp::SESSION_START => {
                    started = Some(
                        <[u8; 8]>::try_from(a.data)
                            .map(u64::from_be_bytes)
                            .map_err(|_| EapError::AvpValueLength {
                                code: a.code,
                                expected: 8,
                                got: a.data.len(),
                            })?,
                    )
                }
                _ => {}
            }
        }
        match (id, from, started) {
            (Some(id), Some(from), Some(started)) if !id.is_empty() => {
                Ok(Self { id, from, started })
            }
            _ => Err(EapError::Unexpected {
                expected: "a session entry with an id, an origin and a start time",
                got: format!("{} bytes without them", data.len()),
            }),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        let mut inner = Vec::new();
        append_juniper(&mut inner, avp::SESSION_ID, self.id.as_bytes())?;
        append_juniper(&mut inner, avp::SESSION_FROM, self.from.as_bytes())?;
        append_juniper(&mut inner, avp::SESSION_START, &self.started.to_be_bytes())?;
        append_juniper(out, avp::SESSION_ENTRY, &inner)
    }
}

/// Server-to-client Juniper/1 payload, every AVP pulse.c acts on as a typed field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthRequest {
    /// 0xd49 / 0xd4a server information words (first request only).
    pub server_info: Vec<(u32, u32)>,
    /// 0xd4e: realms to choose from.
    pub realms: Vec<String>,
    /// 0xd4f: the user must type a realm.
    pub realm_entry: bool,
    /// 0xd51: regions to choose from.
    pub regions: Vec<String>,
    /// 0xd53: DSID cookie; present means authentication is complete.
    pub cookie: Option<String>,
    /// 0xd5c: seconds until the authentication expires.
    pub auth_expiration: Option<u32>,
    /// 0xd75: idle timeout in seconds.
    pub idle_timeout: Option<u32>,
    /// 0xd60: failure code.
    pub failure_code: Option<u32>,
    /// 0xd73: which prompts to show.
    pub prompt_flags: Option<u32>,
    /// 0xd80: username prompt.
    pub username_prompt: Option<String>,
    /// 0xd81: password prompt.
    pub password_prompt: Option<String>,
    /// 0xd7b: sign-in notice.
    pub signin_prompt: Option<String>,
    /// 0xd65: the user's sessions, when at the session limit.
    pub sessions: Vec<ActiveSession>,
    /// AVP 79: nested EAP.
    pub inner: Option<InnerRequest>,
    /// Everything else, in order, for logging.
    pub other: Vec<RawAvp>,
}

impl AuthRequest {
    /// Parses the AVPs of a Juniper/1 request.
    pub fn parse(avps: &[u8]) -> Result<Self, EapError> {
        let mut r = Self::default();
        for a in parse_avps(avps) {
            let a = a?;
            if a.vendor.is_none() && a.code == AVP_EAP_MESSAGE {
                r.inner = Some(parse_inner_request(a.data)?);
                continue;
            }
            if a.vendor != Some(AVP_VENDOR_JUNIPER) {
                r.other.push(a.into());
                continue;
            }
            match a.code {
                avp::SERVER_INFO_1 | avp::SERVER_INFO_2 => r.server_info.push((a.code, a.word()?)),
                avp::REALM_CHOICE => r.realms.push(a.text("realm")?),
                avp::REALM_ENTRY => r.realm_entry = true,
                avp::REGION_CHOICE => r.regions.push(a.text("region")?),
                avp::COOKIE => r.cookie = Some(a.text("DSID cookie")?),
                avp::AUTH_EXPIRATION => r.auth_expiration = Some(a.word()?),
                avp::IDLE_TIMEOUT => r.idle_timeout = Some(a.word()?),
                avp::FAILURE_CODE => r.failure_code = Some(a.word()?),
                avp::PROMPT_FLAGS => r.prompt_flags = Some(a.word()?),
                avp::USERNAME_PROMPT => r.username_prompt = Some(a.text("username prompt")?),
                avp::PASSWORD_PROMPT => r.password_prompt = Some(a.text("password prompt")?),
                avp::SIGNIN_PROMPT => r.signin_prompt = Some(a.text("sign-in prompt")?),
                avp::SESSION_ENTRY => r.sessions.push(ActiveSession::parse(a.data)?),
                _ => r.other.push(a.into()),
            }
        }
        Ok(r)
    }

    /// Appends the AVPs (not the EAP header) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        for (code, word) in &self.server_info {
            append_juniper(out, *code, &word.to_be_bytes())?;
        }
        for realm in &self.realms {
            append_juniper(out, avp::REALM_CHOICE, realm.as_bytes())?;
        }
        if self.realm_entry {
            append_juniper(out, avp::REALM_ENTRY, &[])?;
        }
        for region in &self.regions {
            append_juniper(out, avp::REGION_CHOICE, region.as_bytes())?;
        }
        let words = [
            (avp::PROMPT_FLAGS, self.prompt_flags),
            (avp::FAILURE_CODE, self.failure_code),
            (avp::AUTH_EXPIRATION, self.auth_expiration),
            (avp::IDLE_TIMEOUT, self.idle_timeout),
        ];
        for (code, value) in words {
            if let Some(v) = value {
                append_juniper(out, code, &v.to_be_bytes())?;
            }
        }
        let texts = [
            (avp::USERNAME_PROMPT, &self.username_prompt),
            (avp::PASSWORD_PROMPT, &self.password_prompt),
            (avp::SIGNIN_PROMPT, &self.signin_prompt),
            (avp::COOKIE, &self.cookie),
        ];
        for (code, value) in texts {
            if let Some(v) = value {
                append_juniper(out, code, v.as_bytes())?;
            }
        }
        for session in &self.sessions {
            session.encode(out)?;
        }
        for a in &self.other {
            a.encode(out)?;
        }
        match &self.inner {
            Some(InnerRequest::Password {
                identifier,
                message,
            }) => message.append_as_avp(*identifier, out)?,
            Some(InnerRequest::CurrentPassword { identifier, code }) => {
                let mut data = [0u8; 1 + CURRENT_REQUEST_TAIL];
                data[0] = *code;
                append_inner(
                    out,
                    EapCode::Request,
                    *identifier,
                    EapBody::Expanded {
                        vendor: EAP_VENDOR_JUNIPER,
                        subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
                        data: &data,
                    },
                )?
            }
            Some(InnerRequest::TokenCode { identifier, prompt }) => append_inner(
                out,
                EapCode::Request,
                *identifier,
                EapBody::Other {
                    eap_type: EAP_TYPE_GTC,
                    data: prompt.as_bytes(),
                },
            )?,
            Some(InnerRequest::Other {
                identifier,
                eap_type,
            }) => {
                let what = match *eap_type {
                    EAP_TYPE_GTC => Some("EAP type 6 (GTC)"),
                    EAP_TYPE_EXPANDED => Some("EAP type 254 (expanded)"),
                    _ => None,
                };
                if let Some(what) = what {
                    return Err(EapError::InnerVariant {
                        variant: "Other",
                        what,
                    });
                }
                append_inner(
                    out,
                    EapCode::Request,
                    *identifier,
                    EapBody::Other {
                        eap_type: *eap_type,
                        data: &[],
                    },
                )?;
            }
            Some(InnerRequest::Expanded {
                identifier,
                vendor,
                subtype,
                code,
            }) => {
                let what = match (*vendor, *subtype) {
                    (v, _) if v > 0x00ff_ffff => Some("a vendor id over 24 bits"),
                    (EAP_VENDOR_JUNIPER, JUNIPER_SUBTYPE_PASSWORD) => {
                        Some("Juniper's password dialogue")
                    }
                    _ => None,
                };
                if let Some(what) = what {
                    return Err(EapError::InnerVariant {
                        variant: "Expanded",
                        what,
                    });
                }
                // Only the code byte is kept; a subtype 5 request of one byte stays apart from
                // the CurrentPassword form, which has five more.
                let data: &[u8] = match code {
                    Some(c) => std::slice::from_ref(c),
                    None => &[],
                };
                append_inner(
                    out,
                    EapCode::Request,
                    *identifier,
                    EapBody::Expanded {
                        vendor: *vendor,
                        subtype: *subtype,
                        data,
                    },
                )?;
            }
            None => {}
        }
        Ok(())
    }
}

/// Appends an EAP-Message AVP holding a nested packet with `body`.
fn append_inner(
    out: &mut Vec<u8>,
    code: EapCode,
    identifier: u8,
    body: EapBody<'_>,
) -> Result<(), EapError> {
    let mut eap = Vec::new();
    EapPacket {
        code,
        identifier,
        body,
    }
    .encode(&mut eap)?;
    append_avp(out, AVP_EAP_MESSAGE, None, true, &eap)
}

fn parse_inner_request(data: &[u8]) -> Result<InnerRequest, EapError> {
    let eap = EapPacket::parse(data)?;
    if eap.code != EapCode::Request {
        return Err(EapError::Unexpected {
            expected: "nested EAP request",
            got: format!("{:?}", eap.code),
        });
    }
    let identifier = eap.identifier;
    Ok(match eap.body {
        EapBody::Expanded {
            vendor: EAP_VENDOR_JUNIPER,
            subtype: JUNIPER_SUBTYPE_PASSWORD,
            data,
        } => InnerRequest::Password {
            identifier,
            message: PasswordMessage::parse(EapCode::Request, data)?,
        },
        // pulse.c takes subtype 5 only with code 1 and exactly five more bytes; anything
        // else stays an unknown request that names its code.
        EapBody::Expanded {
            vendor: EAP_VENDOR_JUNIPER,
            subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
            data: &[code, ref tail @ ..],
        } if code == J2_PASSWORD_REQUEST && tail.len() == CURRENT_REQUEST_TAIL => {
            InnerRequest::CurrentPassword { identifier, code }
        }
        EapBody::Other {
            eap_type: EAP_TYPE_GTC,
            data,
        } => InnerRequest::TokenCode {
            identifier,
            prompt: String::from_utf8_lossy(data).into_owned(),
        },
        EapBody::Expanded {
            vendor,
            subtype,
            data,
        } => InnerRequest::Expanded {
            identifier,
            vendor,
            subtype,
            code: data.first().copied(),
        },
        EapBody::Other { eap_type, .. } => InnerRequest::Other {
            identifier,
            eap_type,
        },
        EapBody::Identity(_) | EapBody::Empty => InnerRequest::Other {
            identifier,
            eap_type: EAP_TYPE_IDENTITY,
        },
    })
}

/// What the client answers in the nested EAP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// A J2 message ([`PasswordMessage::Response`] or [`PasswordMessage::ChangeResponse`]).
    J2(PasswordMessage),
    /// The password in the fixed field of the current form, padding removed: bytes, as a
    /// client that cuts a longer password at 18 bytes may cut inside a character (that
    /// password is then wrong, not malformed).
    CurrentPassword(Vec<u8>),
    /// An EAP-GTC response: the token code.
    TokenCode(String),
}

/// The client's nested EAP answer, in the EAP-Message AVP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InnerResponse {
    /// Identifier echoed from the nested request.
    pub identifier: u8,
    /// The answer.
    pub answer: Answer,
}

impl InnerResponse {
    fn parse(data: &[u8]) -> Result<Self, EapError> {
        let eap = EapPacket::parse(data)?;
        if eap.code != EapCode::Response {
            return Err(EapError::Unexpected {
                expected: "nested EAP response",
                got: format!("{:?}", eap.code),
            });
        }
        let answer = match eap.body {
            EapBody::Expanded {
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD,
                data,
            } => Answer::J2(PasswordMessage::parse(EapCode::Response, data)?),
            EapBody::Expanded {
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
                data,
            } => {
                let field = match data {
                    [J2_PASSWORD_REQUEST, field @ ..] if field.len() == CURRENT_PASSWORD_FIELD => {
                        field
                    }
                    _ => {
                        return Err(EapError::J2Malformed {
                            what: "current-form password answer is not 01 and an 18-byte field",
                        });
                    }
                };
                let end = field.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                if field[..end].contains(&0) {
                    return Err(EapError::J2Malformed {
                        what: "current-form password holds a NUL byte",
                    });
                }
                Answer::CurrentPassword(field[..end].to_vec())
            }
            EapBody::Other {
                eap_type: EAP_TYPE_GTC,
                data,
            } => Answer::TokenCode(
                std::str::from_utf8(data)
                    .map_err(|_| EapError::NotUtf8 { what: "token code" })?
                    .to_owned(),
            ),
            other => {
                return Err(EapError::Unexpected {
                    expected: "a J2, current-form password or GTC answer",
                    got: format!("{other:?}"),
                });
            }
        };
        Ok(Self {
            identifier: eap.identifier,
            answer,
        })
    }

    fn append_as_avp(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        match &self.answer {
            Answer::J2(message) => message.append_as_avp(self.identifier, out),
            Answer::CurrentPassword(password) => {
                let mut data = [0u8; 1 + CURRENT_PASSWORD_FIELD];
                data[0] = J2_PASSWORD_REQUEST;
                let cut = &password[..password.len().min(CURRENT_PASSWORD_FIELD)];
                if cut.contains(&0) {
                    return Err(EapError::J2Malformed {
                        what: "password holds a NUL byte",
                    });
                }
                data[1..1 + cut.len()].copy_from_slice(cut);
                append_inner(
                    out,
                    EapCode::Response,
                    self.identifier,
                    EapBody::Expanded {
                        vendor: EAP_VENDOR_JUNIPER,
                        subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
                        data: &data,
                    },
                )
            }
            Answer::TokenCode(code) => {
                if code.len() > J2_MAX_VALUE {
                    return Err(EapError::TooLong {
                        what: "token code",
                        len: code.len(),
                        max: J2_MAX_VALUE,
                    });
                }
                append_inner(
                    out,
                    EapCode::Response,
                    self.identifier,
                    EapBody::Other {
                        eap_type: EAP_TYPE_GTC,
                        data: code.as_bytes(),
                    },
                )
            }
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: the
/// current form's field holds 18 bytes, and a cut inside a character would not be UTF-8.
pub fn truncate_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Client-to-server Juniper/1 payload. All fields empty is the bare acknowledgement the
/// client sends after receiving the cookie.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthResponse {
    /// 0xd5e: operating system name.
    pub os_name: Option<String>,
    /// 0xd70: user agent.
    pub user_agent: Option<String>,
    /// 0xd53: DSID cookie offered for resumption.
    pub cookie: Option<String>,
    /// 0xd50: chosen or typed realm.
    pub realm: Option<String>,
    /// 0xd52: chosen region.
    pub region: Option<String>,
    /// 0xd6d: username.
    pub username: Option<String>,
    /// 0xd7c: the sign-in notice was accepted (pulse.c sends 1).
    pub notice_accepted: Option<u32>,
    /// 0xd69: the session to end, at the session limit.
    pub end_session: Option<String>,
    /// AVP 79: nested answer (password, password change, token code).
    pub inner: Option<InnerResponse>,
    /// Everything else, for logging.
    pub other: Vec<RawAvp>,
}

impl AuthResponse {
    /// True when nothing is set (the acknowledgement after the cookie).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Parses the AVPs of a Juniper/1 response.
    pub fn parse(avps: &[u8]) -> Result<Self, EapError> {
        let mut r = Self::default();
        for a in parse_avps(avps) {
            let a = a?;
            if a.vendor.is_none() && a.code == AVP_EAP_MESSAGE {
                r.inner = Some(InnerResponse::parse(a.data)?);
                continue;
            }
            if a.vendor != Some(AVP_VENDOR_JUNIPER) {
                r.other.push(a.into());
                continue;
            }
            match a.code {
                avp::OS_NAME => r.os_name = Some(a.text("OS name")?),
                avp::USER_AGENT => r.user_agent = Some(a.text("user agent")?),
                avp::COOKIE => r.cookie = Some(a.text("DSID cookie")?),
                avp::REALM_SELECTION => r.realm = Some(a.text("realm")?),
                avp::REGION_SELECTION => r.region = Some(a.text("region")?),
                avp::USERNAME => r.username = Some(a.text("username")?),
                avp::SIGNIN_ACK => r.notice_accepted = Some(a.word()?),
                avp::SESSION_END => r.end_session = Some(a.text("session to end")?),
                _ => r.other.push(a.into()),
            }
        }
        Ok(r)
    }

    /// Appends the AVPs to `out`, in the order pulse.c sends them (username before the
    /// EAP-Message carrying the password).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EapError> {
        let texts = [
            (avp::OS_NAME, &self.os_name),
            (avp::USER_AGENT, &self.user_agent),
            (avp::COOKIE, &self.cookie),
            (avp::REALM_SELECTION, &self.realm),
            (avp::REGION_SELECTION, &self.region),
            (avp::USERNAME, &self.username),
            (avp::SESSION_END, &self.end_session),
        ];
        for (code, value) in texts {
            if let Some(v) = value {
                append_juniper(out, code, v.as_bytes())?;
            }
        }
        if let Some(word) = self.notice_accepted {
            append_juniper(out, avp::SIGNIN_ACK, &word.to_be_bytes())?;
        }
        for a in &self.other {
            a.encode(out)?;
        }
        if let Some(inner) = &self.inner {
            inner.append_as_avp(out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_response_bytes() {
        let mut out = Vec::new();
        EapPacket {
            code: EapCode::Response,
            identifier: 1,
            body: EapBody::Identity(b"anonymous"),
        }
        .encode(&mut out)
        .expect("encode");
        assert_eq!(&out[..5], &[2, 1, 0, 14, 1]);
        assert_eq!(&out[5..], b"anonymous");
        let parsed = EapPacket::parse(&out).expect("parse");
        assert_eq!(parsed.body, EapBody::Identity(b"anonymous"));
    }

    /// The password-failure challenge captured in pulse.c's comment, from the EAP header on.
    #[test]
    fn parses_captured_password_failure() {
        let mut eap = vec![
            0x01, 0x05, 0x00, 0x70, 0xfe, 0x00, 0x0a, 0x4c, 0x00, 0x00, 0x00, 0x01, // J1
            0x00, 0x00, 0x00, 0x4f, 0x40, 0x00, 0x00, 0x62, // AVP 79, M, len 0x62
            0x01, 0x02, 0x00, 0x5a, 0xfe, 0x00, 0x0a, 0x4c, 0x00, 0x00, 0x00, 0x02, // J2
            0xc5, 0x01, 0x4d,
        ];
        let msg = b"Could not change password. New password must be at least 4 characters long.";
        eap.extend_from_slice(msg);
        eap.extend_from_slice(&[0, 0]);
        let packet = EapPacket::parse(&eap).expect("eap");
        assert_eq!(packet.identifier, 5);
        let avps = packet
            .juniper_data(EapCode::Request, JUNIPER_SUBTYPE_AVPS)
            .expect("J1");
        let req = AuthRequest::parse(avps).expect("avps");
        assert_eq!(
            req.inner,
            Some(InnerRequest::Password {
                identifier: 2,
                message: PasswordMessage::Failure {
                    message: String::from_utf8(msg.to_vec()).expect("utf8")
                }
            })
        );
    }

    #[test]
    fn password_response_layout_matches_pulse_c() {
        // pulse.c: AVP 79 (M) | EAP response ident | expanded Juniper/2 | 02 02 <len+2> pw
        let mut out = Vec::new();
        PasswordMessage::Response {
            password: "pw".into(),
        }
        .append_as_avp(7, &mut out)
        .expect("encode");
        assert_eq!(
            out,
            [
                0, 0, 0, 79, 0x40, 0, 0, 25, // AVP header: 8 + 17
                2, 7, 0, 17, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 2, // EAP + J2
                2, 2, 4, b'p', b'w', 0, 0, 0 // code, TLV, padding
            ]
        );
    }

    #[test]
    fn juniper_avp_uses_vendor_0x583_and_pads() {
        let mut out = Vec::new();
        append_juniper(&mut out, avp::COOKIE, b"abcde").expect("encode");
        assert_eq!(
            out,
            [
                0, 0, 0x0d, 0x53, 0x80, 0, 0, 17, 0, 0, 5, 0x83, b'a', b'b', b'c', b'd', b'e', 0,
                0, 0
            ]
        );
        let avps: Vec<_> = parse_avps(&out).collect();
        assert_eq!(
            avps,
            [Ok(Avp {
                code: avp::COOKIE,
                flags: AVP_FLAG_VENDOR,
                vendor: Some(AVP_VENDOR_JUNIPER),
                data: b"abcde"
            })]
        );
        // Missing padding after the final AVP is tolerated, as in pulse.c.
        assert_eq!(parse_avps(&out[..17]).count(), 1);
        assert!(parse_avps(&out[..17]).all(|a| a.is_ok()));
    }

    #[test]
    fn auth_request_round_trip() {
        let req = AuthRequest {
            server_info: vec![(avp::SERVER_INFO_1, 3)],
            realms: vec!["Users".into(), "Admins".into()],
            realm_entry: true,
            regions: vec!["eu".into()],
            cookie: Some("0123abcd".into()),
            auth_expiration: Some(3600),
            idle_timeout: Some(600),
            failure_code: Some(0x0d),
            prompt_flags: Some(1),
            username_prompt: Some("User:".into()),
            password_prompt: Some("Pass:".into()),
            signin_prompt: Some("Welcome".into()),
            sessions: vec![ActiveSession {
                id: "sid".into(),
                from: "192.0.2.1".into(),
                started: 1,
            }],
            inner: Some(InnerRequest::Password {
                identifier: 3,
                message: PasswordMessage::Request {
                    code: J2_PASSWORD_RETRY,
                },
            }),
            other: vec![RawAvp {
                code: avp::LICENCE,
                flags: AVP_FLAG_VENDOR,
                vendor: Some(AVP_VENDOR_JUNIPER),
                data: b"lic".to_vec(),
            }],
        };
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        assert_eq!(AuthRequest::parse(&out), Ok(req));
    }

    #[test]
    fn auth_response_round_trip() {
        let resp = AuthResponse {
            os_name: Some("Linux".into()),
            user_agent: Some("tunnel".into()),
            cookie: Some("dsid".into()),
            realm: Some("Users".into()),
            region: None,
            username: Some("alice".into()),
            notice_accepted: Some(1),
            end_session: Some("sid-1".into()),
            inner: Some(InnerResponse {
                identifier: 9,
                answer: Answer::J2(PasswordMessage::ChangeResponse {
                    old: "a".into(),
                    new: "b".into(),
                }),
            }),
            other: vec![],
        };
        let mut out = Vec::new();
        resp.encode(&mut out).expect("encode");
        assert_eq!(AuthResponse::parse(&out), Ok(resp));
        assert!(AuthResponse::parse(&[]).expect("empty").is_empty());
    }

    #[test]
    fn malformed_eap_is_rejected() {
        assert_eq!(
            EapPacket::parse(&[1, 1, 0]),
            Err(EapError::Truncated {
                what: "EAP header",
                need: 4,
                got: 3
            })
        );
        assert_eq!(EapPacket::parse(&[9, 1, 0, 4]), Err(EapError::BadCode(9)));
        assert_eq!(
            EapPacket::parse(&[1, 1, 0, 9, 1]),
            Err(EapError::LengthMismatch {
                header: 9,
                actual: 5
            })
        );
        assert!(matches!(
            EapPacket::parse(&[1, 1, 0, 4]),
            Err(EapError::Truncated { .. })
        ));
        assert!(matches!(
            EapPacket::parse(&[1, 1, 0, 8, 0xfe, 0, 0x0a, 0x4c]),
            Err(EapError::Truncated { .. })
        ));
        assert!(matches!(
            EapPacket::parse(&[3, 1, 0, 5, 0]),
            Err(EapError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn malformed_avps_are_rejected() {
        // length below header size
        let bad = [0, 0, 0, 1, 0, 0, 0, 4];
        assert!(matches!(
            parse_avps(&bad).next(),
            Some(Err(EapError::AvpLength { length: 4, .. }))
        ));
        // length past the end
        let bad = [0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0, 0];
        assert!(matches!(
            parse_avps(&bad).next(),
            Some(Err(EapError::AvpLength { length: 40, .. }))
        ));
        // truncated header
        assert!(matches!(
            parse_avps(&[0, 0, 0]).next(),
            Some(Err(EapError::Truncated { .. }))
        ));
        // vendor flag but no room for the vendor
        let bad = [0, 0, 0, 1, 0x80, 0, 0, 8];
        assert!(matches!(
            parse_avps(&bad).next(),
            Some(Err(EapError::AvpLength { .. }))
        ));
        // wrong size for a word AVP
        let mut out = Vec::new();
        append_juniper(&mut out, avp::IDLE_TIMEOUT, &[1, 2]).expect("encode");
        assert_eq!(
            AuthRequest::parse(&out),
            Err(EapError::AvpValueLength {
                code: avp::IDLE_TIMEOUT,
                expected: 4,
                got: 2
            })
        );
        // non-UTF-8 cookie
        let mut out = Vec::new();
        append_juniper(&mut out, avp::COOKIE, &[0xff]).expect("encode");
        assert_eq!(
            AuthResponse::parse(&out),
            Err(EapError::NotUtf8 {
                what: "DSID cookie"
            })
        );
    }

    /// Fuzz finding (eap_avp): reserved AVP flag bits were dropped on re-encoding, so
    /// parse -> encode -> parse changed the message.
    #[test]
    fn regression_reserved_avp_flags_survive_re_encoding() {
        let input = [0, 0, 0, 0, 0x04, 0, 0, 8];
        let req = AuthRequest::parse(&input).expect("parse");
        assert_eq!(req.other[0].flags, 0x04);
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        assert_eq!(out, input);
        assert_eq!(AuthRequest::parse(&out), Ok(req));
        let resp = AuthResponse::parse(&input).expect("parse");
        let mut out = Vec::new();
        resp.encode(&mut out).expect("encode");
        assert_eq!(out, input);
    }

    /// Fuzz finding (eap_avp): a nested expanded request of another vendor with subtype 6
    /// was kept as a bare type number, without its vendor, and re-encoded as plain EAP type
    /// 6, which is GTC: parse, encode, parse turned it into a token-code request.
    #[test]
    fn regression_a_nested_expanded_request_keeps_its_vendor() {
        // EAP-Message AVP (79, mandatory, 20 bytes) holding a Request, identifier 0xac,
        // 12 bytes, expanded (0xfe), vendor 0x060000, subtype 6.
        let input = [
            0, 0, 0, 0x4f, 0x40, 0, 0, 20, 1, 0xac, 0, 12, 0xfe, 6, 0, 0, 0, 0, 0, 6,
        ];
        let req = AuthRequest::parse(&input).expect("parse");
        assert_eq!(
            req.inner,
            Some(InnerRequest::Expanded {
                identifier: 0xac,
                vendor: 0x06_0000,
                subtype: 6,
                code: None,
            })
        );
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        assert_eq!(out, input);
        assert_eq!(AuthRequest::parse(&out), Ok(req));
    }

    /// The host checker is Juniper's expanded subtype 3, not plain EAP type 3 (Nak), which
    /// the bare type number used to confuse it with.
    #[test]
    fn nested_host_checker_is_junipers_expanded_subtype_3() {
        let nested = |eap: &[u8]| {
            let mut avps = Vec::new();
            append_avp(&mut avps, AVP_EAP_MESSAGE, None, true, eap).expect("avp");
            AuthRequest::parse(&avps).expect("parse").inner
        };
        assert_eq!(
            nested(&[1, 7, 0, 12, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 3]),
            Some(InnerRequest::Expanded {
                identifier: 7,
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_HOST_CHECKER,
                code: None,
            })
        );
        assert_eq!(
            nested(&[1, 7, 0, 5, 3]),
            Some(InnerRequest::Other {
                identifier: 7,
                eap_type: 3
            })
        );
    }

    /// What would parse back as another variant is refused, not encoded.
    #[test]
    fn inner_requests_that_would_change_variant_are_not_encoded() {
        let refused = [
            InnerRequest::Other {
                identifier: 1,
                eap_type: EAP_TYPE_GTC,
            },
            InnerRequest::Other {
                identifier: 1,
                eap_type: EAP_TYPE_EXPANDED,
            },
            InnerRequest::Expanded {
                identifier: 1,
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD,
                code: None,
            },
            InnerRequest::Expanded {
                identifier: 1,
                vendor: 0x0100_0000,
                subtype: 1,
                code: None,
            },
        ];
        for inner in refused {
            let req = AuthRequest {
                inner: Some(inner.clone()),
                ..AuthRequest::default()
            };
            let mut out = Vec::new();
            assert!(
                matches!(req.encode(&mut out), Err(EapError::InnerVariant { .. })),
                "{inner:?} encoded to {out:?}"
            );
        }
        // Their neighbours encode and parse back.
        for inner in [
            InnerRequest::Other {
                identifier: 1,
                eap_type: 5,
            },
            InnerRequest::Expanded {
                identifier: 1,
                vendor: 0x00ff_ffff,
                subtype: JUNIPER_SUBTYPE_PASSWORD,
                code: None,
            },
        ] {
            let req = AuthRequest {
                inner: Some(inner),
                ..AuthRequest::default()
            };
            let mut out = Vec::new();
            req.encode(&mut out).expect("encode");
            assert_eq!(AuthRequest::parse(&out), Ok(req));
        }
    }

    #[test]
    fn malformed_j2_is_rejected() {
        assert!(matches!(
            PasswordMessage::parse(EapCode::Request, &[]),
            Err(EapError::J2Malformed { .. })
        ));
        assert!(matches!(
            PasswordMessage::parse(EapCode::Response, &[2, 2, 1]),
            Err(EapError::J2Malformed {
                what: "TLV length out of range"
            })
        ));
        assert!(matches!(
            PasswordMessage::parse(EapCode::Response, &[2, 2]),
            Err(EapError::J2Malformed {
                what: "truncated TLV header"
            })
        ));
        assert!(matches!(
            PasswordMessage::parse(EapCode::Response, &[2, 3, 2]),
            Err(EapError::J2Malformed {
                what: "response without password TLV"
            })
        ));
        assert!(matches!(
            PasswordMessage::parse(EapCode::Request, &[J2_PASSWORD_FAILURE]),
            Err(EapError::J2Malformed { .. })
        ));
        let long = "x".repeat(J2_MAX_VALUE + 1);
        assert_eq!(
            PasswordMessage::Response { password: long }.encode(&mut Vec::new()),
            Err(EapError::TooLong {
                what: "J2 value",
                len: 254,
                max: 253
            })
        );
    }

    fn nested(avps: &[u8]) -> Vec<u8> {
        // The EAP-Message AVP's value: past the 8-byte AVP header, without padding.
        let len = (u32::from_be_bytes([0, avps[5], avps[6], avps[7]]) - 8) as usize;
        avps[8..8 + len].to_vec()
    }

    /// The current form's request and answer, byte for byte as openconnect's test server
    /// sends and expects them (EAP length 18 and 31, AVP length 39).
    #[test]
    fn current_password_request_and_answer_bytes() {
        let req = AuthRequest {
            inner: Some(InnerRequest::CurrentPassword {
                identifier: 3,
                code: J2_PASSWORD_REQUEST,
            }),
            ..AuthRequest::default()
        };
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        assert_eq!(
            nested(&out),
            [
                1, 3, 0, 18, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 5, 1, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(AuthRequest::parse(&out), Ok(req));

        let resp = AuthResponse {
            username: Some("alice".into()),
            inner: Some(InnerResponse {
                identifier: 3,
                answer: Answer::CurrentPassword(b"secret".to_vec()),
            }),
            ..AuthResponse::default()
        };
        let mut out = Vec::new();
        resp.encode(&mut out).expect("encode");
        let avps: Vec<_> = parse_avps(&out).map(|a| a.expect("avp")).collect();
        assert_eq!(avps.len(), 2);
        assert_eq!((avps[0].code, avps[0].data), (avp::USERNAME, &b"alice"[..]));
        assert_eq!(avps[1].code, AVP_EAP_MESSAGE);
        let mut want = vec![2, 3, 0, 31, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 5, 1];
        want.extend_from_slice(b"secret");
        want.resize(31, 0);
        assert_eq!(avps[1].data, &want[..]);
        assert_eq!(out.len() % 4, 0);
        assert_eq!(AuthResponse::parse(&out), Ok(resp));
    }

    /// A password longer than the field is cut to 18 bytes (the client cuts on a character
    /// boundary before: [`truncate_at_char`]).
    #[test]
    fn current_password_is_cut_to_the_field() {
        let answer = |pw: &str| {
            let mut out = Vec::new();
            InnerResponse {
                identifier: 1,
                answer: Answer::CurrentPassword(
                    truncate_at_char(pw, CURRENT_PASSWORD_FIELD)
                        .as_bytes()
                        .to_vec(),
                ),
            }
            .append_as_avp(&mut out)
            .expect("encode");
            match AuthResponse::parse(&out).expect("parse").inner {
                Some(InnerResponse {
                    answer: Answer::CurrentPassword(p),
                    ..
                }) => String::from_utf8(p).expect("UTF-8"),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(answer("0123456789abcdefghij"), "0123456789abcdefgh");
        assert_eq!(answer("exactly-18-bytes!!"), "exactly-18-bytes!!");
        // 17 ASCII bytes then a 2-byte character: the character does not fit.
        assert_eq!(answer("0123456789abcdefgé"), "0123456789abcdefg");
        assert_eq!(answer(""), "");
        // Another client's cut inside a character is kept as bytes, for the gateway to find
        // wrong.
        let mut field = vec![2, 1, 0, 31, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 5, 1];
        field.extend_from_slice(b"0123456789abcdefg\xc3");
        let mut avps = Vec::new();
        append_avp(&mut avps, AVP_EAP_MESSAGE, None, true, &field).expect("avp");
        assert_eq!(
            AuthResponse::parse(&avps).expect("parse").inner,
            Some(InnerResponse {
                identifier: 1,
                answer: Answer::CurrentPassword(b"0123456789abcdefg\xc3".to_vec()),
            })
        );
    }

    /// Subtype 5 with another code or length is not a password request: it stays unknown
    /// and names its code.
    #[test]
    fn other_subtype_5_requests_stay_unknown_with_their_code() {
        let mut avps = Vec::new();
        let eap = [
            1, 4, 0, 18, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 5, 2, 0, 0, 0, 0, 0,
        ];
        append_avp(&mut avps, AVP_EAP_MESSAGE, None, true, &eap).expect("avp");
        let inner = AuthRequest::parse(&avps)
            .expect("parse")
            .inner
            .expect("inner");
        assert_eq!(
            inner,
            InnerRequest::Expanded {
                identifier: 4,
                vendor: EAP_VENDOR_JUNIPER,
                subtype: JUNIPER_SUBTYPE_PASSWORD_CURRENT,
                code: Some(2),
            }
        );
        assert_eq!(
            inner.describe(),
            "expanded EAP vendor 0xa4c subtype 5, code 0x02"
        );
        let short = [1, 4, 0, 13, 0xfe, 0, 0x0a, 0x4c, 0, 0, 0, 5, 1];
        let mut avps = Vec::new();
        append_avp(&mut avps, AVP_EAP_MESSAGE, None, true, &short).expect("avp");
        assert!(matches!(
            AuthRequest::parse(&avps).expect("parse").inner,
            Some(InnerRequest::Expanded { code: Some(1), .. })
        ));
    }

    #[test]
    fn token_code_answer_and_session_list_round_trip() {
        let resp = AuthResponse {
            username: Some("alice".into()),
            inner: Some(InnerResponse {
                identifier: 7,
                answer: Answer::TokenCode("123456".into()),
            }),
            ..AuthResponse::default()
        };
        let mut out = Vec::new();
        resp.encode(&mut out).expect("encode");
        assert_eq!(AuthResponse::parse(&out), Ok(resp));

        let req = AuthRequest {
            sessions: vec![
                ActiveSession {
                    id: "sid-1".into(),
                    from: "192.0.2.7".into(),
                    started: 1_764_000_000,
                },
                ActiveSession {
                    id: "sid-2".into(),
                    from: "2001:db8::7".into(),
                    started: 1_764_000_100,
                },
            ],
            ..AuthRequest::default()
        };
        let mut out = Vec::new();
        req.encode(&mut out).expect("encode");
        assert_eq!(AuthRequest::parse(&out), Ok(req));
    }

    /// A session entry without its id, origin or start is refused, not shown half-empty.
    #[test]
    fn an_incomplete_session_entry_is_refused() {
        let mut inner = Vec::new();
        append_juniper(&mut inner, avp::SESSION_ID, b"sid").expect("avp");
        append_juniper(&mut inner, avp::SESSION_START, &[0; 8]).expect("avp");
        let mut out = Vec::new();
        append_juniper(&mut out, avp::SESSION_ENTRY, &inner).expect("avp");
        assert!(AuthRequest::parse(&out).is_err());
    }

    #[test]
    fn unknown_requests_are_described_by_type_vendor_subtype_and_code() {
        let cases = [
            (
                InnerRequest::Other {
                    identifier: 1,
                    eap_type: 13,
                },
                "EAP type 13",
            ),
            (
                InnerRequest::Expanded {
                    identifier: 1,
                    vendor: EAP_VENDOR_JUNIPER,
                    subtype: JUNIPER_SUBTYPE_HOST_CHECKER,
                    code: None,
                },
                "expanded EAP vendor 0xa4c subtype 3 (host checker)",
            ),
            (
                InnerRequest::Password {
                    identifier: 1,
                    message: PasswordMessage::Request { code: 0x02 },
                },
                "Juniper password request (expanded subtype 2), code 0x02",
            ),
        ];
        for (req, want) in cases {
            assert_eq!(req.describe(), want);
        }
    }
}
