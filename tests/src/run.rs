//! One test run: a Node script under loopbpf, from start to both exits.

use crate::container::ContainerRoot;
use crate::parse::{line_type, parse_folded, str_field, u64_field, Block, Episode, FoldedStack};
use crate::process::{tail, Process};
use crate::{
    default_syscall_probes, loopbpf_bin, node_for, speed_factor, timeout, PERF_MAP_FLAG,
    THRESHOLD_MS,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Script calibration and probe attachment each get this long.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// From `go` to the script's exit; the scripts take about 4 s.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// loopbpf must notice its only target is gone and exit by itself.
const EXIT_AFTER_TARGET: Duration = Duration::from_secs(10);

pub struct Scenario {
    major: u32,
    script: &'static str,
    node_flags: Vec<String>,
    /// SIGKILL Node once loopbpf prints a line of this type.
    kill_node_on: Option<&'static str>,
    /// Run Node pinned to this CPU (taskset).
    cpu: Option<u32>,
    /// Run Node in new pid and mount namespaces with a private /tmp, as in a
    /// container: its perf map is /tmp/perf-<its own pid>.map inside.
    contained: bool,
    /// Run Node chrooted into a directory of its own (see `container`); the
    /// function, if any, plants files in that root before loopbpf starts.
    chrooted: Option<Option<fn(&Path)>>,
    /// Run this node binary instead of the one for `major`.
    node_binary: Option<PathBuf>,
    /// Environment of loopbpf beyond ours.
    loopbpf_env: Vec<(String, String)>,
    /// Arguments of loopbpf after ours (e.g. `--formats`).
    loopbpf_args: Vec<String>,
    /// Environment of Node beyond ours.
    node_env: Vec<(String, String)>,
    /// Run loopbpf where tracefs is not mounted (see `without_tracefs`).
    without_tracefs: Option<Tracefs>,
    /// The `syscall_probes` its ready line must name.
    syscall_probes: &'static str,
    /// Puts something at /tmp/perf-<pid>.map once Node is ready and before
    /// loopbpf starts (see `perf_map_planted`).
    plant_perf_map: Option<fn(&Path)>,
    /// loopbpf's `--threshold`.
    threshold_ms: f64,
}

/// What loopbpf may do about a missing tracefs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracefs {
    /// Root with every capability: it can mount tracefs.
    Mountable,
    /// CAP_SYS_ADMIN dropped (as under the systemd unit): it cannot.
    NotMountable,
}

impl Scenario {
    /// `script` is a file of `tests/node/`.
    pub fn new(major: u32, script: &'static str) -> Self {
        let node_flags = [PERF_MAP_FLAG, "--interpreted-frames-native-stack"];
        Scenario {
            major,
            script,
            node_flags: node_flags.map(String::from).to_vec(),
            kill_node_on: None,
            cpu: None,
            contained: false,
            chrooted: None,
            node_binary: None,
            loopbpf_env: Vec::new(),
            loopbpf_args: Vec::new(),
            node_env: Vec::new(),
            without_tracefs: None,
            syscall_probes: default_syscall_probes(),
            plant_perf_map: None,
            threshold_ms: THRESHOLD_MS,
        }
    }

    /// Scales loopbpf's threshold and the script's block lengths by
    /// `speed_factor()` (node gets it as `LOOPBPF_TEST_SPEED_SCALE`): on a
    /// slow machine loop work around a block and cold code take that many
    /// times longer. The test scales its own bounds with it.
    pub fn speed_scaled(mut self) -> Self {
        let factor = speed_factor();
        self.threshold_ms = THRESHOLD_MS * factor;
        self.node_env("LOOPBPF_TEST_SPEED_SCALE", &factor.to_string())
    }

    /// An argument of loopbpf after the harness's own.
    pub fn loopbpf_arg(mut self, arg: &str) -> Self {
        self.loopbpf_args.push(arg.to_string());
        self
    }

