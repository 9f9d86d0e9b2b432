//! Command line of `loopbpf`.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::export::{FileFormat, DEFAULT_FORMATS};

/// Why was my Node.js event loop blocked? Measures every event-loop iteration of
/// running Node processes from the kernel (no inspector, flag or restart) and,
/// for each iteration busy longer than --threshold, prints an episode and
/// writes its stacks as a folded file (flamegraph.pl, inferno, speedscope).
///
/// JavaScript frames are named when node runs with --perf-basic-prof-only-functions
/// (add --interpreted-frames-native-stack for interpreted functions); without
/// them episodes are still reported, with native frames only.
///
/// Needs root (CAP_BPF and CAP_PERFMON) and a kernel with BTF. The syscall
/// probes are fentry/fexit on the epoll syscall handlers where the kernel
/// allows ftrace hooks, else per-syscall tracepoints, found through tracefs
/// (mounted at /sys/kernel/tracing if needed); without it loopbpf falls back
/// to tp_btf probes that cost every syscall on the host more, and warns.
/// LOOPBPF_SYSCALL_PROBES=auto|fentry|tracepoint|tp_btf chooses.
#[derive(Debug, Parser)]
#[command(name = "loopbpf", version, after_help = EXAMPLES)]
// `--pid` is required for a session, not with a subcommand.
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Node process to watch (repeat for several).
    #[arg(long = "pid", short = 'p', required = true, value_name = "PID")]
    pub pids: Vec<u32>,

    /// Report iterations busy at least this long (e.g. 50ms, 1s). The default,
    /// 50ms, is a stall users feel: every request queued behind it waits that
    /// long, and it is 5x the 10ms a healthy loop rarely exceeds.
    #[arg(long, short = 't', default_value = "50ms", value_parser = parse_threshold, value_name = "DURATION")]
    pub threshold: Duration,

    /// Stack samples per second of each busy loop thread. 199 gives ~10 samples
    /// in a 50ms episode; an odd rate avoids lockstep with timers. 0 disables
    /// stacks (episodes are still timed).
    #[arg(long, short = 'F', default_value = "199", value_parser = parse_frequency, value_name = "HZ")]
    pub frequency: u64,

    /// Stop after this long (e.g. 30s, 5m); by default run until Ctrl-C,
    /// SIGTERM, or every watched process has exited.
    #[arg(long, short = 'd', value_parser = parse_run_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,

    /// Directory for the stack files of each episode, named
    /// PID-TID-STARTNS.EXT so episodes never overwrite each other.
    #[arg(long, short = 'o', default_value = "loopbpf-out", value_name = "DIR")]
    pub output: PathBuf,

    /// Stack files written per episode, comma-separated: folded (flamegraph
    /// tools), svg (a flamegraph to open in a browser), pprof (.pb.gz, for
    /// go tool pprof, Parca, Pyroscope).
    #[arg(long, value_enum, value_delimiter = ',', default_value = DEFAULT_FORMATS, value_name = "LIST")]
    pub formats: Vec<FileFormat>,

    /// One JSON object per line on stdout (types: ready, episode, warning, summary).
    #[arg(long)]
    pub json: bool,

    /// Watch the process even if it does not look like Node (any libuv program).
    #[arg(long)]
    pub force: bool,

    /// Do not attach the libuv threadpool uprobes: no threadpool utilization,
    /// saturation or queue wait, and no uprobe cost on each fs/crypto/zlib/dns
    /// work item (a few microseconds each; see the README).
    #[arg(long)]
    pub no_threadpool: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Always-on service: watch every Node process on the host (found at start
    /// and from the kernel's exec events), serve Prometheus metrics and keep
    /// episodes in a state directory. SIGHUP reloads the config, SIGTERM stops.
    Daemon(DaemonArgs),
    /// Write one self-contained HTML page of the episodes in a `--pid` output
    /// directory or the daemon's state directory: a timeline per process and
    /// thread, the busy-time histogram, each episode's verdict, where the
    /// time went and its flamegraph, threadpool saturations.
    Report(ReportArgs),
    /// List the episodes of an output or state directory in the terminal.
    Episodes(EpisodesArgs),
}

