//! The few pieces of the PostgreSQL wire protocol the endpoint speaks itself: the
//! untyped first packet (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage), the
//! cleartext password exchange and FATAL ErrorResponses. Everything after startup is
//! relayed in whole read buffers; [`Boundaries`] follows where PostgreSQL's messages end in
//! them, so the endpoint's own FATAL is written between two messages, never inside one.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// SSLRequest code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Largest startup packet accepted (PostgreSQL's own limit is 10000).
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest password message accepted.
pub const MAX_PASSWORD_LEN: usize = 16_384;

/// A protocol violation by the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Length field out of bounds.
    #[error("invalid packet length {0}")]
    Length(u32),
    /// Unsupported protocol version or request code.
    #[error("unsupported frontend protocol {major}.{minor}")]
    Protocol {
        /// Major version.
        major: u32,
        /// Minor version.
        minor: u32,
    },
    /// The packet body is not well-formed.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The first packet of a connection (or the first one after TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPacket {
    /// Client asks for TLS.
    SslRequest,
    /// Client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel a query: the full 16-byte packet to forward.
    Cancel([u8; 16]),
    /// A protocol 3.0 StartupMessage.
    Startup(Startup),
}

/// A parsed StartupMessage: parameters in the order sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Startup {
    /// `(name, value)` pairs.
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of a parameter (names compared exactly).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user; `None` when absent.
    pub fn user(&self) -> Option<&str> {
        self.get("user")
    }

    /// The database, defaulting to `postgres`.
    pub fn database(&self) -> &str {
        self.get("database").unwrap_or("postgres")
    }

    /// The first parameter DSQL would refuse, if any (also `client_encoding` other than
    /// UTF-8: see [`is_utf8_encoding`]).
    pub fn first_disallowed(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, v)| {
                !parameter_allowed(n)
                    || n.eq_ignore_ascii_case("client_encoding") && !is_utf8_encoding(v)
            })
            .map(|(n, _)| n.as_str())
    }

    /// Encodes a StartupMessage carrying these parameters.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        for (n, v) in &self.params {
            body.extend_from_slice(n.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = Vec::with_capacity(body.len() + 4);
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// Whether a `client_encoding` value names UTF-8. `local` takes no other: its SQL checks
/// read the text as UTF-8, and in an encoding such as SJIS a backslash or quote byte can
/// hide inside a character, so PostgreSQL would read a different statement than the one
/// checked.
pub fn is_utf8_encoding(value: &str) -> bool {
    let name: String = value
        .trim()
        .trim_matches('\'')
        .chars()
        .filter(|c| !matches!(c, '-' | '_'))
        .collect::<String>()
        .to_ascii_lowercase();
    matches!(name.as_str(), "utf8" | "unicode")
}

/// Whether DSQL accepts a startup parameter (names are case-insensitive).
pub fn parameter_allowed(name: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "user",
        "database",
        "application_name",
        "client_encoding",
        "datestyle",
        "extra_float_digits",
        "intervalstyle",
        "timezone",
        "search_path",
    ];
    let lower = name.to_ascii_lowercase();
    ALLOWED.contains(&lower.as_str()) || lower.starts_with("enable_")
}

fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), WireError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(WireError::Malformed("startup packet: missing terminator"))?;
    let s = std::str::from_utf8(&buf[..end])
        .map_err(|_| WireError::Malformed("startup packet: invalid UTF-8"))?;
    Ok((s, &buf[end + 1..]))
}

/// Parses a first packet given its body (everything after the length field).
pub fn parse_first_packet(body: &[u8]) -> Result<FirstPacket, WireError> {
    let code_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(WireError::Malformed("startup packet: too short"))?;
    let code = u32::from_be_bytes(code_bytes);
    match code {
        SSL_REQUEST if body.len() == 4 => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST if body.len() == 4 => Ok(FirstPacket::GssEncRequest),
        CANCEL_REQUEST if body.len() == 12 => {
            let mut pkt = [0u8; 16];
            pkt[..4].copy_from_slice(&16u32.to_be_bytes());
            pkt[4..].copy_from_slice(body);
            Ok(FirstPacket::Cancel(pkt))
        }
        SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => {
            Err(WireError::Malformed("request packet length"))
        }
        PROTOCOL_3_0 => {
            let mut rest = &body[4..];
            let mut params: Vec<(String, String)> = Vec::new();
            loop {
                match rest {
                    [0] => break,
                    [] => return Err(WireError::Malformed("startup packet: missing terminator")),
                    _ => {}
                }
                let (name, after) = cstr(rest)?;
                let (value, after) = cstr(after)?;
                if name.is_empty() {
                    return Err(WireError::Malformed("startup packet: empty parameter name"));
                }
                if params.iter().any(|(n, _)| n == name) {
                    return Err(WireError::Malformed("startup packet: duplicate parameter"));
                }
                params.push((name.to_owned(), value.to_owned()));
                rest = after;
            }
            Ok(FirstPacket::Startup(Startup { params }))
        }
        other => Err(WireError::Protocol {
            major: other >> 16,
            minor: other & 0xffff,
        }),
    }
}

