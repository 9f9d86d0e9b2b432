use std::{io::Write, process::ExitCode};

use clap::Parser;
use profiler_user::{
    cli::{
        args::{Cli, Command, DaemonArgs, SelectArgs},
        run,
    },
    daemon,
    export::html,
    printable::escape,
};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|a| a == profiler_user::cli::args::ASSETS_ARG)
    {
        return write_assets(args.next());
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loopbpf: starting the async runtime failed: {e}");
            return ExitCode::FAILURE;
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
            html::read(
                &args.select.dir,
                &filter(&args.select),
                std::time::SystemTime::now(),
            )
            .map(|e| {
                // A closed stdout (`loopbpf episodes | head`) is not an error.
                use std::io::Write;
                let _ = std::io::stdout()
                    .lock()
                    .write_all(html::table(&e).as_bytes());
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
            eprintln!("loopbpf: {}", escape(&message));
            ExitCode::FAILURE
        }
    }
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
    }
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
