//! End-to-end tests of the local DSQL endpoint with tokio-postgres, rustls and tokens
//! from aws-sdk-dsql, against a real private PostgreSQL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestEndpoint, TestPg, TokenSpec, connect, eventually};
use dsql_pgx::local::Limits;
use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_postgres::error::SqlState;

fn assert_iam_refused(err: &tokio_postgres::Error, user: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {err:?}"));
    assert_eq!(db.code(), &SqlState::INVALID_AUTHORIZATION_SPECIFICATION);
    assert_eq!(
        db.message(),
        format!("IAM authentication failed for user \"{user}\"")
    );
}

fn code(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {err:?}"))
        .code()
        .code()
        .to_owned()
}

async fn create_role(ep: &TestEndpoint, role: &str) {
    ep.admin_client()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    ep.grant_iam(role).await;
}

#[tokio::test]
async fn admin_and_custom_role_tokens_are_accepted() {
    let ep = TestEndpoint::start().await;
    let admin = ep.connect("admin").await.unwrap();
    let row = admin.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "admin");
    let iso: String = admin
        .query_one("SHOW transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(iso, "repeatable read");

    create_role(&ep, "app").await;
    let app = ep.connect("app").await.unwrap();
    let row = app.query_one("SELECT current_user", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "app");
    ep.stop().await;
}

#[tokio::test]
async fn tls_without_a_server_name_is_refused() {
    let ep = TestEndpoint::start().await;
    let token = ep.token("admin").await;
    let config = ep.config("admin", &token);
    // The same client, certificate check and valid token, with SNI switched off.
    let mut rustls_config = (*common::client_config(ep.ca_pem(), false)).clone();
    rustls_config.enable_sni = false;
    let err = connect(&config, common::tls_connector(Arc::new(rustls_config)))
        .await
        .unwrap_err();
    assert_eq!(code(&err), "08P01");
    let text = err.as_db_error().expect("a server error").message();
    assert!(
        text.contains("SNI") && text.contains("sent none") && text.contains("pgJDBC"),
        "{text}"
    );
    assert!(
        text.contains(&format!("connect by the name {}", ep.host())),
        "{text}"
    );
    assert!(!format!("{err:?}").contains(&token));

    let client = connect(&config, ep.tls(false)).await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn tokens_for_the_wrong_action_are_refused_both_ways() {
    let ep = TestEndpoint::start().await;
    create_role(&ep, "app").await;
    let spec = ep.token_spec();
    let admin_token = spec.sign("admin").await;
    let user_token = spec.sign("app").await;
    let tls = ep.tls(false);
    let err = connect(&ep.config("app", &admin_token), tls.clone())
        .await
        .unwrap_err();
    assert_iam_refused(&err, "app");
    let err = connect(&ep.config("admin", &user_token), tls)
        .await
        .unwrap_err();
    assert_iam_refused(&err, "admin");
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let ep = TestEndpoint::start().await;
    let good = ep.token_spec();
    let cases = [
        TokenSpec {
            secret_access_key: "wrong-secret".into(),
            ..good.clone()
        },
        TokenSpec {
            region: "eu-west-1".into(),
            ..good.clone()
        },
        TokenSpec {
            host: "abcdefghijklmnopqrstuvwxyz.dsql.us-east-1.on.aws".into(),
            ..good.clone()
        },
        TokenSpec {
            access_key_id: "AKIAUNKNOWNUNKNOWN00".into(),
            ..good.clone()
        },
    ];
    for spec in cases {
        let token = spec.sign("admin").await;
        let err = connect(&ep.config("admin", &token), ep.tls(false))
            .await
            .unwrap_err();
        assert_iam_refused(&err, "admin");
    }
    for garbage in ["", "hunter2", "localhost/?Action=DbConnectAdmin"] {
        let err = connect(&ep.config("admin", garbage), ep.tls(false))
            .await
            .unwrap_err();
        assert_iam_refused(&err, "admin");
    }
}

/// A one-second token on the endpoint's stepped clock: valid until the clock passes its
/// expiry, then refused, while the connection it opened lives on.
#[tokio::test]
async fn expired_tokens_are_refused_but_open_connections_live_on() {
    let ep = TestEndpoint::start_stepped(Limits::default()).await;
    let short = TokenSpec {
        expires_in: 1,
        ..ep.token_spec()
    };
    let token = short.sign_at("admin", ep.now()).await;
    let open = connect(&ep.config("admin", &token), ep.tls(false))
        .await
        .unwrap();
    ep.advance(Duration::from_secs(2));
    let err = connect(&ep.config("admin", &token), ep.tls(false))
        .await
        .unwrap_err();
    assert_iam_refused(&err, "admin");
    let one: i32 = open.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn plaintext_is_refused() {
    let ep = TestEndpoint::start().await;
    let token = ep.token("admin").await;
    let mut config = ep.config("admin", &token);
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let err = match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => panic!("plaintext connection accepted"),
        Err(e) => e,
    };
    assert_eq!(code(&err), "08P01");
    assert_eq!(err.as_db_error().unwrap().message(), "SSL/TLS required");
}

#[tokio::test]
async fn raw_plaintext_startup_gets_a_fatal_error_response() {
    let ep = TestEndpoint::start().await;
    let mut tcp = tokio::net::TcpStream::connect(ep.endpoint().local_addr())
        .await
        .unwrap();
    let startup = dsql_pgx::local::wire::Startup {
        params: vec![("user".into(), "admin".into())],
    };
    tcp.write_all(&startup.encode()).await.unwrap();
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply[0], b'E');
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("SFATAL\0") && text.contains("C08P01\0"),
        "{text:?}"
    );
    assert!(text.contains("MSSL/TLS required\0"), "{text:?}");

    // Garbage bytes: an error or a close, never a hang or a crash of the endpoint.
    let mut tcp = tokio::net::TcpStream::connect(ep.endpoint().local_addr())
        .await
        .unwrap();
    tcp.write_all(&[0xff; 64]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink))
        .await
        .expect("endpoint closes a garbage connection");
    ep.connect("admin").await.unwrap();
}

