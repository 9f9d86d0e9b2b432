//! Runs commands after printing them, so a CI log shows exactly what was run.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cmd` with inherited stdio; a non-zero exit is an error naming the command.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start: {shown}"))?;
    if !status.success() {
        bail!("command failed ({status}): {shown}");
    }
    Ok(())
}

/// Runs `cmd` and returns its trimmed stdout; stderr is passed through so failures explain themselves.
pub fn output(cmd: &mut Command) -> Result<String> {
    let stdout = output_bytes(cmd)?;
    Ok(String::from_utf8_lossy(&stdout).trim().to_string())
}

/// Runs `cmd` and returns its stdout as bytes (stderr passed through).
pub fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = show(cmd);
    eprintln!("$ {shown}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start: {shown}"))?;
    if !out.status.success() {
        bail!("command failed ({}): {shown}", out.status);
    }
    Ok(out.stdout)
}

/// Like `output`, but a command that cannot start or fails is `None`: used for "is it there yet?" probes.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let shown = show(cmd);
    eprintln!("$ {shown}");
    match cmd.stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
        Ok(out) => {
            eprintln!("  (failed: {})", out.status);
            None
        }
        Err(e) => {
            eprintln!("  (cannot start: {e})");
            None
        }
    }
}

/// `PATH=<dir>:$PATH`, the way every cargo call that may reach aya-build must see bpf-linker.
pub fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&old));
    std::env::join_paths(dirs).context("PATH")
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Shell-like rendering; the PATH we extend is shown as `dir:$PATH` instead of the whole value.
pub fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("(cd {} &&", quote(dir.as_os_str())));
    }
    let old_path = std::env::var("PATH").unwrap_or_default();
    for (key, value) in cmd.get_envs() {
        let key = key.to_string_lossy();
        match value {
            None => parts.push(format!("-u {key}")),
            Some(v) => {
                let v = v.to_string_lossy();
                let suffix = format!(":{old_path}");
                let v = match v.strip_suffix(&suffix) {
                    Some(prefix) if key == "PATH" && !old_path.is_empty() => {
                        format!("{}:$PATH", quote(OsStr::new(prefix)))
                    }
                    _ => quote(OsStr::new(&*v)),
                };
                parts.push(format!("{key}={v}"));
            }
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    let mut line = parts.join(" ");
    if cmd.get_current_dir().is_some() {
        line.push(')');
    }
    line
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