#[derive(Debug, clap::Args)]
pub struct SelectArgs {
    /// A `--pid` output directory or the daemon's state directory.
    #[arg(default_value = "loopbpf-out", value_name = "DIR")]
    pub dir: PathBuf,
    /// Only episodes that started within this long (e.g. 1h, 30m).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub since: Option<Duration>,
    /// Only this process's episodes (repeat for several).
    #[arg(long = "pid", short = 'p', value_name = "PID")]
    pub pids: Vec<u32>,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// The HTML file to write.
    #[arg(
        long,
        short = 'o',
        default_value = "loopbpf-report.html",
        value_name = "FILE"
    )]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct EpisodesArgs {
    #[command(flatten)]
    pub select: SelectArgs,
    /// One JSON line per episode, as `--pid --json` prints them (records of
    /// older versions are left out and counted in a warning line).
    #[arg(long)]
    pub json: bool,
}

/// `loopbpf __assets DIR` writes the man pages and completions (packaging:
/// `cargo xtask dist`). Not a clap subcommand: clap_complete would offer it.
pub const ASSETS_ARG: &str = "__assets";

/// `loopbpf.1`, `loopbpf-daemon.1`, and completions for bash, zsh and fish
/// (`loopbpf.bash`, `_loopbpf`, `loopbpf.fish`) in `dir`.
pub fn write_assets(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = Vec::new();
    let daemon = cmd
        .find_subcommand("daemon")
        .cloned()
        .map(|d| d.name("loopbpf-daemon"));
    for (page, name) in [
        (Some(cmd.clone()), "loopbpf.1"),
        (daemon, "loopbpf-daemon.1"),
    ] {
        let Some(page) = page else { continue };
        let path = dir.join(name);
        let mut out = std::fs::File::create(&path)?;
        clap_mangen::Man::new(page).render(&mut out)?;
        written.push(path);
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "loopbpf", dir)?;
        written.push(path);
    }
    Ok(written)
}

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration (see dist/loopbpf.toml); a missing file at the
    /// default path means all defaults.
    #[arg(
        long,
        short = 'c',
        default_value = "/etc/loopbpf/loopbpf.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Overrides `threshold` in the file.
    #[arg(long, short = 't', value_parser = parse_threshold, value_name = "DURATION")]
    pub threshold: Option<Duration>,
    /// Overrides `frequency` in the file.
    #[arg(long, short = 'F', value_parser = parse_frequency, value_name = "HZ")]
    pub frequency: Option<u64>,
    /// Overrides `state_dir` in the file.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Overrides `metrics_address` in the file (e.g. 127.0.0.1:9569).
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,
    /// Stack files stored per episode: folded, svg, pprof (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = DEFAULT_FORMATS, value_name = "LIST")]
    pub formats: Vec<FileFormat>,
}

const EXAMPLES: &str = "Examples:
  sudo loopbpf --pid 4242                      # report stalls over 50ms until Ctrl-C
  sudo loopbpf -p 4242 -t 200ms -d 10m --json  # JSON lines for 10 minutes
  sudo loopbpf daemon --config /etc/loopbpf/loopbpf.toml  # the always-on service
  sudo loopbpf -p 4242 --formats folded,svg,pprof  # also a pprof profile per episode
  loopbpf report /var/lib/loopbpf --since 1h -o stalls.html  # one HTML page to look at
  loopbpf episodes loopbpf-out                 # the episodes, one line each
  go tool pprof -top loopbpf-out/4242-4242-123456789.pb.gz

Start node with --perf-basic-prof-only-functions --interpreted-frames-native-stack
to see JavaScript function names.";

/// Thresholds outside this range are refused: below 1 ms every iteration of a
/// busy server is an episode (a flood of records), above an hour nothing is.
pub const THRESHOLD_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Stack samples per second: 0 (none) up to what perf's default
/// `perf_event_max_sample_rate` still grants per CPU without throttling.
pub const MAX_FREQUENCY_HZ: u64 = 10_000;

/// Durations, the same grammar in every flag and the config file: a number and
/// a unit, optionally repeated (`50ms`, `1s`, `1h30m`, `250us`, `7d`). Parsed by
/// humantime: no sign, no fraction, no NaN or infinity, overflow is an error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration ({e}; e.g. 50ms, 1s, 1h30m, 7d)"))
}

/// `value` if it lies within `[lo, hi]`, else an error naming the range.
pub fn in_range(value: Duration, lo: Duration, hi: Duration) -> Result<Duration, String> {
    if value < lo || value > hi {
        return Err(format!(
            "{} is out of range ({} to {})",
            humantime::format_duration(value),
            humantime::format_duration(lo),
            humantime::format_duration(hi)
        ));
    }
    Ok(value)
}

/// A threshold: a duration within [`THRESHOLD_RANGE`].
pub fn parse_threshold(s: &str) -> Result<Duration, String> {
    in_range(parse_duration(s)?, THRESHOLD_RANGE.0, THRESHOLD_RANGE.1)
}

