//! A child process whose stdout lines can be awaited with a deadline, killed
//! when dropped so a failing test leaves nothing running.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{
    mpsc::{self, Receiver, RecvTimeoutError},
    Arc, Mutex,
};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    argv: Vec<String>,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stdout: Vec<String>,
    stdout_closed: bool,
    stderr_reader: Option<JoinHandle<String>>,
    stderr: String,
    /// Lines of stderr as they came, with when they were read.
    stderr_lines: Arc<Mutex<Vec<(Instant, String)>>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// `name` labels this process in failure messages; its stdio is piped.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Process, String> {
        let argv: Vec<String> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name} ({}): {e}", argv.join(" ")))?;

        // Reader threads keep the pipes drained whatever the test is waiting
        // on, so neither child can block on a full pipe.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&stderr_lines);
        let stderr_reader = thread::spawn(move || {
            let mut all = Vec::new();
            let mut reader = BufReader::new(&mut stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                all.extend_from_slice(&line);
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Ok(mut v) = seen.lock() {
                    v.push((Instant::now(), text));
                }
                line.clear();
            }
            String::from_utf8_lossy(&all).into_owned()
        });

        Ok(Process {
            name: name.to_string(),
            argv,
            stdin: child.stdin.take(),
            child,
            lines,
            stdout: Vec::new(),
            stdout_closed: false,
            stderr_reader: Some(stderr_reader),
            stderr: String::new(),
            stderr_lines,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Every stdout line read so far.
    pub fn stdout(&self) -> &[String] {
        &self.stdout
    }

    /// Reads stdout until a line satisfies `want`.
    pub fn wait_for_line(
        &mut self,
        deadline: Instant,
        what: &str,
        want: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        loop {
            if self.stdout_closed {
                return Err(format!(
                    "{} closed its stdout before printing {what}",
                    self.name
                ));
            }
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    let found = want(&line);
                    self.stdout.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => self.stdout_closed = true,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{} did not print {what} in time", self.name))
                }
            }
        }
    }

    pub fn write_line(&mut self, line: &str) -> Result<(), String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}'s stdin is closed", self.name))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot write to {}'s stdin: {e}", self.name))
    }

    /// Reads stdout to its end and waits for the exit.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        match self.wait_for_line(deadline, "anything more", |_| false) {
            Err(_) if self.stdout_closed => {}
            Err(e) => return Err(format!("{e}: still running")),
            Ok(()) => unreachable!(),
        }
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            match self.child.try_wait() {
                Ok(Some(status)) => self.reaped(status),
                Ok(None) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{} closed stdout but did not exit in time",
                        self.name
                    ))
                }
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("cannot wait for {}: {e}", self.name)),
            }
        }
    }

    /// Asks for a clean exit (loopbpf prints its summary on SIGINT).
    pub fn interrupt(&self) {
        if self.status.is_none() {
            // SAFETY: plain syscall on our own, not yet reaped, child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        }
    }

    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.reaped(status);
            }
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
        self.stdin = None;
    }

    /// The first stderr line so far that `matches`, with when it was read
    /// (the process keeps running).
    pub fn stderr_line(&self, matches: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        let lines = self.stderr_lines.lock().ok()?;
        lines.iter().find(|(_, l)| matches(l)).cloned()
    }

    /// All of stderr; kills the process first if it still runs, since stderr
    /// only ends when it exits.
    pub fn stderr(&mut self) -> &str {
        self.kill();
        if let Some(reader) = self.stderr_reader.take() {
            self.stderr = reader.join().unwrap_or_default();
        }
        &self.stderr
    }

    /// Everything known about this process, for a failure message; kills it.
    pub fn describe(&mut self) -> String {
        // Lines already sent but not yet awaited belong in the picture too.
        self.stdout.extend(self.lines.try_iter());
        let stderr = tail(self.stderr(), 200);
        let status = self.status.map_or("unknown".to_string(), |s| s.to_string());
        format!(
            "--- {name}: {argv}\n    exit: {status}\n--- {name} stdout:\n{stdout}\n--- {name} stderr:\n{stderr}",
            name = self.name,
            argv = self.argv.join(" "),
            stdout = tail(&self.stdout.join("\n"), 200),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max_lines` lines of `text`, saying how many were left out.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max_lines {
        return text.trim_end().to_string();
    }
    let skipped = lines.len() - max_lines;
    format!(
        "[{skipped} earlier lines left out]\n{}",
        lines[skipped..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_short_text_and_cuts_long_text() {
        assert_eq!(tail("a\nb\n", 2), "a\nb");
        assert_eq!(tail("a\nb\nc", 2), "[1 earlier lines left out]\nb\nc");
    }

    #[test]
    fn lines_exit_and_stderr_of_a_real_child() {
        let script = "read x; echo got $x; echo oops >&2; exit 3";
        let mut p = Process::spawn("sh", Command::new("/bin/sh").args(["-c", script])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        p.write_line("go").unwrap();
        p.wait_for_line(deadline, "got", |l| l == "got go").unwrap();
        assert_eq!(p.wait_exit(deadline).unwrap().code(), Some(3));
        assert_eq!(p.stderr(), "oops\n");
        assert_eq!(p.stdout(), ["got go"]);
    }

    #[test]
    fn waiting_past_the_deadline_fails_and_drop_kills() {
        let mut p = Process::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        let pid = p.pid();
        let err = p
            .wait_exit(Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(err.contains("still running"), "{err}");
        drop(p);
        // SAFETY: signal 0 only checks for existence; the child was reaped.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, 0) }, -1);
    }
}
