//! The IAM token sent with the startup, a round trip before the server asks for it.
//!
//! DSQL (and `local`) answer every StartupMessage with AuthenticationCleartextPassword, and the
//! answer to that, the connection's token, is known before the connection opens. tokio-postgres
//! sends a password only once asked, so [`EarlyPassword`] wraps the TLS stream for the startup:
//! it sends a PasswordMessage with the token right behind the StartupMessage, in the same
//! flight, and when the server's request arrives, tokio-postgres's own PasswordMessage (the
//! same bytes) is swallowed. The server was authenticated by TLS before anything is sent, and
//! it receives what it would have received a round trip later.
//!
//! A server that asks for anything else (SASL, MD5, or nothing at all) fails the connection
//! with an error that says so, before tokio-postgres answers: the two sides never get out of
//! step. Once the password is through, the wrapper drops its state and passes every call
//! straight through (one branch per call).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// The protocol version a StartupMessage carries (3.0).
const PROTOCOL_3_0: u32 = 196_608;
/// The authentication request code for a cleartext password.
const AUTH_CLEARTEXT: u32 = 3;

/// A PasswordMessage carrying `password`, byte for byte as tokio-postgres encodes it.
fn password_message(password: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(password.len() + 6);
    message.push(b'p');
    message.extend_from_slice(&(password.len() as u32 + 5).to_be_bytes());
    message.extend_from_slice(password);
    message.push(0);
    message
}

/// What a server asked for instead of the cleartext password, in words.
fn asked_for(code: u32) -> &'static str {
    match code {
        0 => "no password at all",
        5 => "an MD5 password",
        10 => "SASL (SCRAM) authentication",
        2 | 7..=9 => "Kerberos, GSSAPI or SSPI authentication",
        _ => "an unknown authentication method",
    }
}

/// A `TlsConnect` whose stream sends `password` with the startup (none: a plain pass-through).
pub(super) struct EarlyPasswordTls<T> {
    inner: T,
    password: Option<Vec<u8>>,
}

impl<T> EarlyPasswordTls<T> {
    /// Wraps `inner`; with `password`, the stream sends it as a PasswordMessage right after
    /// the StartupMessage.
    pub(super) fn new(inner: T, password: Option<&str>) -> EarlyPasswordTls<T> {
        EarlyPasswordTls {
            inner,
            password: password.map(|p| password_message(p.as_bytes())),
        }
    }
}

impl<S, T> TlsConnect<S> for EarlyPasswordTls<T>
where
    T: TlsConnect<S>,
    T::Future: Send + 'static,
{
    type Stream = EarlyPassword<T::Stream>;
    type Error = T::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, T::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.inner.connect(stream);
        let password = self.password;
        Box::pin(async move {
            let inner = handshake.await?;
            Ok(EarlyPassword {
                inner,
                startup: password.map(|password| Box::new(Startup::new(password))),
            })
        })
    }
}

/// A stream that sends a PasswordMessage with the StartupMessage; see the module docs.
#[derive(Debug)]
pub(super) struct EarlyPassword<S> {
    inner: S,
    /// `None` once the startup is over: then every call goes straight to `inner`.
    startup: Option<Box<Startup>>,
}

/// The state of the startup. Its `Debug` shows no byte of the token.
struct Startup {
    /// The PasswordMessage: sent behind the StartupMessage, expected back from tokio-postgres.
    password: Vec<u8>,
    write: Write,
    read: Read,
    /// Bytes taken from the caller and not yet written to the stream (the StartupMessage
    /// and the PasswordMessage, written together on the next flush).
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
}

impl std::fmt::Debug for Startup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("password", &"<redacted>")
            .field("write", &self.write)
            .field("read", &self.read)
            .field("out", &format_args!("<{} bytes>", self.out.len()))
            .field("written", &self.written)
            .finish()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Write {
    /// Gathering the StartupMessage in `out`.
    Startup,
    /// Both messages are in `out`; tokio-postgres's own PasswordMessage is next, of which
    /// this much has matched.
    Swallow(usize),
    /// Nothing more to change.
    Done,
}

#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// Following the server's messages up to its authentication request: `have` bytes of a
    /// message's start (type, length, request code), then `skip` bytes of its body.
    Scan {
        head: [u8; 9],
        have: usize,
        skip: usize,
    },
    /// Nothing more to check.
    Done,
}

impl Startup {
    fn new(password: Vec<u8>) -> Startup {
        Startup {
            password,
            write: Write::Startup,
            read: Read::Scan {
                head: [0; 9],
                have: 0,
                skip: 0,
            },
            out: Vec::with_capacity(256),
            written: 0,
        }
    }