    /// Node writes no perf map; `plant` puts whatever it likes (a FIFO, a
    /// symlink, a huge file) at its path before loopbpf starts, as a local
    /// user could. Removed afterwards.
    pub fn perf_map_planted(mut self, plant: fn(&Path)) -> Self {
        self.plant_perf_map = Some(plant);
        self.without_perf_map()
    }

    /// Set an environment variable of loopbpf (e.g. `LOOPBPF_SYSCALL_PROBES`).
    pub fn loopbpf_env(mut self, key: &str, value: &str) -> Self {
        self.loopbpf_env.push((key.to_string(), value.to_string()));
        self
    }

    /// Run loopbpf in a mount namespace of its own where tracefs is
    /// unmounted (the host's mounts are untouched).
    pub fn node_env(mut self, key: &str, value: &str) -> Self {
        self.node_env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn without_tracefs(mut self, tracefs: Tracefs) -> Self {
        self.without_tracefs = Some(tracefs);
        self
    }

    /// The syscall probes loopbpf must report in its ready line; by default
    /// `default_syscall_probes()`.
    pub fn expect_syscall_probes(mut self, probes: &'static str) -> Self {
        self.syscall_probes = probes;
        self
    }

    /// Run another build of node (e.g. a stripped copy) for `major`.
    pub fn node_binary(mut self, path: &Path) -> Self {
        self.node_binary = Some(path.to_path_buf());
        self
    }

    /// Run Node as in a container (see `contained`).
    pub fn contained(mut self) -> Self {
        self.contained = true;
        self
    }

    /// Run Node as in a container with its own root directory; `plant`
    /// puts files in that root (given as the host sees it) once Node is ready
    /// and before loopbpf starts.
    pub fn chrooted(mut self, plant: Option<fn(&Path)>) -> Self {
        self.chrooted = Some(plant);
        self
    }

    /// Add a Node (V8) flag, e.g. `--expose-gc`.
    pub fn node_flag(mut self, flag: &str) -> Self {
        self.node_flags.push(flag.to_string());
        self
    }

    /// Pin Node (and its children) to one CPU.
    pub fn pinned_to_cpu(mut self, cpu: u32) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Kill Node with SIGKILL as soon as loopbpf prints a line of type `kind`
    /// (a wedged process killed by its supervisor).
    pub fn kill_node_on(mut self, kind: &'static str) -> Self {
        self.kill_node_on = Some(kind);
        self
    }

    /// Start Node with no flags at all, as production runs it.
    pub fn without_node_flags(mut self) -> Self {
        self.node_flags.clear();
        self
    }

    /// Start Node without writing `/tmp/perf-<pid>.map`.
    pub fn without_perf_map(mut self) -> Self {
        self.node_flags.retain(|f| f != PERF_MAP_FLAG);
        self
    }

    /// Runs the script under loopbpf; panics, with everything both printed, if
    /// either fails to get through the protocol in time.
    pub fn run(self) -> Run {
        let bin = loopbpf_bin();
        let node = self
            .node_binary
            .clone()
            .unwrap_or_else(|| node_for(self.major));
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("node")
            .join(self.script);
        let output = tempdir("loopbpf-test-output-");
        // Node 24 writes isolate-*-v8.log into its working directory when
        // asked for a perf map.
        let cwd = tempdir("loopbpf-test-node-");

        let root = self.chrooted.map(|_| {
            let scripts = [self.script, "protocol.js"].map(|f| script.with_file_name(f));
            ContainerRoot::new(&scripts.each_ref().map(PathBuf::as_path))
        });
        let mut cmd = match (self.cpu, self.contained) {
            _ if root.is_some() => root.as_ref().expect("checked").command(&node),
            (Some(cpu), _) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&node);
                c
            }
            (None, true) => {
                // unshare forks; the child mounts its own /tmp and becomes node.
                // The scripts go in through the working directory: a checkout
                // under /tmp would be hidden by that mount, but /proc/self/cwd
                // still reaches the directory underneath.
                for file in [self.script, "protocol.js"] {
                    let from = script.with_file_name(file);
                    std::fs::copy(&from, cwd.path().join(file))
                        .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
                }
                let mut c = Command::new("unshare");
                c.args([
                    "--pid",
                    "--mount",
                    "--fork",
                    "--mount-proc",
                    "--",
                    "sh",
                    "-c",
                ])
                .arg(concat!(
                    "mount -t tmpfs tmpfs /tmp && mkdir /tmp/app && ",
                    "mount --bind /proc/self/cwd /tmp/app && cd /tmp/app && exec \"$0\" \"$@\""
                ))
                .arg(&node);
                c
            }
            (None, false) => Command::new(&node),
        };
        let script_arg = if root.is_some() {
            ContainerRoot::script(self.script)
        } else if self.contained {
            PathBuf::from("/tmp/app").join(self.script)
        } else {
            script.clone()
        };
        cmd.args(&self.node_flags)
            .arg(&script_arg)
            .envs(self.node_env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd.path());
        let node = Process::spawn("node", &mut cmd).unwrap_or_else(|e| panic!("{e}"));
        // The process to watch: node itself, not the unshare that started it.
        let target = if self.contained || root.is_some() {
            contained_child(node.pid())
        } else {
            node.pid()
        };
        let perf_map = RemoveOnDrop(PathBuf::from(format!("/tmp/perf-{target}.map")));
        let mut session = Session {
            node,
            loopbpf: None,
        };

