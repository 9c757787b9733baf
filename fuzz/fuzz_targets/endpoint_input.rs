//! Everything a client controls before it is authenticated: the first packet (SSLRequest,
//! GSSENCRequest, CancelRequest or StartupMessage), the password message and the IAM token
//! in it. Each must end in a clean error, never a panic or a hang.

#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use dsql_pgx::local::verify::TokenVerifier;
use dsql_pgx::local::wire;
use libfuzzer_sys::fuzz_target;

/// The AWS SDK's known-answer key and time (2024-08-27T00:00:00Z), so a corpus seeded with
/// the known-answer token explores near-valid signatures.
static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(|| {
    TokenVerifier::new("peccy.dsql.us-east-1.on.aws", "us-east-1").with_key("akid", "secret", None)
});
const NOW: Duration = Duration::from_secs(1_724_716_800);

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_first_packet(data);
    let _ = wire::parse_password(b'p', data);
    if let Ok(text) = std::str::from_utf8(data) {
        let now = SystemTime::UNIX_EPOCH + NOW;
        for user in ["admin", "app"] {
            let _ = VERIFIER.verify(user, text, Some("peccy.dsql.us-east-1.on.aws"), now);
            let _ = VERIFIER.verify(user, text, None, now);
        }
    }
});