#[tokio::test]
async fn disallowed_startup_parameters_are_refused() {
    let ep = TestEndpoint::start().await;
    let token = ep.token("admin").await;
    let mut config = ep.config("admin", &token);
    config.options("-c work_mem=64MB");
    let err = connect(&config, ep.tls(false)).await.unwrap_err();
    assert_eq!(code(&err), "0A000");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "setting configuration parameter \"options\" not supported"
    );
    // Allowed ones pass through to PostgreSQL.
    let mut config = ep.config("admin", &token);
    config.application_name("dsql-pgx-test");
    let client = connect(&config, ep.tls(false)).await.unwrap();
    let name: String = client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "dsql-pgx-test");
}

#[tokio::test]
async fn session_ids_are_dsql_shaped_and_per_session() {
    let ep = TestEndpoint::start().await;
    create_role(&ep, "app").await;
    let a = ep.connect("admin").await.unwrap();
    let b = ep.connect("app").await.unwrap();
    let id = |c: tokio_postgres::Client| async move {
        let first: String = c
            .query_one("SELECT sys.current_session_id()", &[])
            .await
            .unwrap()
            .get(0);
        let again: String = c
            .query_one("SELECT sys.current_session_id()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(first, again, "stable within a session");
        first
    };
    let (ia, ib) = (id(a).await, id(b).await);
    for s in [&ia, &ib] {
        assert_eq!(s.len(), 26, "{s}");
        assert!(
            s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
            "{s}"
        );
    }
    assert_ne!(ia, ib);
}

#[tokio::test]
async fn direct_tls_requires_alpn() {
    let ep = TestEndpoint::start().await;
    let token = ep.token("admin").await;
    let mut config = ep.config("admin", &token);
    config.ssl_negotiation(tokio_postgres::config::SslNegotiation::Direct);
    let client = connect(&config, ep.tls(true)).await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let err = connect(&config, ep.tls(false)).await.unwrap_err();
    assert_eq!(code(&err), "08P01");
}

/// DSQL's one-hour limit, on the endpoint's stepped clock.
#[tokio::test]
async fn connections_are_closed_at_their_maximum_age() {
    let ep = TestEndpoint::start_stepped(Limits::default()).await;
    assert_eq!(
        Limits::default().max_connection_age,
        Duration::from_secs(3600)
    );
    let client = ep.connect("admin").await.unwrap();
    client.query_one("SELECT 1", &[]).await.unwrap();
    ep.advance(Duration::from_secs(3599));
    client
        .query_one("SELECT 1", &[])
        .await
        .expect("open until its maximum age");
    ep.advance(Duration::from_secs(1));
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    eventually(
        "the client sees the close",
        Duration::from_secs(10),
        || async { client.is_closed() },
    )
    .await;
    // New connections are fine.
    ep.connect("admin").await.unwrap();
}

#[tokio::test]
async fn connection_rate_is_limited() {
    let ep = TestEndpoint::start_stepped(Limits {
        rate_per_sec: 1,
        burst: 1,
        ..Default::default()
    })
    .await;
    let _first = ep.connect("admin").await.unwrap();
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "53400");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "Unable to accept connection, rate exceeded."
    );
    ep.advance(Duration::from_millis(500));
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "53400", "not refilled yet");
    ep.advance(Duration::from_millis(500));
    ep.connect("admin").await.unwrap();
}