        // Prepared first, so calibration happens before the probes attach.
        let deadline = Instant::now() + timeout(READY_TIMEOUT);
        session
            .node
            .wait_for_line(deadline, r#"{"script":"ready"}"#, is_script_ready)
            .or_fail(&mut session);
        if !self.node_flags.iter().any(|f| f == PERF_MAP_FLAG) {
            // Left by an earlier process with this pid, it would be read as ours.
            let _ = std::fs::remove_file(&perf_map.0);
        }
        if let Some(plant) = self.plant_perf_map {
            plant(&perf_map.0);
        }
        if let (Some(root), Some(Some(plant))) = (&root, self.chrooted) {
            plant(root.path());
        }

        let pid = target.to_string();
        let mut cmd = match self.without_tracefs {
            None => Command::new(&bin),
            Some(tracefs) => {
                // unshare execs (no fork): the shell, then loopbpf, keep its pid.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(UNMOUNT_TRACEFS)
                    .arg("sh");
                if tracefs == Tracefs::NotMountable {
                    c.args(["setpriv", "--bounding-set", "-sys_admin"]).args([
                        "--inh-caps",
                        "-sys_admin",
                        "--",
                    ]);
                }
                c.arg(&bin);
                c
            }
        };
        cmd.envs(self.loopbpf_env.iter().map(|(k, v)| (k, v)));
        // loopbpf's own limit, in case the test fails to end it.
        let duration = format!("{}s", timeout(Duration::from_secs(30)).as_secs());
        cmd.args(["--pid", &pid, "--json", "--duration", &duration])
            .args(["--threshold", &format!("{}ms", self.threshold_ms.round())])
            .arg("--output")
            .arg(output.path())
            .args(&self.loopbpf_args);
        session.loopbpf = Some(Process::spawn("loopbpf", &mut cmd).or_fail(&mut session));

        let deadline = Instant::now() + timeout(READY_TIMEOUT);
        let ready = |l: &str| line_type(l).as_deref() == Some("ready");
        session
            .loopbpf()
            .wait_for_line(deadline, "its ready line", ready)
            .or_fail(&mut session);
        session.node.write_line("go").or_fail(&mut session);

        if let Some(kind) = self.kill_node_on {
            let deadline = Instant::now() + timeout(SCRIPT_TIMEOUT);
            let what = format!("a {kind:?} line");
            session
                .loopbpf()
                .wait_for_line(deadline, &what, |l| line_type(l).as_deref() == Some(kind))
                .or_fail(&mut session);
            session.node.kill();
        }
        let node_status = session
            .node
            .wait_exit(Instant::now() + timeout(SCRIPT_TIMEOUT))
            .or_fail(&mut session);
        if self.kill_node_on.is_none() && !node_status.success() {
            session.fail(format!("the Node script failed: {node_status}"));
        }
        let exited = session
            .loopbpf()
            .wait_exit(Instant::now() + timeout(EXIT_AFTER_TARGET));
        let loopbpf_status = exited.unwrap_or_else(|e| {
            // For the failure message: SIGINT should still get the summary out.
            session.loopbpf().interrupt();
            let _ = session
                .loopbpf()
                .wait_exit(Instant::now() + Duration::from_secs(5));
            session.fail(format!("{e} after its only target exited"))
        });

        let Session { mut node, loopbpf } = session;
        let mut loopbpf = loopbpf.expect("started");
        let run = Run {
            node_pid: target,
            script_stdout: node.stdout().to_vec(),
            script_stderr: node.stderr().to_string(),
            loopbpf_argv: loopbpf.argv().to_vec(),
            loopbpf_stdout: loopbpf.stdout().to_vec(),
            loopbpf_stderr: loopbpf.stderr().to_string(),
            loopbpf_status,
            output,
            syscall_probes: self.syscall_probes,
            _perf_map: perf_map,
            _root: root,
        };
        run.check_contract();
        run
    }
}

