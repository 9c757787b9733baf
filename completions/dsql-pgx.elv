
use builtin;
use str;

set edit:completion:arg-completer[dsql-pgx] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'dsql-pgx'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'dsql-pgx'= {
            cand --format 'Output format for data on stdout'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand query 'Run SQL with tokens handled and print the results'
            cand connect 'Open the pool and show each connection''s session ID, TLS and timing'
            cand token 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`'
            cand refresh-demo 'Show that a token refresh replaces every connection while queries keep succeeding'
            cand local 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL'
            cand bench 'Measure throughput and latency of one statement through the pool'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'dsql-pgx;query'= {
            cand -f 'Read SQL from a file'
            cand --file 'Read SQL from a file'
            cand --retries 'Retries after an optimistic-concurrency conflict (SQLSTATE 40001, OC000, OC001)'
            cand --retry-base 'Backoff ceiling of the first retry; doubles each retry, with full jitter'
            cand --retry-max 'Largest backoff ceiling'
            cand --endpoint 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --hostname 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --region 'AWS region [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]'
            cand --user 'Database role [env: DB_USER, CLUSTER_USER; default: admin]'
            cand --profile 'AWS profile for credentials (default: the AWS default chain)'
            cand --token-expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --host 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)'
            cand --port 'Port to connect to'
            cand --database 'Database name (DSQL has only `postgres`)'
            cand --sslmode 'TLS mode'
            cand --ca-file 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots'
            cand --ssl-negotiation 'How TLS is negotiated'
            cand --max-conns 'Maximum connections in the pool'
            cand --min-idle 'Idle connections the pool keeps open'
            cand --max-lifetime 'Close connections older than this (must stay below DSQL''s 60-minute limit)'
            cand --idle-timeout 'Close connections idle longer than this'
            cand --connect-timeout 'Give up on a new connection (token, TCP, TLS, auth) after this long'
            cand --format 'Output format for data on stdout'
            cand --transaction 'Run all statements in one transaction (BEGIN ... COMMIT), retried as a whole'
            cand --no-retry 'Never retry conflicts'
            cand --local 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
            cand --iam 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
            cand --no-iam 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;connect'= {
            cand --count 'Connections to open at once (default: the pool''s minimum idle size)'
            cand --endpoint 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --hostname 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --region 'AWS region [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]'
            cand --user 'Database role [env: DB_USER, CLUSTER_USER; default: admin]'
            cand --profile 'AWS profile for credentials (default: the AWS default chain)'
            cand --token-expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --host 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)'
            cand --port 'Port to connect to'
            cand --database 'Database name (DSQL has only `postgres`)'
            cand --sslmode 'TLS mode'
            cand --ca-file 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots'
            cand --ssl-negotiation 'How TLS is negotiated'
            cand --max-conns 'Maximum connections in the pool'
            cand --min-idle 'Idle connections the pool keeps open'
            cand --max-lifetime 'Close connections older than this (must stay below DSQL''s 60-minute limit)'
            cand --idle-timeout 'Close connections idle longer than this'
            cand --connect-timeout 'Give up on a new connection (token, TCP, TLS, auth) after this long'
            cand --format 'Output format for data on stdout'
            cand --local 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
            cand --iam 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
            cand --no-iam 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;token'= {
            cand --endpoint 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --hostname 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --region 'AWS region [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]'
            cand --user 'Database role [env: DB_USER, CLUSTER_USER; default: admin]'
            cand --profile 'AWS profile for credentials (default: the AWS default chain)'
            cand --token-expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --format 'Output format for data on stdout'
            cand --admin 'Sign a DbConnectAdmin token whatever the user'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;refresh-demo'= {
            cand --interval 'Time between refreshes [default: the refresh interval]'
            cand --duration 'Stop after this long [default: until Ctrl-C]'
            cand --refreshes 'Stop after this many refreshes [default: until Ctrl-C]'
            cand --workers 'Tasks querying continuously through the pool'
            cand --refresh-interval 'Refresh period: seconds (as the Go example''s variable) or humantime'
            cand --endpoint 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --hostname 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --region 'AWS region [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]'
            cand --user 'Database role [env: DB_USER, CLUSTER_USER; default: admin]'
            cand --profile 'AWS profile for credentials (default: the AWS default chain)'
            cand --token-expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --host 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)'
            cand --port 'Port to connect to'
            cand --database 'Database name (DSQL has only `postgres`)'
            cand --sslmode 'TLS mode'
            cand --ca-file 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots'
            cand --ssl-negotiation 'How TLS is negotiated'
            cand --max-conns 'Maximum connections in the pool'
            cand --min-idle 'Idle connections the pool keeps open'
            cand --max-lifetime 'Close connections older than this (must stay below DSQL''s 60-minute limit)'
            cand --idle-timeout 'Close connections idle longer than this'
            cand --connect-timeout 'Give up on a new connection (token, TCP, TLS, auth) after this long'
            cand --format 'Output format for data on stdout'
            cand --refresh 'Refresh tokens and replace connections periodically'
            cand --local 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
            cand --iam 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
            cand --no-iam 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;local'= {
            cand --listen 'Address to listen on for TLS clients'
            cand --port 'Port to listen on, overriding the one in --listen (0 picks a free port)'
            cand --data-dir 'Directory for the PostgreSQL cluster, CA and credentials (default: a fresh temp dir)'
            cand --hostname 'Host name clients sign tokens for'
            cand --region 'Region clients sign tokens for'
            cand --access-key-id 'Access key id to accept (default: generated and kept in the data dir)'
            cand --secret-access-key 'Secret access key to accept (default: generated and kept in the data dir)'
            cand --max-connection-age 'Close client connections older than this, as DSQL does at one hour'
            cand --max-connections 'Refuse connections beyond this many (SQLSTATE 53300)'
            cand --rate 'New connections per second before refusing (SQLSTATE 53400)'
            cand --burst 'Burst of new connections allowed above the rate'
            cand --format 'Output format for data on stdout'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;bench'= {
            cand --clients 'Tasks querying concurrently, each checking a connection out of the pool per query'
            cand --duration 'How long to measure, after the warm-up'
            cand --warmup 'How long to run before measuring (statements prepared, caches warm); `0s` for none'
            cand --refresh-every 'Refresh tokens and replace every connection this often while measuring'
            cand --endpoint 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --hostname 'Cluster endpoint to sign for, or a bare 26-character cluster id'
            cand --region 'AWS region [env: REGION, AWS_REGION, AWS_DEFAULT_REGION; default: parsed from the endpoint]'
            cand --user 'Database role [env: DB_USER, CLUSTER_USER; default: admin]'
            cand --profile 'AWS profile for credentials (default: the AWS default chain)'
            cand --token-expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --expires-in 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week'
            cand --host 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)'
            cand --port 'Port to connect to'
            cand --database 'Database name (DSQL has only `postgres`)'
            cand --sslmode 'TLS mode'
            cand --ca-file 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots'
            cand --ssl-negotiation 'How TLS is negotiated'
            cand --max-conns 'Maximum connections in the pool'
            cand --min-idle 'Idle connections the pool keeps open'
            cand --max-lifetime 'Close connections older than this (must stay below DSQL''s 60-minute limit)'
            cand --idle-timeout 'Close connections idle longer than this'
            cand --connect-timeout 'Give up on a new connection (token, TCP, TLS, auth) after this long'
            cand --format 'Output format for data on stdout'
            cand --local 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)'
            cand --iam 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]'
            cand --no-iam 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;completions'= {
            cand --format 'Output format for data on stdout'
            cand --no-header 'Omit the header row in csv and tsv output'
            cand -v 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand --verbose 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides'
            cand -q 'Print results only: no statistics or notices on stderr, errors still shown'
            cand --quiet 'Print results only: no statistics or notices on stderr, errors still shown'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'dsql-pgx;help'= {
            cand query 'Run SQL with tokens handled and print the results'
            cand connect 'Open the pool and show each connection''s session ID, TLS and timing'
            cand token 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`'
            cand refresh-demo 'Show that a token refresh replaces every connection while queries keep succeeding'
            cand local 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL'
            cand bench 'Measure throughput and latency of one statement through the pool'
            cand completions 'Print a shell completion script'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'dsql-pgx;help;query'= {
        }
        &'dsql-pgx;help;connect'= {
        }
        &'dsql-pgx;help;token'= {
        }
        &'dsql-pgx;help;refresh-demo'= {
        }
        &'dsql-pgx;help;local'= {
        }
        &'dsql-pgx;help;bench'= {
        }
        &'dsql-pgx;help;completions'= {
        }
        &'dsql-pgx;help;help'= {
        }
    ]
    $completions[$command]
}