#[tokio::test]
async fn open_connections_are_limited() {
    let ep = TestEndpoint::start_with(dsql_pgx::local::Limits {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let first = ep.connect("admin").await.unwrap();
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "53300");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "Unable to accept connection, too many open connections."
    );
    drop(first);
    // The slot is released once the endpoint sees the close.
    eventually(
        "the slot is released after the first connection closed",
        Duration::from_secs(10),
        || async { ep.connect("admin").await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn cancel_requests_reach_postgres() {
    let ep = TestEndpoint::start().await;
    cancel_a_sleep(&ep).await;
}

#[tokio::test]
async fn unknown_role_error_is_relayed() {
    let ep = TestEndpoint::start().await;
    let err = ep.connect("nosuchrole").await.unwrap_err();
    assert_eq!(code(&err), "28000");
    assert!(
        err.as_db_error().unwrap().message().contains("nosuchrole"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_closes_client_connections() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    let pid = ep.endpoint().postgres().pid().unwrap();
    ep.stop().await;
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err());
}

#[tokio::test]
async fn test_pg_speaks_tls_with_a_password() {
    let pg = TestPg::start().await;
    let client = pg.tcp_client().await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    pg.admin_client()
        .await
        .batch_execute("CREATE ROLE r LOGIN")
        .await
        .unwrap();
    pg.stop().await;
}

#[tokio::test]
async fn dropping_the_server_leaves_no_process() {
    let pg = TestPg::start().await;
    let pid_file = pg.server().pgdata().join("postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    drop(pg);
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "postmaster {pid} still running after drop"
    );

    let ep = TestEndpoint::start().await;
    let pid = ep.endpoint().postgres().pid().unwrap() as i32;
    drop(ep);
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err());
}

#[tokio::test]
async fn gssenc_request_is_declined_then_tls_proceeds() {
    let ep = TestEndpoint::start().await;
    let mut tcp = tokio::net::TcpStream::connect(ep.endpoint().local_addr())
        .await
        .unwrap();
    let mut reply = [0u8; 1];
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"N");
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"S");
}

#[tokio::test]
async fn a_data_dir_keeps_credentials_ca_and_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let opts = dsql_pgx::local::EndpointOptions {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let first = dsql_pgx::local::LocalEndpoint::start(opts.clone())
        .await
        .unwrap();
    let (akid, secret) = (
        first.access_key_id().to_owned(),
        first.secret_access_key().to_owned(),
    );
    let ca = std::fs::read_to_string(first.ca_path()).unwrap();
    first
        .postgres()
        .admin_client()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE kept (x int); ALTER TABLE kept OWNER TO admin")
        .await
        .unwrap();
    assert!(!format!("{first:?}").contains(&secret));
    first.shutdown().await.unwrap();

    let second = dsql_pgx::local::LocalEndpoint::start(opts).await.unwrap();
    assert_eq!(second.access_key_id(), akid);
    assert_eq!(second.secret_access_key(), secret);
    assert_eq!(std::fs::read_to_string(second.ca_path()).unwrap(), ca);
    let token = TokenSpec {
        host: second.hostname().into(),
        region: second.region().into(),
        access_key_id: akid,
        secret_access_key: secret,
        expires_in: 60,
    }
    .sign("admin")
    .await;
    let mut config = tokio_postgres::Config::new();
    config
        .host("localhost")
        .hostaddr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        .port(second.port())
        .user("admin")
        .password(token)
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let client = connect(
        &config,
        common::tls_connector(common::client_config(&ca, false)),
    )
    .await
    .unwrap();
    client.query("SELECT x FROM kept", &[]).await.unwrap();
    second.shutdown().await.unwrap();
}

/// A TLS connection to the endpoint that sent its startup packet and got the password
/// request, and then says nothing: a client in the middle of its handshake.
async fn half_open(ep: &TestEndpoint) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(ep.endpoint().local_addr())
        .await
        .unwrap();
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut reply = [0u8; 1];
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"S");
    let connector = tokio_rustls::TlsConnector::from(common::client_config(ep.ca_pem(), false));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let startup = dsql_pgx::local::wire::Startup {
        params: vec![("user".into(), "admin".into())],
    };
    tls.write_all(&startup.encode()).await.unwrap();
    let mut request = [0u8; 9];
    tls.read_exact(&mut request).await.unwrap();
    assert_eq!(request, dsql_pgx::local::wire::auth_cleartext_request());
    tls
}

