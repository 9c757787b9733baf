
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'dsql-pgx' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'dsql-pgx'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'dsql-pgx' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('query', 'query', [CompletionResultType]::ParameterValue, 'Run SQL with tokens handled and print the results')
            [CompletionResult]::new('connect', 'connect', [CompletionResultType]::ParameterValue, 'Open the pool and show each connection''s session ID, TLS and timing')
            [CompletionResult]::new('token', 'token', [CompletionResultType]::ParameterValue, 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`')
            [CompletionResult]::new('refresh-demo', 'refresh-demo', [CompletionResultType]::ParameterValue, 'Show that a token refresh replaces every connection while queries keep succeeding')
            [CompletionResult]::new('local', 'local', [CompletionResultType]::ParameterValue, 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure throughput and latency of one statement through the pool')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'dsql-pgx;query' {
            [CompletionResult]::new('-f', '-f', [CompletionResultType]::ParameterName, 'Read SQL from a file')
            [CompletionResult]::new('--file', '--file', [CompletionResultType]::ParameterName, 'Read SQL from a file')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of the results on stdout')
            [CompletionResult]::new('--retries', '--retries', [CompletionResultType]::ParameterName, 'Retries after an optimistic-concurrency conflict (SQLSTATE 40001, OC000, OC001)')
            [CompletionResult]::new('--retry-base', '--retry-base', [CompletionResultType]::ParameterName, 'Backoff ceiling of the first retry; doubles each retry, with full jitter')
            [CompletionResult]::new('--retry-max', '--retry-max', [CompletionResultType]::ParameterName, 'Largest backoff ceiling')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Database role [env: DB_USER, CLUSTER_USER; default: admin]')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'AWS profile for credentials (default: the AWS default chain)')
            [CompletionResult]::new('--token-expires-in', '--token-expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--expires-in', '--expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to connect to')
            [CompletionResult]::new('--database', '--database', [CompletionResultType]::ParameterName, 'Database name (DSQL has only `postgres`)')
            [CompletionResult]::new('--ca-file', '--ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots')
            [CompletionResult]::new('--sslmode', '--sslmode', [CompletionResultType]::ParameterName, 'TLS mode')
            [CompletionResult]::new('--ssl-negotiation', '--ssl-negotiation', [CompletionResultType]::ParameterName, 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]')
            [CompletionResult]::new('--max-conns', '--max-conns', [CompletionResultType]::ParameterName, 'Maximum connections in the pool')
            [CompletionResult]::new('--min-idle', '--min-idle', [CompletionResultType]::ParameterName, 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]')
            [CompletionResult]::new('--max-lifetime', '--max-lifetime', [CompletionResultType]::ParameterName, 'Close connections older than this (must stay below DSQL''s 60-minute limit)')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Close connections idle longer than this')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up on a new connection (token, TCP, TLS, auth) after this long')
            [CompletionResult]::new('--transaction', '--transaction', [CompletionResultType]::ParameterName, 'Run all statements in one transaction (BEGIN ... COMMIT), retried as a whole')
            [CompletionResult]::new('-x', '-x', [CompletionResultType]::ParameterName, 'Print each row as a record of `column | value` lines, as psql''s `\x` does')
            [CompletionResult]::new('--expanded', '--expanded', [CompletionResultType]::ParameterName, 'Print each row as a record of `column | value` lines, as psql''s `\x` does')
            [CompletionResult]::new('--no-header', '--no-header', [CompletionResultType]::ParameterName, 'Omit the header row in csv and tsv output')
            [CompletionResult]::new('--no-retry', '--no-retry', [CompletionResultType]::ParameterName, 'Never retry conflicts')
            [CompletionResult]::new('--local', '--local', [CompletionResultType]::ParameterName, 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)')
            [CompletionResult]::new('--iam', '--iam', [CompletionResultType]::ParameterName, 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]')
            [CompletionResult]::new('--no-iam', '--no-iam', [CompletionResultType]::ParameterName, 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;connect' {
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'Connections to open at once (default: --min-idle, at least 1)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of the report on stdout')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Database role [env: DB_USER, CLUSTER_USER; default: admin]')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'AWS profile for credentials (default: the AWS default chain)')
            [CompletionResult]::new('--token-expires-in', '--token-expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--expires-in', '--expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to connect to')
            [CompletionResult]::new('--database', '--database', [CompletionResultType]::ParameterName, 'Database name (DSQL has only `postgres`)')
            [CompletionResult]::new('--ca-file', '--ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots')
            [CompletionResult]::new('--sslmode', '--sslmode', [CompletionResultType]::ParameterName, 'TLS mode')
            [CompletionResult]::new('--ssl-negotiation', '--ssl-negotiation', [CompletionResultType]::ParameterName, 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]')
            [CompletionResult]::new('--max-conns', '--max-conns', [CompletionResultType]::ParameterName, 'Maximum connections in the pool')
            [CompletionResult]::new('--min-idle', '--min-idle', [CompletionResultType]::ParameterName, 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]')
            [CompletionResult]::new('--max-lifetime', '--max-lifetime', [CompletionResultType]::ParameterName, 'Close connections older than this (must stay below DSQL''s 60-minute limit)')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Close connections idle longer than this')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up on a new connection (token, TCP, TLS, auth) after this long')
            [CompletionResult]::new('--local', '--local', [CompletionResultType]::ParameterName, 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)')
            [CompletionResult]::new('--iam', '--iam', [CompletionResultType]::ParameterName, 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]')
            [CompletionResult]::new('--no-iam', '--no-iam', [CompletionResultType]::ParameterName, 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;token' {
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of the output: the token (or URL) alone, or JSON with its hostname, region, action and expiry')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Database role [env: DB_USER, CLUSTER_USER; default: admin]')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'AWS profile for credentials (default: the AWS default chain)')
            [CompletionResult]::new('--token-expires-in', '--token-expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--expires-in', '--expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to connect to')
            [CompletionResult]::new('--database', '--database', [CompletionResultType]::ParameterName, 'Database name (DSQL has only `postgres`)')
            [CompletionResult]::new('--ca-file', '--ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots')
            [CompletionResult]::new('--admin', '--admin', [CompletionResultType]::ParameterName, 'Sign a DbConnectAdmin token whatever the user')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'Print a libpq connection URL instead, the token as its password (percent-encoded): `psql "$(dsql-pgx token --url)"`')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;refresh-demo' {
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'Time between refreshes [default: the refresh interval]')
            [CompletionResult]::new('--duration', '--duration', [CompletionResultType]::ParameterName, 'Stop after this long [default: until Ctrl-C or SIGTERM]')
            [CompletionResult]::new('--refreshes', '--refreshes', [CompletionResultType]::ParameterName, 'Stop after this many refreshes [default: until Ctrl-C or SIGTERM]')
            [CompletionResult]::new('--workers', '--workers', [CompletionResultType]::ParameterName, 'Tasks querying continuously through the pool')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of the output on stdout')
            [CompletionResult]::new('--refresh', '--refresh', [CompletionResultType]::ParameterName, 'Refresh tokens and replace connections periodically (`--refresh false` to turn off)')
            [CompletionResult]::new('--refresh-interval', '--refresh-interval', [CompletionResultType]::ParameterName, 'Refresh period: humantime (`15m`, `1h`) or bare seconds (`900`)')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Database role [env: DB_USER, CLUSTER_USER; default: admin]')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'AWS profile for credentials (default: the AWS default chain)')
            [CompletionResult]::new('--token-expires-in', '--token-expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--expires-in', '--expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to connect to')
            [CompletionResult]::new('--database', '--database', [CompletionResultType]::ParameterName, 'Database name (DSQL has only `postgres`)')
            [CompletionResult]::new('--ca-file', '--ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots')
            [CompletionResult]::new('--sslmode', '--sslmode', [CompletionResultType]::ParameterName, 'TLS mode')
            [CompletionResult]::new('--ssl-negotiation', '--ssl-negotiation', [CompletionResultType]::ParameterName, 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]')
            [CompletionResult]::new('--max-conns', '--max-conns', [CompletionResultType]::ParameterName, 'Maximum connections in the pool')
            [CompletionResult]::new('--min-idle', '--min-idle', [CompletionResultType]::ParameterName, 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]')
            [CompletionResult]::new('--max-lifetime', '--max-lifetime', [CompletionResultType]::ParameterName, 'Close connections older than this (must stay below DSQL''s 60-minute limit)')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Close connections idle longer than this')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up on a new connection (token, TCP, TLS, auth) after this long')
            [CompletionResult]::new('--local', '--local', [CompletionResultType]::ParameterName, 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)')
            [CompletionResult]::new('--iam', '--iam', [CompletionResultType]::ParameterName, 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]')
            [CompletionResult]::new('--no-iam', '--no-iam', [CompletionResultType]::ParameterName, 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;local' {
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on for TLS clients')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to listen on, overriding the one in --listen (0 picks a free port)')
            [CompletionResult]::new('--data-dir', '--data-dir', [CompletionResultType]::ParameterName, 'Directory for the PostgreSQL cluster, CA and credentials (default: a fresh temp dir)')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Host name clients sign tokens for and send as TLS SNI')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'Region clients sign tokens for')
            [CompletionResult]::new('--access-key-id', '--access-key-id', [CompletionResultType]::ParameterName, 'Access key id to accept (default: generated and kept in the data dir)')
            [CompletionResult]::new('--secret-access-key', '--secret-access-key', [CompletionResultType]::ParameterName, 'Secret access key to accept (default: generated and kept in the data dir)')
            [CompletionResult]::new('--secret-access-key-file', '--secret-access-key-file', [CompletionResultType]::ParameterName, 'Read the secret access key from this file (yours, mode 0600, not a symbolic link)')
            [CompletionResult]::new('--env-file', '--env-file', [CompletionResultType]::ParameterName, 'Write the exports to this file instead of stdout, once the endpoint accepts connections')
            [CompletionResult]::new('--dialect', '--dialect', [CompletionResultType]::ParameterName, 'SQL spoken behind IAM: DSQL''s (statements DSQL refuses are refused with its SQLSTATEs and words, CREATE INDEX ASYNC builds in the background), or plain PostgreSQL')
            [CompletionResult]::new('--max-transaction-age', '--max-transaction-age', [CompletionResultType]::ParameterName, 'Fail transactions older than this, as DSQL does at 5 minutes (with --dialect dsql)')
            [CompletionResult]::new('--iam-arn', '--iam-arn', [CompletionResultType]::ParameterName, 'The IAM identity the endpoint''s keys stand for (exported as DSQL_IAM_ARN)')
            [CompletionResult]::new('--max-connection-age', '--max-connection-age', [CompletionResultType]::ParameterName, 'Close client connections older than this, as DSQL does at one hour')
            [CompletionResult]::new('--max-connections', '--max-connections', [CompletionResultType]::ParameterName, 'Refuse connections beyond this many (SQLSTATE 53300)')
            [CompletionResult]::new('--rate', '--rate', [CompletionResultType]::ParameterName, 'New connections per second before refusing (SQLSTATE 53400)')
            [CompletionResult]::new('--burst', '--burst', [CompletionResultType]::ParameterName, 'Burst of new connections allowed above the rate')
            [CompletionResult]::new('--threads', '--threads', [CompletionResultType]::ParameterName, 'Runtime worker threads for TLS and relaying (0 = one per core)')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of what is printed once the endpoint is ready: `unset`/`export` lines for a shell to eval, or the same variables as one JSON object')
            [CompletionResult]::new('--persist', '--persist', [CompletionResultType]::ParameterName, 'Keep state in your own default data dir instead of a temp dir')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;bench' {
            [CompletionResult]::new('--clients', '--clients', [CompletionResultType]::ParameterName, 'Tasks querying concurrently, each checking a connection out of the pool per query')
            [CompletionResult]::new('--duration', '--duration', [CompletionResultType]::ParameterName, 'How long to measure, after the warm-up')
            [CompletionResult]::new('--warmup', '--warmup', [CompletionResultType]::ParameterName, 'How long to run before measuring (statements prepared, caches warm); `0s` for none')
            [CompletionResult]::new('--refresh-every', '--refresh-every', [CompletionResultType]::ParameterName, 'Refresh tokens and replace every connection this often while measuring')
            [CompletionResult]::new('--pipeline', '--pipeline', [CompletionResultType]::ParameterName, 'Queries each client keeps in flight on its connection (tokio-postgres pipelining)')
            [CompletionResult]::new('--threads', '--threads', [CompletionResultType]::ParameterName, 'Threads, as pgbench''s -j: each runs its share of the clients on a pool of its own, with no wake-ups crossing threads. 1 (the default) runs everything on one thread')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'Format of the report on stdout')
            [CompletionResult]::new('--endpoint', '--endpoint', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--hostname', '--hostname', [CompletionResultType]::ParameterName, 'Cluster endpoint to sign for, or a bare 26-character cluster id')
            [CompletionResult]::new('--region', '--region', [CompletionResultType]::ParameterName, 'AWS region to sign for [env: REGION; default: parsed from the endpoint, else AWS_REGION or AWS_DEFAULT_REGION]. Not needed with --no-iam')
            [CompletionResult]::new('--user', '--user', [CompletionResultType]::ParameterName, 'Database role [env: DB_USER, CLUSTER_USER; default: admin]')
            [CompletionResult]::new('--profile', '--profile', [CompletionResultType]::ParameterName, 'AWS profile for credentials (default: the AWS default chain)')
            [CompletionResult]::new('--token-expires-in', '--token-expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--expires-in', '--expires-in', [CompletionResultType]::ParameterName, 'Token lifetime: humantime (`90s`, `15m`, `1h`) or bare seconds, 1 s to 1 week')
            [CompletionResult]::new('--host', '--host', [CompletionResultType]::ParameterName, 'Host to connect to, when it differs from the endpoint signed for (tunnels, PrivateLink)')
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'Port to connect to')
            [CompletionResult]::new('--database', '--database', [CompletionResultType]::ParameterName, 'Database name (DSQL has only `postgres`)')
            [CompletionResult]::new('--ca-file', '--ca-file', [CompletionResultType]::ParameterName, 'PEM file of CA certificates to trust instead of the Mozilla/webpki roots')
            [CompletionResult]::new('--sslmode', '--sslmode', [CompletionResultType]::ParameterName, 'TLS mode')
            [CompletionResult]::new('--ssl-negotiation', '--ssl-negotiation', [CompletionResultType]::ParameterName, 'How TLS is negotiated [default: direct for *.dsql.REGION.on.aws endpoints (and --local), postgres for other hosts]')
            [CompletionResult]::new('--max-conns', '--max-conns', [CompletionResultType]::ParameterName, 'Maximum connections in the pool')
            [CompletionResult]::new('--min-idle', '--min-idle', [CompletionResultType]::ParameterName, 'Idle connections the pool keeps open [default: 2, or --max-conns if that is less]')
            [CompletionResult]::new('--max-lifetime', '--max-lifetime', [CompletionResultType]::ParameterName, 'Close connections older than this (must stay below DSQL''s 60-minute limit)')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Close connections idle longer than this')
            [CompletionResult]::new('--connect-timeout', '--connect-timeout', [CompletionResultType]::ParameterName, 'Give up on a new connection (token, TCP, TLS, auth) after this long')
            [CompletionResult]::new('--local', '--local', [CompletionResultType]::ParameterName, 'Run against an ephemeral local endpoint (needs PostgreSQL server binaries)')
            [CompletionResult]::new('--iam', '--iam', [CompletionResultType]::ParameterName, 'Authenticate with IAM tokens: the default, DSQL accepts nothing else [env: DB_USE_IAM]')
            [CompletionResult]::new('--no-iam', '--no-iam', [CompletionResultType]::ParameterName, 'Use the password from PGPASSWORD instead of IAM tokens (plain PostgreSQL)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;completions' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more on stderr: `-v` timing and info, `-vv` debug tracing. RUST_LOG overrides')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print results only: no statistics or notices on stderr, errors still shown')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (a summary with -h)')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print the version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print the version')
            break
        }
        'dsql-pgx;help' {
            [CompletionResult]::new('query', 'query', [CompletionResultType]::ParameterValue, 'Run SQL with tokens handled and print the results')
            [CompletionResult]::new('connect', 'connect', [CompletionResultType]::ParameterValue, 'Open the pool and show each connection''s session ID, TLS and timing')
            [CompletionResult]::new('token', 'token', [CompletionResultType]::ParameterValue, 'Print an IAM auth token, for `PGPASSWORD=$(dsql-pgx token) psql ...`')
            [CompletionResult]::new('refresh-demo', 'refresh-demo', [CompletionResultType]::ParameterValue, 'Show that a token refresh replaces every connection while queries keep succeeding')
            [CompletionResult]::new('local', 'local', [CompletionResultType]::ParameterValue, 'Run a local DSQL-compatible endpoint that checks IAM tokens, in front of PostgreSQL')
            [CompletionResult]::new('bench', 'bench', [CompletionResultType]::ParameterValue, 'Measure throughput and latency of one statement through the pool')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'dsql-pgx;help;query' {
            break
        }
        'dsql-pgx;help;connect' {
            break
        }
        'dsql-pgx;help;token' {
            break
        }
        'dsql-pgx;help;refresh-demo' {
            break
        }
        'dsql-pgx;help;local' {
            break
        }
        'dsql-pgx;help;bench' {
            break
        }
        'dsql-pgx;help;completions' {
            break
        }
        'dsql-pgx;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