    fn over(&self) -> bool {
        self.write == Write::Done && self.read == Read::Done && self.written == self.out.len()
    }

    /// Takes StartupMessage bytes from `buf` into `out` (never past the message's end); once
    /// it is whole, adds the PasswordMessage. Returns how many bytes were taken.
    fn gather(&mut self, buf: &[u8]) -> usize {
        let mut taken = 0;
        while taken < buf.len() {
            let need = if self.out.len() < 8 {
                8 - self.out.len()
            } else {
                let len = u32::from_be_bytes(self.out[0..4].try_into().unwrap()) as usize;
                len.saturating_sub(self.out.len())
            };
            let n = need.min(buf.len() - taken);
            self.out.extend_from_slice(&buf[taken..taken + n]);
            taken += n;
            if self.out.len() < 8 {
                continue;
            }
            let len = u32::from_be_bytes(self.out[0..4].try_into().unwrap()) as usize;
            let version = u32::from_be_bytes(self.out[4..8].try_into().unwrap());
            if version != PROTOCOL_3_0 || len < 8 {
                // Not a StartupMessage: nothing to add, nothing to check.
                self.write = Write::Done;
                self.read = Read::Done;
                break;
            }
            if self.out.len() >= len {
                self.out.extend_from_slice(&self.password);
                self.write = Write::Swallow(0);
                break;
            }
        }
        taken
    }

    /// Matches tokio-postgres's PasswordMessage against the one already sent.
    fn swallow(&mut self, matched: usize, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.password.len() - matched);
        if buf[..n] != self.password[matched..matched + n] {
            return Err(io::Error::other(
                "the password message differs from the one sent with the startup",
            ));
        }
        self.write = if matched + n == self.password.len() {
            Write::Done
        } else {
            Write::Swallow(matched + n)
        };
        Ok(n)
    }

    /// Follows the server's bytes up to its authentication request, which must be for the
    /// cleartext password already sent.
    fn scan(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let Read::Scan { head, have, skip } = &mut self.read else {
                return Ok(());
            };
            if *skip > 0 {
                let n = (*skip).min(bytes.len());
                *skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            // The type; then the length, and for an Authentication message its request code.
            let full = if head[0] == b'R' { 9 } else { 5 };
            let want = if *have == 0 { 1 } else { full };
            let n = (want - *have).min(bytes.len());
            head[*have..*have + n].copy_from_slice(&bytes[..n]);
            *have += n;
            bytes = &bytes[n..];
            if *have == 1 || *have < full {
                continue;
            }
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            if head[0] != b'R' {
                // An error, a notice or a protocol version answer before the request.
                *skip = len.saturating_sub(4);
                *have = 0;
                continue;
            }
            let code = u32::from_be_bytes(head[5..9].try_into().unwrap());
            if code != AUTH_CLEARTEXT {
                return Err(io::Error::other(format!(
                    "the server asked for {} instead of the cleartext password sent with \
                     the startup, so it is not DSQL: connect to it with a password, not IAM \
                     (--no-iam)",
                    asked_for(code)
                )));
            }
            self.read = Read::Done;
        }
        Ok(())
    }

    /// Writes what `out` holds.
    fn drain<S: AsyncWrite + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> EarlyPassword<S> {
    /// Drops the startup state once nothing is left to send or check.
    fn settle(&mut self) {
        if self.startup.as_ref().is_some_and(|s| s.over()) {
            self.startup = None;
        }
    }
}