/// What the endpoint answers a client that sends its password with the startup, in one TLS
/// write, before being asked: the message types it sent up to ReadyForQuery or an error,
/// and the error's SQLSTATE and message.
async fn answer_to_an_early_password(ep: &TestEndpoint, password: &str) -> (Vec<u8>, String) {
    let tcp = tokio::net::TcpStream::connect(ep.endpoint().local_addr())
        .await
        .unwrap();
    // Direct TLS: ALPN, no SSLRequest.
    let connector = tokio_rustls::TlsConnector::from(common::client_config(ep.ca_pem(), true));
    let name = rustls_pki_types::ServerName::try_from(ep.host().to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let startup = dsql_pgx::local::wire::Startup {
        params: vec![
            ("user".into(), "admin".into()),
            ("database".into(), "postgres".into()),
        ],
    };
    let mut flight = startup.encode();
    flight.push(b'p');
    flight.extend_from_slice(&(password.len() as u32 + 5).to_be_bytes());
    flight.extend_from_slice(password.as_bytes());
    flight.push(0);
    tls.write_all(&flight).await.unwrap();
    tls.flush().await.unwrap();
    let mut types = Vec::new();
    loop {
        let (tag, body) = dsql_pgx::local::wire::read_message(&mut tls, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        types.push(tag);
        match tag {
            b'Z' => return (types, String::new()),
            b'E' => {
                let fields: Vec<String> = body
                    .split(|&b| b == 0)
                    .filter(|f| matches!(f.first(), Some(b'C' | b'M')))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .collect();
                return (types, fields.join(" "));
            }
            _ => {}
        }
    }
}

/// A client may send its token with the startup, without waiting for the request (as the
/// pool does): the endpoint reads it as the answer to its request, lets a good token in and
/// refuses a bad one exactly as it refuses one sent a round trip later.
#[tokio::test]
async fn a_password_sent_with_the_startup_is_read_as_the_answer() {
    let ep = TestEndpoint::start().await;
    let token = ep.token_spec().sign("admin").await;
    let (types, error) = answer_to_an_early_password(&ep, &token).await;
    assert_eq!(error, "");
    assert_eq!(types.first(), Some(&b'R'), "the password request first");
    assert_eq!(types[1], b'R', "then AuthenticationOk: {types:?}");
    assert_eq!(types.last(), Some(&b'Z'));

    let bad = TokenSpec {
        secret_access_key: "wrong-secret".into(),
        ..ep.token_spec()
    }
    .sign("admin")
    .await;
    for password in [bad.as_str(), "hunter2"] {
        let (types, error) = answer_to_an_early_password(&ep, password).await;
        assert_eq!(types, b"RE", "the request, then the refusal");
        assert_eq!(error, "28000 IAM authentication failed for user \"admin\"");
        // The same refusal as for a token sent when asked.
        let err = connect(&ep.config("admin", password), ep.tls(false))
            .await
            .unwrap_err();
        assert_iam_refused(&err, "admin");
    }
}

/// The case scaled to a small bucket: clients without a valid token (wrong
/// passwords, a handshake left hanging) spend neither the connection rate nor a slot.
/// Before, the 11th wrong password already got 53400, and the hanging handshake held the
/// only slot (53300).
#[tokio::test]
async fn clients_without_a_valid_token_spend_neither_rate_nor_slots() {
    let ep = TestEndpoint::start_with(dsql_pgx::local::Limits {
        rate_per_sec: 1,
        burst: 10,
        max_connections: 1,
        ..Default::default()
    })
    .await;
    let _hanging = half_open(&ep).await;
    for _ in 0..40 {
        let err = connect(&ep.config("admin", "not-a-token"), ep.tls(false))
            .await
            .unwrap_err();
        assert_iam_refused(&err, "admin");
    }
    let client = ep.connect("admin").await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    // Valid clients still meet both limits.
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "53300");
}

/// Idle sockets holding every handshake slot (a stranger needs no token for that) do not
/// lock valid clients out: at the cap a new socket takes the oldest one's slot, so the oldest
/// idle socket is closed and a valid client still gets in while the rest are held.
#[tokio::test]
async fn idle_sockets_holding_every_handshake_slot_do_not_lock_clients_out() {
    let ep = TestEndpoint::start_with(dsql_pgx::local::Limits {
        burst: 4,
        ..Default::default()
    })
    .await;
    let addr = ep.endpoint().local_addr();
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let _newer = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent[0].read(&mut buf))
        .await
        .expect("the oldest idle socket gives its slot up at once");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let client = ep
        .connect("admin")
        .await
        .expect("a valid client gets in while idle sockets hold the other slots");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(silent);
}

