//! The `dsql-pgx` binary: parse arguments, run, report the error once, exit.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match dsql_pgx::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2, in the
            // same `dsql-pgx: error: ...` form as every other error.
            if !error.use_stderr() {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            eprint!("dsql-pgx: {}", error.render());
            return dsql_pgx::exit::Exit::Usage.into();
        }
    };
    match dsql_pgx::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => dsql_pgx::exit::report(&error).into(),
    }
}
