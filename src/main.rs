//! The `dsql-pgx` binary: parse arguments, run, report the error once, exit.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match dsql_pgx::cli::Cli::parse_env() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            // Help and version go to stdout with 0. A bare `dsql-pgx` shows the help on
            // stderr with 2; every other usage error is one `dsql-pgx: error: ...` line.
            if !error.use_stderr() {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = error.print();
            } else {
                let args: Vec<String> = std::env::args_os()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                let line = dsql_pgx::exit::usage_line(&error, &dsql_pgx::cli::command(), &args);
                dsql_pgx::exit::eprint(format_args!("dsql-pgx: error: {line}\n"));
            }
            return dsql_pgx::exit::Exit::Usage.into();
        }
    };
    match dsql_pgx::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => dsql_pgx::exit::report(&error).into(),
    }
}