/// A raw CancelRequest, from `source`, for backend `pid` with `secret`.
async fn raw_cancel(ep: &TestEndpoint, source: std::net::IpAddr, pid: i32, secret: i32) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let Ok(mut tcp) = socket.connect(ep.endpoint().local_addr()).await else {
        return;
    };
    let mut packet = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.to_be_bytes());
    let _ = tcp.write_all(&packet).await;
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink).await;
}

/// A flood of cancel requests from one source (made-up keys) neither starves a real cancel
/// from another source, during or after the flood, nor makes the endpoint hang.
#[tokio::test]
async fn a_cancel_flood_does_not_starve_real_cancels() {
    let ep = Arc::new(TestEndpoint::start().await);
    let flooder: std::net::IpAddr = [127, 0, 0, 2].into();
    let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flood = {
        let (ep, sent) = (ep.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..8 {
                let (ep, sent) = (ep.clone(), sent.clone());
                tasks.spawn(async move {
                    for i in 0..250 {
                        raw_cancel(&ep, flooder, 1000 + worker, i).await;
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };
    eventually("100 cancels sent", Duration::from_secs(60), || async {
        sent.load(std::sync::atomic::Ordering::Relaxed) >= 100
    })
    .await;
    cancel_a_sleep(&ep).await;
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood finishes")
        .unwrap();
    cancel_a_sleep(&ep).await;
}

/// Starts `pg_sleep(30)` and cancels it through the endpoint, as tokio-postgres does.
async fn cancel_a_sleep(ep: &TestEndpoint) {
    {
        let client = ep.connect("admin").await.unwrap();
        let cancel = client.cancel_token();
        let query = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(30)").await });
        let running = "query = 'SELECT pg_sleep(30)'";
        ep.wait_for_sessions("the query runs", running, 1, Duration::from_secs(10))
            .await;
        cancel.cancel_query(ep.tls(false)).await.unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), query)
            .await
            .expect("the cancel took effect")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));
    }
}

/// Streams `select repeat('x', 1000) ...` until it fails; returns the error.
async fn stream_until_error(client: tokio_postgres::Client) -> tokio_postgres::Error {
    use futures_util::TryStreamExt as _;
    let rows = client
        .query_raw(
            "select repeat('x', 1000) from generate_series(1, 10000000)",
            std::iter::empty::<i32>(),
        )
        .await;
    let mut rows = match rows {
        Ok(rows) => Box::pin(rows),
        Err(e) => return e,
    };
    loop {
        match rows.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the result ended without the endpoint's FATAL"),
            Err(e) => return e,
        }
    }
}