/// `--duration`: at least 1 ms (0 would stop before anything was measured).
fn parse_run_duration(s: &str) -> Result<Duration, String> {
    in_range(parse_duration(s)?, Duration::from_millis(1), Duration::MAX)
}

/// A sampling frequency in `0..=MAX_FREQUENCY_HZ`.
pub fn check_frequency(hz: u64) -> Result<u64, String> {
    if hz > MAX_FREQUENCY_HZ {
        return Err(format!("{hz} Hz is out of range (0 to {MAX_FREQUENCY_HZ})"));
    }
    Ok(hz)
}

fn parse_frequency(s: &str) -> Result<u64, String> {
    let hz = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("'{s}' is not a whole number of samples per second"))?;
    check_frequency(hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn bare_numbers_and_unknown_units_are_refused() {
        assert!(parse_duration("50").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    /// These panicked in `Duration::from_secs_f64` (issue 11).
    #[test]
    fn hostile_durations_are_errors_not_panics() {
        for s in [
            "-1d",
            "nand",
            "infd",
            "1e20d",
            "-5ms",
            "NaNms",
            "inf",
            "99999999999999999999999d",
        ] {
            let e = parse_duration(s).unwrap_err();
            assert!(e.contains(s), "{e}");
        }
    }

    #[test]
    fn thresholds_and_frequencies_are_range_checked() {
        assert_eq!(parse_threshold("10ms"), Ok(Duration::from_millis(10)));
        assert!(parse_threshold("0ms").unwrap_err().contains("out of range"));
        assert!(parse_threshold("2h").unwrap_err().contains("out of range"));
        assert!(parse_frequency("999").is_ok());
        assert!(parse_frequency("0").is_ok());
        assert!(parse_frequency("1000000")
            .unwrap_err()
            .contains("out of range"));
        assert!(Cli::try_parse_from(["loopbpf", "-p", "1", "-t", "1e20d"]).is_err());
        assert!(Cli::try_parse_from(["loopbpf", "-p", "1", "-d", "0s"]).is_err());
        let cli = Cli::try_parse_from(["loopbpf", "-p", "1", "-t", "1h30m"]);
        assert!(cli.is_err(), "1h30m is above the 1 h cap");
        let cli = Cli::try_parse_from(["loopbpf", "-p", "1", "-d", "1h30m"]).unwrap();
        assert_eq!(cli.duration, Some(Duration::from_secs(5400)));
    }

    #[test]
    fn help_describes_every_option() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for opt in [
            "--pid",
            "--threshold",
            "--frequency",
            "--duration",
            "--output",
            "--json",
            "--formats",
        ] {
            assert!(help.contains(opt), "--help lacks {opt}");
        }
    }

    #[test]
    fn man_pages_and_completions_are_generated() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_assets(dir.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "loopbpf.1",
                "loopbpf-daemon.1",
                "loopbpf.bash",
                "_loopbpf",
                "loopbpf.fish"
            ]
        );
        let man = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            man.contains(".TH loopbpf") && man.contains("threshold"),
            "{man}"
        );
        let bash = std::fs::read_to_string(&files[2]).unwrap();
        assert!(
            bash.contains("--threshold") && !bash.contains(ASSETS_ARG),
            "{bash}"
        );
    }

    #[test]
    fn formats_are_a_comma_separated_choice() {
        let cli = Cli::try_parse_from(["loopbpf", "-p", "1"]).unwrap();
        assert_eq!(cli.formats, [FileFormat::Folded, FileFormat::Svg]);
        let cli = Cli::try_parse_from(["loopbpf", "-p", "1", "--formats", "pprof,svg"]).unwrap();
        assert_eq!(cli.formats, [FileFormat::Pprof, FileFormat::Svg]);
        let err = Cli::try_parse_from(["loopbpf", "-p", "1", "--formats", "png"]).unwrap_err();
        assert!(err.to_string().contains("png"), "{err}");
    }

    #[test]
    fn pid_is_required_unless_daemon() {
        assert!(Cli::try_parse_from(["loopbpf"]).is_err());
        let cli = Cli::try_parse_from(["loopbpf", "-p", "1", "-t", "10ms"]).unwrap();
        assert_eq!((cli.pids, cli.command.is_none()), (vec![1], true));
        let cli = Cli::try_parse_from(["loopbpf", "daemon", "--config", "/x.toml"]).unwrap();
        let Some(Command::Daemon(d)) = cli.command else {
            panic!("not daemon")
        };
        assert_eq!(d.config, PathBuf::from("/x.toml"));
    }
}
