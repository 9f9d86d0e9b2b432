//! Logs for journald: one event per line, no timestamp (the journal adds
//! one), no colours unless stderr is a terminal, and, when stderr is the
//! journal, a `<N>` syslog priority prefix so `journalctl -p warning` works.
use std::io::Write;

use crate::printable::escape;

fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// systemd sets JOURNAL_STREAM=DEV:INODE of the journal stream it gave us as
/// stderr; a child started from a shell inside a unit inherits the variable
/// but not the stream, hence the comparison.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on fd 2 with a valid out-pointer.
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    value.to_str() == Some(format!("{}:{}", st.st_dev, st.st_ino).as_str())
}

/// `RUST_LOG` still overrides the default level (info).
pub fn init() {
    let journal = stderr_is_journal();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            // A message with a newline would be two journal entries, one with
            // an escape sequence could rewrite a terminal: the names in it
            // come from watched processes (see `printable`).
            let message = record.args().to_string();
            let message = escape(&message);
            if journal {
                writeln!(buf, "<{}>{message}", priority(record.level()))
            } else {
                let style = buf.default_level_style(record.level());
                writeln!(buf, "{style}{}{style:#} {message}", record.level())
            }
        })
        .init();
}