/// The maximum-age FATAL arrives between two messages of a long streaming result, so the
/// client sees 57P01 instead of a protocol error (before: the FATAL landed inside a row).
/// The clock is stepped past the hour once the result is streaming.
#[tokio::test]
async fn a_streaming_result_ends_with_57p01_at_the_maximum_age() {
    let ep = TestEndpoint::start_stepped(Limits::default()).await;
    let client = ep.connect("admin").await.unwrap();
    let streaming = tokio::spawn(stream_until_error(client));
    wait_until_streaming(&ep).await;
    ep.advance(Limits::default().max_connection_age);
    let err = tokio::time::timeout(Duration::from_secs(60), streaming)
        .await
        .expect("the connection ends at its maximum age")
        .unwrap();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected the endpoint's FATAL, got {err:?}"));
    assert_eq!(db.code(), &SqlState::ADMIN_SHUTDOWN);
    assert_eq!(
        db.message(),
        "terminating connection: it reached its maximum age"
    );
}

/// Waits until [`stream_until_error`]'s query runs on the private PostgreSQL.
async fn wait_until_streaming(ep: &TestEndpoint) {
    let active = "query LIKE 'select repeat%'";
    ep.wait_for_sessions(
        "the result is streaming",
        active,
        1,
        Duration::from_secs(10),
    )
    .await;
}

/// The same at shutdown.
#[tokio::test]
async fn a_streaming_result_ends_with_57p01_at_shutdown() {
    let ep = TestEndpoint::start().await;
    let client = ep.connect("admin").await.unwrap();
    let streaming = tokio::spawn(stream_until_error(client));
    wait_until_streaming(&ep).await;
    ep.stop().await;
    let err = tokio::time::timeout(Duration::from_secs(30), streaming)
        .await
        .expect("the stream ends")
        .unwrap();
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");
}

/// Once the private PostgreSQL dies, `failed()` resolves within a second or so and new
/// clients get one FATAL 08006 that says what happened (before: the socket just closed).
#[tokio::test]
async fn a_dead_postgres_is_noticed_and_reported_to_new_clients() {
    let ep = TestEndpoint::start().await;
    ep.connect("admin").await.unwrap();
    let mut failed = std::pin::pin!(ep.endpoint().failed());
    assert!(
        failed.as_mut().now_or_never().is_none(),
        "failed while running"
    );
    let pid = ep.endpoint().postgres().pid().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), failed)
        .await
        .expect("the endpoint notices that PostgreSQL died");
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "08006", "{err}");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "the local endpoint's PostgreSQL server is not running; see postgres.log in its data directory and restart dsql-pgx local"
    );
}

/// The server's socket lives in pgdata/, which the PostgreSQL OS user owns: a listener put in
/// its place (here by the test, as that user could) gets nothing from the endpoint, not even
/// the client's startup packet, and the client is told the server is unavailable.
#[tokio::test]
async fn a_socket_put_in_place_of_postgres_gets_nothing() {
    let ep = TestEndpoint::start().await;
    let socket = ep.endpoint().postgres().socket_path();
    std::fs::rename(&socket, socket.with_extension("real")).unwrap();
    let impostor = tokio::net::UnixListener::bind(&socket).unwrap();
    let heard = tokio::spawn(async move {
        let (mut stream, _) = impostor.accept().await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut got)).await;
        got
    });
    let err = ep.connect("admin").await.unwrap_err();
    assert_eq!(code(&err), "08006", "{err}");
    let got = tokio::time::timeout(Duration::from_secs(30), heard)
        .await
        .expect("the endpoint connected to the impostor and hung up")
        .unwrap();
    assert!(got.is_empty(), "the impostor heard {} bytes", got.len());
    ep.stop().await;
}