/// Reads an untyped packet (length + body) and parses it as a first packet.
/// Protocol errors come back as `Ok(Err(_))`, I/O errors as `Err(_)`.
pub async fn read_first_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Result<FirstPacket, WireError>> {
    let len = r.read_u32().await?;
    if !(8..=MAX_STARTUP_LEN as u32).contains(&len) {
        return Ok(Err(WireError::Length(len)));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(parse_first_packet(&body))
}

/// Reads a typed message (`tag`, body), bounding the body at `max` bytes.
/// Protocol errors come back as `Ok(Err(_))`.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Result<(u8, Vec<u8>), WireError>> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await?;
    if len < 4 || len as usize - 4 > max {
        return Ok(Err(WireError::Length(len)));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(Ok((tag, body)))
}

/// Where the messages end in a stream of typed messages (1-byte tag, 4-byte length that
/// counts itself, body), fed one buffer at a time. It reads only the 5-byte headers, so
/// following a stream costs one step per message, whatever the messages hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boundaries {
    header: [u8; 5],
    header_len: usize,
    body_left: u64,
}

impl Boundaries {
    /// Whether the bytes fed so far end exactly at the end of a message.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0
    }

    /// Follows the stream through `buf`. With `stop`, halts at the first message boundary
    /// (the offset in `buf` is returned, `Some(0)` when already at one) and leaves the state
    /// there; otherwise it consumes all of `buf` and returns `None`. A length below 4 (a
    /// protocol violation) counts as an empty body.
    pub fn advance(&mut self, buf: &[u8], stop: bool) -> Option<usize> {
        let mut at = 0;
        loop {
            if stop && self.at_boundary() {
                return Some(at);
            }
            if at == buf.len() {
                return None;
            }
            let rest = &buf[at..];
            if self.body_left > 0 {
                let take =
                    usize::try_from(self.body_left).map_or(rest.len(), |b| b.min(rest.len()));
                at += take;
                self.body_left -= take as u64;
                continue;
            }
            let take = (5 - self.header_len).min(rest.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&rest[..take]);
            self.header_len += take;
            at += take;
            if self.header_len == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.header_len = 0;
                self.body_left = u64::from(len.saturating_sub(4));
            }
        }
    }
}

/// Extracts the password from a PasswordMessage body (`p`).
pub fn parse_password(tag: u8, body: &[u8]) -> Result<&str, WireError> {
    if tag != b'p' {
        return Err(WireError::Malformed("expected a password message"));
    }
    let (pw, rest) = cstr(body).map_err(|_| WireError::Malformed("password message"))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed("password message: trailing bytes"));
    }
    Ok(pw)
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext_request() -> [u8; 9] {
    [b'R', 0, 0, 0, 8, 0, 0, 0, 3]
}

