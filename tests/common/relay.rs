//! A TCP relay that counts the round trips a client waits for, by holding back every answer
//! until the client has been quiet for a while, so a count does not depend on how fast the
//! machine is: an answer can only reach the client after the flight it answers has ended.
//!
//! Counting rule (per connection): a client *flight* is everything the client sends until it
//! has been quiet for [`QUIET`]; the server's bytes are delivered only then. The flight is a
//! round trip waited if server bytes were delivered after it and before the client sent
//! again (or closed). Pipelined messages (sent together) are one flight; a Terminate with no
//! answer counts nothing. The TCP handshake is not seen here: [`RelayConn::round_trips`]
//! adds it as 1, as `rtt-relay.py` does. A client that stalls for longer than [`QUIET`] in the
//! middle of one flight would be counted twice; 50 ms is far beyond any such stall between
//! writes the client makes without waiting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long the client must be quiet before an answer is delivered.
pub const QUIET: Duration = Duration::from_millis(50);

/// What the relay saw of one connection.
#[derive(Debug, Default, Clone)]
pub struct RelayConn {
    /// Answers delivered after a client flight (the TCP handshake not included).
    pub waited: u32,
    /// The client's first byte: 0x16 for a TLS ClientHello (direct TLS), 0 for a
    /// PostgreSQL packet (an SSLRequest or a startup message).
    pub first_byte: Option<u8>,
    /// The client closed its side.
    pub client_closed: bool,
    /// The client's last flight before it closed went unanswered: a goodbye (Terminate, TLS
    /// close_notify) rather than closing right after the last answer.
    pub said_goodbye: bool,
}

impl RelayConn {
    /// Round trips the client waited for, the TCP handshake counted as one.
    pub fn round_trips(&self) -> u32 {
        self.waited + 1
    }

    /// Whether the client started with TLS at once (PostgreSQL 17 direct TLS).
    pub fn direct_tls(&self) -> bool {
        self.first_byte == Some(0x16)
    }
}

#[derive(Default)]
struct State {
    /// The client sent bytes since the last delivery.
    pending: bool,
    last_client: Option<Instant>,
    seen: RelayConn,
}

/// A counting relay to `upstream` on 127.0.0.1 (free port); stops when dropped.
pub struct CountingRelay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<State>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
        let addr = listener.local_addr().expect("relay address");
        let conns: Arc<Mutex<Vec<Arc<Mutex<State>>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::new(Mutex::new(State::default()));
                all.lock().unwrap().push(state.clone());
                tokio::spawn(relay(client, upstream, state));
            }
        });
        CountingRelay { addr, conns, task }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every connection so far, in the order accepted.
    pub fn connections(&self) -> Vec<RelayConn> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.lock().unwrap().seen.clone())
            .collect()
    }

    /// Every connection so far, once each has been closed by its client (bounded wait: the
    /// relay sees the close a moment after the client process is gone).
    pub async fn closed_connections(&self) -> Vec<RelayConn> {
        super::eventually(
            "the relay to see every close",
            Duration::from_secs(10),
            || {
                let closed = self.connections().iter().all(|c| c.client_closed);
                async move { closed }
            },
        )
        .await;
        self.connections()
    }

    /// Forgets the connections so far.
    pub fn clear(&self) {
        self.conns.lock().unwrap().clear();
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, upstream: SocketAddr, state: Arc<Mutex<State>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let upward = {
        let state = state.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = client_rx.read(&mut buf).await.unwrap_or(0);
                {
                    let mut s = state.lock().unwrap();
                    if n == 0 {
                        s.seen.client_closed = true;
                        s.seen.said_goodbye = s.pending;
                    } else {
                        s.seen.first_byte.get_or_insert(buf[0]);
                        s.pending = true;
                        s.last_client = Some(Instant::now());
                    }
                }
                if n == 0 || server_tx.write_all(&buf[..n]).await.is_err() {
                    let _ = server_tx.shutdown().await;
                    return;
                }
            }
        }
    };
    let downward = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_rx.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = client_tx.shutdown().await;
                return;
            }
            // Hold the answer until the client's flight has ended.
            loop {
                let wait = {
                    let s = state.lock().unwrap();
                    s.last_client.map_or(Duration::ZERO, |t| {
                        (t + QUIET).saturating_duration_since(Instant::now())
                    })
                };
                if wait.is_zero() {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            {
                let mut s = state.lock().unwrap();
                if s.pending && !s.seen.client_closed {
                    s.seen.waited += 1;
                }
                s.pending = false;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(upward, downward);
}
