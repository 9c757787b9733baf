# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dsql_pgx_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_dsql_pgx_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dsql_pgx_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dsql_pgx_using_subcommand
    set -l cmd (__fish_dsql_pgx_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "query" -d 'Run SQL with tokens handled and print the results'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "connect" -d 'Open the pool and show each connection\'s session ID, TLS and timing'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "token" -d 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "refresh-demo" -d 'Show that a token refresh replaces every connection while queries keep succeeding'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "local" -d 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "bench" -d 'Measure throughput and latency of one statement through the pool'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c dsql-pgx -n "__fish_dsql_pgx_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s f -l file -d 'Read SQL from a file' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l format -d 'Format of the results on stdout' -r -f -a "table\t'Aligned tables (boxed on a terminal, plain when piped), command tags after'
csv\t'Comma-separated values (RFC 4180), header row first'
tsv\t'Tab-separated values; tabs, newlines and backslashes escaped as \\t, \\n, \\\\'
json\t'One JSON object per row, keys in column order, numbers with every digit'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l retries -d 'Retries after an optimistic-concurrency conflict (SQLSTATE 40001, OC000, OC001)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l retry-base -d 'Backoff ceiling of the first retry; doubles each retry, with full jitter' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l retry-max -d 'Largest backoff ceiling' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l endpoint -l hostname -d 'Cluster endpoint to sign for, or a bare 26-character cluster id' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l region -d 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l user -d 'Database role [env: DB_USER, CLUSTER_USER; default: admin]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l profile -d 'AWS profile for credentials (default: the AWS default chain)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l token-expires-in -l expires-in -d 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l host -d 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l port -d 'Port to connect to' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l database -d 'Database name (DSQL has only `postgres`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l ca-file -d 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l sslmode -d 'TLS mode' -r -f -a "verify-full\t'Encrypt and verify the certificate chain and host name (DSQL\'s production setting)'
require\t'Encrypt without verifying the certificate (testing only)'
disable\t'No TLS: refused with IAM on, since DSQL rejects plaintext'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l ssl-negotiation -d 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]' -r -f -a "postgres\t'Classic SSLRequest, then TLS'
direct\t'PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l max-conns -d 'Maximum connections in the pool' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l min-idle -d 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l max-lifetime -d 'Close connections older than this (must stay below DSQL\'s 60-minute limit)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l idle-timeout -d 'Close connections idle longer than this' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l connect-timeout -d 'Give up on a new connection (token, TCP, TLS, auth) after this long' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l transaction -d 'Run all statements in one transaction (BEGIN ... COMMIT), retried as a whole'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s x -l expanded -d 'Print each row as a record of `column | value` lines, as psql\'s `\\x` does'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l no-header -d 'Omit the header row in csv and tsv output'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l no-retry -d 'Never retry conflicts'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l local -d 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l iam -d 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -l no-iam -d 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand query" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l count -d 'Connections to open at once (default: --min-idle, at least 1)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l format -d 'Format of the report on stdout' -r -f -a "table\t'Aligned tables (boxed on a terminal, plain when piped)'
json\t'One JSON document'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l endpoint -l hostname -d 'Cluster endpoint to sign for, or a bare 26-character cluster id' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l region -d 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l user -d 'Database role [env: DB_USER, CLUSTER_USER; default: admin]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l profile -d 'AWS profile for credentials (default: the AWS default chain)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l token-expires-in -l expires-in -d 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l host -d 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l port -d 'Port to connect to' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l database -d 'Database name (DSQL has only `postgres`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l ca-file -d 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l sslmode -d 'TLS mode' -r -f -a "verify-full\t'Encrypt and verify the certificate chain and host name (DSQL\'s production setting)'
require\t'Encrypt without verifying the certificate (testing only)'
disable\t'No TLS: refused with IAM on, since DSQL rejects plaintext'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l ssl-negotiation -d 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]' -r -f -a "postgres\t'Classic SSLRequest, then TLS'
direct\t'PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l max-conns -d 'Maximum connections in the pool' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l min-idle -d 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l max-lifetime -d 'Close connections older than this (must stay below DSQL\'s 60-minute limit)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l idle-timeout -d 'Close connections idle longer than this' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l connect-timeout -d 'Give up on a new connection (token, TCP, TLS, auth) after this long' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l local -d 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l iam -d 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -l no-iam -d 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand connect" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l format -d 'Format of the output: the token (or URL) alone, or JSON with its hostname, region, action and expiry' -r -f -a "text\t'Plain text'
json\t'One JSON object'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l endpoint -l hostname -d 'Cluster endpoint to sign for, or a bare 26-character cluster id' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l region -d 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l user -d 'Database role [env: DB_USER, CLUSTER_USER; default: admin]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l profile -d 'AWS profile for credentials (default: the AWS default chain)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l token-expires-in -l expires-in -d 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l host -d 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l port -d 'Port to connect to' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l database -d 'Database name (DSQL has only `postgres`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l ca-file -d 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l admin -d 'Sign a DbConnectAdmin token whatever the user'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -l url -d 'Print a libpq connection URL instead, the token as its password (percent-encoded): `psql "$(dsql-pgx token --url)"`'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand token" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l interval -d 'Time between refreshes [default: the refresh interval]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l duration -d 'Stop after this long [default: until Ctrl-C or SIGTERM]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l refreshes -d 'Stop after this many refreshes [default: until Ctrl-C or SIGTERM]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l workers -d 'Tasks querying continuously through the pool' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l format -d 'Format of the output on stdout' -r -f -a "table\t'A line per refresh, then a summary table'
json\t'A JSON object per refresh, then a summary object, one per line'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l refresh -d 'Refresh tokens and replace connections periodically (`--refresh false` to turn off)' -r -f -a "true\t''
false\t''"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l refresh-interval -d 'Refresh period: humantime (`15m`, `1h`) or bare seconds (`900`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l endpoint -l hostname -d 'Cluster endpoint to sign for, or a bare 26-character cluster id' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l region -d 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l user -d 'Database role [env: DB_USER, CLUSTER_USER; default: admin]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l profile -d 'AWS profile for credentials (default: the AWS default chain)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l token-expires-in -l expires-in -d 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l host -d 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l port -d 'Port to connect to' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l database -d 'Database name (DSQL has only `postgres`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l ca-file -d 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l sslmode -d 'TLS mode' -r -f -a "verify-full\t'Encrypt and verify the certificate chain and host name (DSQL\'s production setting)'
require\t'Encrypt without verifying the certificate (testing only)'
disable\t'No TLS: refused with IAM on, since DSQL rejects plaintext'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l ssl-negotiation -d 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]' -r -f -a "postgres\t'Classic SSLRequest, then TLS'
direct\t'PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l max-conns -d 'Maximum connections in the pool' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l min-idle -d 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l max-lifetime -d 'Close connections older than this (must stay below DSQL\'s 60-minute limit)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l idle-timeout -d 'Close connections idle longer than this' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l connect-timeout -d 'Give up on a new connection (token, TCP, TLS, auth) after this long' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l local -d 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l iam -d 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -l no-iam -d 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand refresh-demo" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l listen -d 'Address to listen on for TLS clients' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l port -d 'Port to listen on, overriding the one in --listen (0 picks a free port)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l data-dir -d 'Directory for the PostgreSQL cluster, CA and credentials (default: a fresh temp dir)' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l hostname -d 'Host name clients sign tokens for and send as TLS SNI' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l region -d 'Region clients sign tokens for' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l access-key-id -d 'Access key id to accept (default: generated and kept in the data dir)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l secret-access-key -d 'Secret access key to accept (default: generated and kept in the data dir)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l secret-access-key-file -d 'Read the secret access key from this file (yours, mode 0600, not a symbolic link)' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l env-file -d 'Write the exports to this file instead of stdout, once the endpoint accepts connections' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l dialect -d 'SQL spoken behind IAM: DSQL\'s (statements DSQL refuses are refused with its SQLSTATEs and words, CREATE INDEX ASYNC builds in the background), or plain PostgreSQL' -r -f -a "dsql\t'Aurora DSQL\'s: what DSQL refuses is refused as DSQL refuses it'
postgres\t'Plain PostgreSQL, statements relayed as they are'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l max-transaction-age -d 'Fail transactions older than this, as DSQL does at 5 minutes (with --dialect dsql)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l iam-arn -d 'The IAM identity the endpoint\'s keys stand for (exported as DSQL_IAM_ARN)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l max-connection-age -d 'Close client connections older than this, as DSQL does at one hour' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l max-connections -d 'Refuse connections beyond this many (SQLSTATE 53300)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l rate -d 'New connections per second before refusing (SQLSTATE 53400)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l burst -d 'Burst of new connections allowed above the rate' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l threads -d 'Runtime worker threads for TLS and relaying (0 = one per core)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l format -d 'Format of what is printed once the endpoint is ready: `unset`/`export` lines for a shell to eval, or the same variables as one JSON object' -r -f -a "text\t'Plain text'
json\t'One JSON object'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -l persist -d 'Keep state in your own default data dir instead of a temp dir'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand local" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l clients -d 'Tasks querying concurrently, each checking a connection out of the pool per query' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l duration -d 'How long to measure, after the warm-up' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l warmup -d 'How long to run before measuring (statements prepared, caches warm); `0s` for none' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l refresh-every -d 'Refresh tokens and replace every connection this often while measuring' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l pipeline -d 'Queries each client keeps in flight on its connection (tokio-postgres pipelining)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l threads -d 'Threads, as pgbench\'s -j: each runs its share of the clients on a pool of its own, with no wake-ups crossing threads. 1 (the default) runs everything on one thread' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l format -d 'Format of the report on stdout' -r -f -a "table\t'Aligned tables (boxed on a terminal, plain when piped)'
json\t'One JSON document'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l endpoint -l hostname -d 'Cluster endpoint to sign for, or a bare 26-character cluster id' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l region -d 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l user -d 'Database role [env: DB_USER, CLUSTER_USER; default: admin]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l profile -d 'AWS profile for credentials (default: the AWS default chain)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l token-expires-in -l expires-in -d 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l host -d 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l port -d 'Port to connect to' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l database -d 'Database name (DSQL has only `postgres`)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l ca-file -d 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots' -r -F
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l sslmode -d 'TLS mode' -r -f -a "verify-full\t'Encrypt and verify the certificate chain and host name (DSQL\'s production setting)'
require\t'Encrypt without verifying the certificate (testing only)'
disable\t'No TLS: refused with IAM on, since DSQL rejects plaintext'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l ssl-negotiation -d 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]' -r -f -a "postgres\t'Classic SSLRequest, then TLS'
direct\t'PostgreSQL 17 direct TLS with ALPN `postgresql`: one round trip less'"
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l max-conns -d 'Maximum connections in the pool' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l min-idle -d 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l max-lifetime -d 'Close connections older than this (must stay below DSQL\'s 60-minute limit)' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l idle-timeout -d 'Close connections idle longer than this' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l connect-timeout -d 'Give up on a new connection (token, TCP, TLS, auth) after this long' -r
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l local -d 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l iam -d 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -l no-iam -d 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand bench" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand completions" -s v -l verbose -d 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand completions" -s q -l quiet -d 'Print results only: no statistics or notices on stderr, errors still shown'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand completions" -s h -l help -d 'Print help (a summary with -h)'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand completions" -s V -l version -d 'Print the version'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "query" -d 'Run SQL with tokens handled and print the results'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "connect" -d 'Open the pool and show each connection\'s session ID, TLS and timing'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "token" -d 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "refresh-demo" -d 'Show that a token refresh replaces every connection while queries keep succeeding'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "local" -d 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "bench" -d 'Measure throughput and latency of one statement through the pool'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "completions" -d 'Print a shell completion script'
complete -c dsql-pgx -n "__fish_dsql_pgx_using_subcommand help; and not __fish_seen_subcommand_from query connect token refresh-demo local bench completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