/// A message of type `tag` with `body`, framed (type, length, body).
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A FATAL ErrorResponse with SQLSTATE `code` and `message` (NUL bytes removed).
pub fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Escapes a user name for inclusion in a message: control characters are escaped,
/// the length is bounded.
pub fn escape_for_message(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == 63 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt as _, SeedableRng as _};

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        Startup {
            params: params
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        }
        .encode()
    }

    #[test]
    fn parses_startup_and_requests() {
        let pkt = startup(&[("user", "admin"), ("application_name", "x")]);
        let FirstPacket::Startup(s) = parse_first_packet(&pkt[4..]).unwrap() else {
            panic!("not a startup");
        };
        assert_eq!(s.user(), Some("admin"));
        assert_eq!(s.database(), "postgres");
        assert_eq!(s.first_disallowed(), None);
        assert_eq!(
            parse_first_packet(&SSL_REQUEST.to_be_bytes()),
            Ok(FirstPacket::SslRequest)
        );
        assert_eq!(
            parse_first_packet(&GSSENC_REQUEST.to_be_bytes()),
            Ok(FirstPacket::GssEncRequest)
        );
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let FirstPacket::Cancel(c) = parse_first_packet(&cancel).unwrap() else {
            panic!("not a cancel");
        };
        assert_eq!(&c[..4], &[0, 0, 0, 16]);
        assert_eq!(&c[4..], &cancel[..]);
    }

    #[test]
    fn allow_list() {
        for ok in [
            "user",
            "DateStyle",
            "TimeZone",
            "enable_seqscan",
            "search_path",
        ] {
            assert!(parameter_allowed(ok), "{ok}");
        }
        for bad in ["options", "replication", "work_mem", "enable"] {
            assert!(!parameter_allowed(bad), "{bad}");
        }
        for (value, utf8) in [
            ("UTF8", true),
            ("utf-8", true),
            ("'UNICODE'", true),
            ("SJIS", false),
            ("LATIN1", false),
        ] {
            assert_eq!(is_utf8_encoding(value), utf8, "{value}");
        }
        let pkt = startup(&[("user", "u"), ("options", "-c x=1")]);
        let FirstPacket::Startup(s) = parse_first_packet(&pkt[4..]).unwrap() else {
            panic!("not a startup");
        };
        assert_eq!(s.first_disallowed(), Some("options"));
    }

    #[test]
    fn error_response_layout() {
        let e = fatal("28000", "no");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes(e[1..5].try_into().unwrap()) as usize,
            e.len() - 1
        );
        assert_eq!(&e[5..], b"SFATAL\0VFATAL\0C28000\0Mno\0\0");
    }

    #[test]
    fn password_message() {
        assert_eq!(parse_password(b'p', b"tok\0"), Ok("tok"));
        assert!(parse_password(b'p', b"tok").is_err());
        assert!(parse_password(b'p', b"tok\0x").is_err());
        assert!(parse_password(b'Q', b"tok\0").is_err());
    }

    #[test]
    fn random_and_truncated_packets_never_panic() {
        let good = startup(&[("user", "admin"), ("database", "postgres")]);
        for cut in 0..good.len() {
            assert!(parse_first_packet(&good[4..cut.max(4)]).is_err());
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..50_000 {
            let mut pkt = if rng.random_bool(0.5) {
                good[4..].to_vec()
            } else {
                let len = rng.random_range(0..64);
                (0..len).map(|_| rng.random()).collect()
            };
            if !pkt.is_empty() {
                for _ in 0..rng.random_range(0..4) {
                    let i = rng.random_range(0..pkt.len());
                    pkt[i] = rng.random();
                }
                let cut = rng.random_range(0..=pkt.len());
                pkt.truncate(cut);
            }
            let _ = parse_first_packet(&pkt);
            let _ = parse_password(b'p', &pkt);
        }
    }

    #[tokio::test]
    async fn reader_bounds_lengths() {
        let mut huge: &[u8] = &[0, 1, 0, 0, 0, 0];
        assert_eq!(
            read_first_packet(&mut huge).await.unwrap(),
            Err(WireError::Length(65_536))
        );
        let mut tiny: &[u8] = &[0, 0, 0, 2];
        assert_eq!(
            read_first_packet(&mut tiny).await.unwrap(),
            Err(WireError::Length(2))
        );
        let mut truncated: &[u8] = &[0, 0, 0, 20, 0, 3];
        assert!(read_first_packet(&mut truncated).await.is_err());
        let mut msg: &[u8] = &[b'p', 0, 0, 0xff, 0xff];
        assert!(read_message(&mut msg, 100).await.unwrap().is_err());
    }

    #[test]
    fn boundaries_are_found_at_every_split() {
        let mut stream = Vec::new();
        let mut ends = vec![0];
        for (tag, body) in [
            (b'T', vec![7u8; 20]),
            (b'D', vec![]),
            (b'D', vec![1; 300]),
            (b'C', vec![2; 9]),
        ] {
            stream.push(tag);
            stream.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            stream.extend_from_slice(&body);
            ends.push(stream.len());
        }
        // Fed in two pieces split anywhere, the state is at a boundary exactly at the ends.
        for cut in 0..=stream.len() {
            let mut b = Boundaries::default();
            assert_eq!(b.advance(&stream[..cut], false), None);
            assert_eq!(b.at_boundary(), ends.contains(&cut), "cut {cut}");
            b.advance(&stream[cut..], false);
            assert!(b.at_boundary());
        }
        // With `stop`, it halts at the first end at or after where it stands.
        for cut in 0..=stream.len() {
            let mut b = Boundaries::default();
            b.advance(&stream[..cut], false);
            let next = *ends.iter().find(|&&e| e >= cut).unwrap();
            assert_eq!(
                b.advance(&stream[cut..], true),
                Some(next - cut),
                "cut {cut}"
            );
            assert!(b.at_boundary());
        }
        // Inside a message with no end in sight: nothing to stop at yet.
        let mut b = Boundaries::default();
        assert_eq!(b.advance(&stream[..30], true), Some(0));
        b.advance(&stream[..26], false);
        assert_eq!(b.advance(&stream[26..28], true), None);
        assert!(!b.at_boundary());
    }
}
