use std::{io::Write, process::ExitCode};

use clap::Parser;
use profiler_user::{
    cli::{
        args::{Cli, Command, DaemonArgs, SelectArgs},
        run,
    },
    daemon,
    export::{html, json},
    printable::escape,
};

/// Exit statuses (the README's "Exit codes" lists them).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    profiler_user::memory::one_arena();
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == profiler_user::cli::args::ASSETS_ARG)
    {
        return write_assets(args.next());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json_errors = match &cli.command {
        None => cli.json,
        Some(Command::Episodes(args)) => args.json,
        Some(_) => false,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &format!("starting the async runtime failed: {e}"),
                json_errors,
            )
        }
    };
    let result: Result<(), anyhow::Error> = match cli.command {
        Some(Command::Daemon(args)) => {
            daemon::logging::init();
            // The daemon's errors already name their causes in their message;
            // one line, so the journal keeps it as one entry (TOML errors are
            // multi-line drawings).
            runtime
                .block_on(daemon::run(daemon_settings(args)))
                .map_err(|e| anyhow::anyhow!("{}", one_line(&e.to_string())))
        }
        Some(Command::Report(args)) => {
            let now = std::time::SystemTime::now();
            html::write_report(&args.select.dir, &filter(&args.select), &args.output, now)
                .map(|n| eprintln!("loopbpf: {n} episodes -> {}", args.output.display()))
                .map_err(Into::into)
        }
        Some(Command::Episodes(args)) => {
            let filter = html::Filter {
                lines: args.json,
                ..filter(&args.select)
            };
            html::read(&args.select.dir, &filter, std::time::SystemTime::now())
                .map(|e| {
                    let text = if args.json {
                        episode_lines(&e)
                    } else {
                        html::table(&e)
                    };
                    // A closed stdout (`loopbpf episodes | head`) is not an error.
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                })
                .map_err(Into::into)
        }
        None => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
                .format(|buf, record| {
                    // Names from watched processes go raw to no terminal.
                    let message = record.args().to_string();
                    writeln!(
                        buf,
                        "[{} {}] {}",
                        record.level(),
                        record.target(),
                        escape(&message)
                    )
                })
                .init();
            let settings = run::Settings {
                pids: cli.pids,
                threshold: cli.threshold,
                frequency_hz: cli.frequency,
                duration: cli.duration,
                output: cli.output,
                formats: cli.formats,
                json: cli.json,
                force: cli.force,
                threadpool: !cli.no_threadpool,
            };
            runtime.block_on(run::run(settings)).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = e
                .chain()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(": ");
            fail(&message, json_errors)
        }
    }
}

/// One line on stderr, and in `--json` mode one `error` line last on
/// stdout, where the reader of the lines is; exits 1.
fn fail(message: &str, json_mode: bool) -> ExitCode {
    if json_mode {
        let line = json::error(message, EXIT_FAILED).to_json();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    eprintln!("loopbpf: {}", escape(message));
    ExitCode::from(EXIT_FAILED)
}

/// clap's message on stderr as usual; with `--json` among the arguments
/// also one `error` line on stdout. Help and version are not errors.
fn usage_error(e: clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().skip(1).any(|a| a == "--json") {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        let message = first.strip_prefix("error: ").unwrap_or(first);
        let line = json::error(message, EXIT_USAGE).to_json();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
    let _ = e.print();
    ExitCode::from(EXIT_USAGE)
}

fn write_assets(dir: Option<std::ffi::OsString>) -> ExitCode {
    let Some(dir) = dir.map(std::path::PathBuf::from) else {
        eprintln!(
            "loopbpf: usage: loopbpf {} DIR",
            profiler_user::cli::args::ASSETS_ARG
        );
        return ExitCode::FAILURE;
    };
    match profiler_user::cli::args::write_assets(&dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "loopbpf: writing man pages and completions to {} failed: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn filter(s: &SelectArgs) -> html::Filter {
    html::Filter {
        since: s.since,
        pids: s.pids.clone(),
        lines: false,
    }
}

/// `loopbpf episodes --json`: each record as a line of the contract, then a
/// warning line saying what was left out, if anything was.
fn episode_lines(e: &html::Episodes) -> String {
    let mut out = String::new();
    let mut other_version = 0;
    for r in &e.episodes {
        match &r.line {
            Some(line) => {
                out.push_str(line);
                out.push('\n');
            }
            None => other_version += 1,
        }
    }
    if other_version > 0 || e.malformed_lines > 0 {
        let message = format!(
            "{}: {other_version} records of another schema version and {} malformed index lines left out",
            e.dir.display(),
            e.malformed_lines
        );
        out.push_str(&json::warning(None, &message).to_json());
        out.push('\n');
    }
    out
}

fn daemon_settings(a: DaemonArgs) -> daemon::Settings {
    daemon::Settings {
        config: a.config,
        threshold: a.threshold,
        frequency_hz: a.frequency,
        state_dir: a.state_dir,
        metrics_address: a.metrics_address,
        formats: a.formats,
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.trim()
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '|' || c == ' ')
        })
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}
