//! The committed completion scripts are exactly what the code generates.

mod common;

use clap_complete::Shell;
use dsql_pgx::cmd::completions::{file_name, script};

const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

#[test]
fn committed_completions_are_in_sync() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("completions");
    for shell in SHELLS {
        let path = dir.join(file_name(shell));
        let generated = script(shell);
        if std::env::var_os("UPDATE_COMPLETIONS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `UPDATE_COMPLETIONS=1 cargo test --test completions`",
            path.display()
        );
    }
}

#[test]
fn the_binary_prints_the_same_scripts() {
    for shell in SHELLS {
        let out = common::dsql::dsql_pgx()
            .args(["completions", &shell.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, script(shell), "{shell}");
    }
}