impl<S: TlsStream + Unpin> TlsStream for EarlyPassword<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EarlyPassword<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(startup) = this.startup.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        startup.scan(&buf.filled()[before..])?;
        this.settle();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EarlyPassword<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(startup) = this.startup.as_deref_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let taken = match startup.write {
            // Written on the next flush, which tokio-postgres makes right after.
            Write::Startup => Ok(startup.gather(buf)),
            Write::Swallow(matched) => startup.swallow(matched, buf),
            Write::Done => {
                ready!(startup.drain(&mut this.inner, cx))?;
                let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
                this.settle();
                return Poll::Ready(written);
            }
        };
        this.settle();
        Poll::Ready(taken)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(startup) = this.startup.as_deref_mut() {
            ready!(startup.drain(&mut this.inner, cx))?;
            this.settle();
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(startup) = this.startup.as_deref_mut() {
            ready!(startup.drain(&mut this.inner, cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    const TOKEN: &str = "host/?Action=DbConnectAdmin&X-Amz-Signature=abc";

    fn startup_message() -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0admin\0database\0postgres\0\0");
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        message
    }

    fn auth_request(code: u32, extra: &[u8]) -> Vec<u8> {
        let mut message = vec![b'R'];
        message.extend_from_slice(&(8 + extra.len() as u32).to_be_bytes());
        message.extend_from_slice(&code.to_be_bytes());
        message.extend_from_slice(extra);
        message
    }

    /// A client end wrapped to send `TOKEN` early, and the server's end.
    fn pair() -> (EarlyPassword<DuplexStream>, DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let client = EarlyPassword {
            inner: client,
            startup: Some(Box::new(Startup::new(password_message(TOKEN.as_bytes())))),
        };
        (client, server)
    }

    /// Writes `bytes` a few at a time, as a caller with a small buffer would, then flushes.
    async fn write_in_pieces(client: &mut EarlyPassword<DuplexStream>, bytes: &[u8]) {
        for piece in bytes.chunks(3) {
            client.write_all(piece).await.unwrap();
        }
        client.flush().await.unwrap();
    }

    async fn read_exactly(stream: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn the_password_follows_the_startup_and_the_drivers_copy_is_swallowed() {
        let (mut client, mut server) = pair();
        let startup = startup_message();
        let password = password_message(TOKEN.as_bytes());
        write_in_pieces(&mut client, &startup).await;

        // The server gets both messages without answering anything.
        let mut expected = startup.clone();
        expected.extend_from_slice(&password);
        assert_eq!(read_exactly(&mut server, expected.len()).await, expected);

        // Its request reaches the driver unchanged, split or not.
        let request = auth_request(AUTH_CLEARTEXT, b"");
        for piece in request.chunks(2) {
            server.write_all(piece).await.unwrap();
        }
        let mut seen = vec![0; request.len()];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(seen, request);

        // The driver's own answer goes nowhere; what follows goes through, and the state is
        // gone: a plain pass-through from here.
        write_in_pieces(&mut client, &password).await;
        assert!(client.startup.is_none());
        client.write_all(b"Q\0\0\0\x05\0").await.unwrap();
        client.flush().await.unwrap();
        assert_eq!(read_exactly(&mut server, 6).await, b"Q\0\0\0\x05\0");
    }

    #[tokio::test]
    async fn an_error_before_the_request_reaches_the_driver() {
        let (mut client, mut server) = pair();
        write_in_pieces(&mut client, &startup_message()).await;
        let error = b"E\0\0\0\x0cSFATAL\0\0";
        server.write_all(error).await.unwrap();
        let mut seen = vec![0; error.len()];
        client.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen, error);
    }

    #[tokio::test]
    async fn a_request_for_anything_but_the_cleartext_password_fails_clearly() {
        for (code, extra, words) in [
            (10, &b"SCRAM-SHA-256\0\0"[..], "SASL (SCRAM)"),
            (5, &b"salt"[..], "an MD5 password"),
            (0, &b""[..], "no password at all"),
        ] {
            let (mut client, mut server) = pair();
            write_in_pieces(&mut client, &startup_message()).await;
            // A notice first: skipped by its length, whatever it holds.
            server.write_all(b"N\0\0\0\x06R\0").await.unwrap();
            server.write_all(&auth_request(code, extra)).await.unwrap();
            let mut buf = vec![0; 64];
            let error = loop {
                match client.read(&mut buf).await {
                    Ok(n) => assert!(n > 0, "no error for code {code}"),
                    Err(error) => break error,
                }
            };
            let text = error.to_string();
            assert!(text.contains(words), "{code}: {text}");
            assert!(text.contains("not IAM (--no-iam)"), "{text}");
            assert!(!text.contains("Signature"), "no token in {text}");
        }
    }

    #[tokio::test]
    async fn a_different_password_from_the_driver_is_refused() {
        let (mut client, mut server) = pair();
        write_in_pieces(&mut client, &startup_message()).await;
        server
            .write_all(&auth_request(AUTH_CLEARTEXT, b""))
            .await
            .unwrap();
        let mut buf = [0; 9];
        client.read_exact(&mut buf).await.unwrap();
        let error = client
            .write_all(&password_message(b"another"))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("differs"), "{error}");
    }

    #[tokio::test]
    async fn a_first_message_that_is_not_a_startup_passes_unchanged() {
        // Not a StartupMessage (a cancel request): passed on as it is.
        let (mut client, mut server) = pair();
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2];
        write_in_pieces(&mut client, &cancel).await;
        assert!(client.startup.is_none());
        drop(client);
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, cancel);
    }
}