/// Unmounts tracefs (in the caller's own mount namespace), makes sure it is
/// gone from both places loopbpf looks, then runs the rest of the arguments.
const UNMOUNT_TRACEFS: &str = concat!(
    "for d in /sys/kernel/tracing /sys/kernel/debug; do ",
    "if mountpoint -q $d; then umount -R $d || exit 97; fi; done; ",
    "for d in /sys/kernel/tracing /sys/kernel/debug/tracing; do ",
    "if [ -n \"$(ls -A $d 2>/dev/null)\" ]; then echo \"tracefs still at $d\" >&2; exit 97; fi; ",
    "done; exec \"$@\""
);

/// The (only) child of `pid`, once it exists: unshare's forked node.
fn contained_child(pid: u32) -> u32 {
    let children = format!("/proc/{pid}/task/{pid}/children");
    for _ in 0..500 {
        if let Some(child) = std::fs::read_to_string(&children)
            .ok()
            .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
        {
            return child;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("unshare (pid {pid}) started no child in 5 s");
}

fn is_script_ready(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v["script"] == "ready")
}

struct Session {
    node: Process,
    loopbpf: Option<Process>,
}

impl Session {
    fn loopbpf(&mut self) -> &mut Process {
        self.loopbpf.as_mut().expect("loopbpf started")
    }

    fn fail(&mut self, msg: String) -> ! {
        let mut context = self.node.describe();
        if let Some(loopbpf) = &mut self.loopbpf {
            context = format!("{}\n{context}", loopbpf.describe());
        }
        panic!("{msg}\n{context}");
    }
}

trait OrFail<T> {
    fn or_fail(self, session: &mut Session) -> T;
}

impl<T> OrFail<T> for Result<T, String> {
    fn or_fail(self, session: &mut Session) -> T {
        self.unwrap_or_else(|e| session.fail(e))
    }
}

fn tempdir(prefix: &str) -> TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir();
    dir.unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Everything both processes printed in one completed run.
pub struct Run {
    pub node_pid: u32,
    pub script_stdout: Vec<String>,
    pub script_stderr: String,
    pub loopbpf_argv: Vec<String>,
    pub loopbpf_stdout: Vec<String>,
    pub loopbpf_stderr: String,
    pub loopbpf_status: ExitStatus,
    pub output: TempDir,
    /// The syscall probes the ready line must name.
    pub syscall_probes: &'static str,
    _perf_map: RemoveOnDrop,
    /// Removed after the run (its mounts died with node's namespace).
    _root: Option<ContainerRoot>,
}

impl Run {
    /// loopbpf's JSON lines of this `"type"`.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.loopbpf_stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    pub fn episodes(&self) -> Vec<Episode> {
        let episodes: Result<Vec<_>, _> = self
            .events("episode")
            .iter()
            .map(Episode::from_json)
            .collect();
        episodes.unwrap_or_else(|e| self.fail(&format!("malformed episode: {e}")))
    }

    /// The script's own `{"block":…}` measurements.
    pub fn blocks(&self) -> Vec<Block> {
        let blocks: Result<Vec<_>, _> = self
            .script_stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("block").is_some())
            .map(|v| Block::from_json(&v))
            .collect();
        blocks.unwrap_or_else(|e| self.fail(&format!("malformed script output: {e}")))
    }

    /// The script's one line that has `key`.
    pub fn script_result(&self, key: &str) -> Value {
        let found = self
            .script_stdout
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v.get(key).is_some());
        found.unwrap_or_else(|| self.fail(&format!("the script printed no line with `{key}`")))
    }

    /// When the script's last callback ran (`{"script":"done","at_ns":…}`).
    pub fn done_ns(&self) -> u64 {
        let done = self.script_result("at_ns");
        u64_field(&done, "at_ns").unwrap_or_else(|e| self.fail(&e))
    }

    /// The summary of the Node process.
    pub fn summary(&self) -> Value {
        let found = self
            .events("summary")
            .into_iter()
            .find(|v| v["pid"] == self.node_pid);
        found.unwrap_or_else(|| self.fail(&format!("no summary for pid {}", self.node_pid)))
    }

    pub fn warnings(&self) -> Vec<String> {
        let warnings = self.events("warning");
        warnings
            .iter()
            .filter_map(|w| str_field(w, "message").ok().map(String::from))
            .collect()
    }

    /// The stacks of an episode's folded file; a relative path is taken as
    /// relative to the output directory.
    pub fn folded(&self, episode: &Episode) -> Result<Vec<FoldedStack>, String> {
        let path = episode
            .folded
            .as_ref()
            .ok_or("the episode has no folded file (null)")?;
        let path = if path.is_relative() && !path.exists() {
            self.output.path().join(path)
        } else {
            path.clone()
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        parse_folded(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Panics with `problems` plus the contract every run must keep, if
    /// anything is wrong: loopbpf's stdout is JSON lines, its ready line names
    /// the target and the expected syscall probes (the per-syscall
    /// tracepoints unless the scenario says otherwise), and it exits 0 once
    /// the target has exited.
    pub fn check(&self, mut problems: Vec<String>) {
        let ready = self.events("ready");
        if !ready.iter().any(|r| {
            r["pids"]
                .as_array()
                .is_some_and(|p| p.contains(&self.node_pid.into()))
        }) {
            problems.push(format!(
                "the ready line does not list pid {}: {ready:?}",
                self.node_pid
            ));
        }
        if !ready
            .iter()
            .any(|r| r["syscall_probes"] == self.syscall_probes)
        {
            problems.push(format!(
                "the ready line does not name syscall_probes {:?}: {ready:?}",
                self.syscall_probes
            ));
        }
        for line in &self.loopbpf_stdout {
            if line_type(line).is_none() {
                problems.push(format!(
                    "loopbpf printed a line that is not a typed JSON object: {line}"
                ));
            }
        }
        if !self.loopbpf_status.success() {
            problems.push(format!("loopbpf exited with {}", self.loopbpf_status));
        }
        if !problems.is_empty() {
            self.fail(&format!(
                "{} problem(s):\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            ));
        }
    }

    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n--- loopbpf: {argv}\n    exit: {status}\n--- loopbpf stdout:\n{out}\n--- loopbpf stderr:\n{err}\n\
             --- node (pid {pid}) stdout:\n{sout}\n--- node stderr:\n{serr}",
            argv = self.loopbpf_argv.join(" "),
            status = self.loopbpf_status,
            out = tail(&self.loopbpf_stdout.join("\n"), 200),
            err = tail(&self.loopbpf_stderr, 200),
            pid = self.node_pid,
            sout = self.script_stdout.join("\n"),
            serr = tail(&self.script_stderr, 50),
        )
    }
}
