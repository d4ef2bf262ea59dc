//! Pier's dev-time tasks.
//!
//! ```text
//! cargo run -p xtask -- codegen [--spec PATH] [--check]
//! ```
//!
//! `codegen` reads RabbitMQ's machine-readable AMQP 0-9-1 spec (by default
//! `../shared/spec/amqp-rabbitmq-0.9.1.json` relative to the workspace root) and writes
//! `crates/pier-wire/src/generated.rs`: constants, reply codes, one struct per method, the
//! `Method` enum and its encode/decode. The output is piped through `rustfmt`. With `--check`
//! nothing is written; the command fails if the committed file differs from what would be
//! generated. The build itself never reads the spec: the generated file is committed.

mod codegen;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo run -p xtask -- codegen [--spec PATH] [--check]";

fn workspace_root() -> PathBuf {
    // xtask/ lives directly under the workspace root.
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.to_string());
    };
    match cmd.as_str() {
        "codegen" => {
            let root = workspace_root();
            let mut spec = root.join("../shared/spec/amqp-rabbitmq-0.9.1.json");
            let mut check = false;
            let mut it = rest.iter();
            while let Some(arg) = it.next() {
                match arg.as_str() {
                    "--check" => check = true,
                    "--spec" => {
                        let p = it.next().ok_or("--spec needs a path")?;
                        spec = PathBuf::from(p);
                    }
                    other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
                }
            }
            codegen::run(&root, &spec, check)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}
