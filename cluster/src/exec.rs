//! Running the PostgreSQL tools: as `postgres` through `runuser` when we are root, always with a deadline.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Error;

/// Server binaries tried, newest first, when `PGSTEER_PG_BIN` is not set.
const PG_VERSIONS: [u32; 4] = [18, 17, 16, 15];

/// Longest pause between two checks of a running child.
const MAX_POLL: Duration = Duration::from_millis(20);

/// Where the server binaries are and whose identity runs them.
#[derive(Debug, Clone)]
pub(crate) struct Tools {
    bin: PathBuf,
    as_postgres: bool,
}

impl Tools {
    /// Finds the binaries and decides whether to switch to `postgres` (Postgres refuses to run as root).
    pub(crate) fn detect() -> Result<Tools, Error> {
        Ok(Tools {
            bin: pg_bin_dir()?,
            as_postgres: running_as_root()?,
        })
    }

    /// True when server-side commands run as `postgres` through `runuser`.
    pub(crate) fn as_postgres(&self) -> bool {
        self.as_postgres
    }

    /// A command running the server binary `tool` (e.g. `pg_ctl`) as the server's user.
    pub(crate) fn tool(&self, tool: &str, cwd: &Path) -> Command {
        self.server_side(self.bin.join(tool), cwd)
    }

    /// A command running `program` as the server's user.
    pub(crate) fn server_side(&self, program: impl AsRef<OsStr>, cwd: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        prepare(&mut cmd, cwd);
        cmd
    }

    /// A `psql` command run as the current user: the one next to the server binaries, else `PATH`'s.
    pub(crate) fn psql(&self, cwd: &Path) -> Command {
        let beside = self.bin.join("psql");
        let mut cmd = if beside.is_file() {
            Command::new(beside)
        } else {
            Command::new("psql")
        };
        prepare(&mut cmd, cwd);
        cmd
    }
}

/// Common settings: no inherited `PG*` variables (they would redirect the tools), no stdin, a known
/// working directory the server user can enter, and a process group of its own so a timeout can kill
/// everything the command started.
fn prepare(cmd: &mut Command, cwd: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd).stdin(Stdio::null()).process_group(0);
}

/// Runs `cmd` to completion within `timeout` and returns its standard output.
///
/// A non-zero exit or a timeout is an error quoting the command and the end of its standard error.
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> Result<String, Error> {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {what}: {e}")))?;
    let stdout = Collector::start(child.stdout.take());
    let stderr = Collector::start(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.finish();
                return Err(Error::new(format!(
                    "{what} did not finish within {}s{}",
                    timeout.as_secs(),
                    excerpt(&err)
                )));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_POLL);
            }
            Err(e) => {
                kill_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::new(format!("cannot wait for {what}: {e}")));
            }
        }
    };
    let out = stdout.finish();
    let err = stderr.finish();
    if status.success() {
        Ok(out)
    } else {
        let detail = if err.trim().is_empty() { &out } else { &err };
        Err(Error::new(format!(
            "{what} failed ({status}){}",
            excerpt(detail)
        )))
    }
}

/// Sends SIGKILL to the process group `pgid` (every command runs in a group of its own).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--"])
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` (e.g. `"KILL"`) to one process; errors are ignored (it may be gone already).
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, "--"])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reads one pipe to its end on a thread, so neither pipe can fill up and stall the child.
struct Collector(Option<mpsc::Receiver<Vec<u8>>>);

impl Collector {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Collector {
        let Some(mut pipe) = pipe else {
            return Collector(None);
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        Collector(Some(rx))
    }

    /// The collected text; gives up after a moment if a detached grandchild still holds the pipe.
    fn finish(self) -> String {
        self.0
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .map(|buf| String::from_utf8_lossy(&buf).into_owned())
            .unwrap_or_default()
    }
}

/// `program arg arg …` for messages, shortened.
fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    shorten(&text, 300)
}

/// `": <last lines>"` of a command's output, or nothing when it printed nothing.
fn excerpt(text: &str) -> String {
    let tail = last_lines(text, 15);
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

/// The last `n` non-empty lines of `text`.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `text` cut to at most `max` characters, marked with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// `PGSTEER_PG_BIN` if set, else the newest `/usr/lib/postgresql/<v>/bin` that exists.
fn pg_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("PGSTEER_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(Error::new(format!(
            "PGSTEER_PG_BIN={} has no `postgres` binary",
            dir.display()
        )));
    }
    PG_VERSIONS
        .iter()
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        .find(|dir| dir.join("postgres").is_file())
        .ok_or_else(|| {
            Error::new(
                "no PostgreSQL server binaries in /usr/lib/postgresql/{18,17,16,15}/bin; \
                 install postgresql-15 or set PGSTEER_PG_BIN",
            )
        })
}

/// Whether the effective uid is 0: from `/proc/self/status`, else from `id -u`.
fn running_as_root() -> Result<bool, Error> {
    if let Some(uid) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_uid(&status))
    {
        return Ok(uid == 0);
    }
    let out = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot find the current uid: `id -u`: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u32>()
        .map(|uid| uid == 0)
        .map_err(|_| Error::new("cannot find the current uid: `id -u` printed no number"))
}

/// The effective uid from the text of `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcat\n"), None);
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo boom >&2; exit 3"]);
        let err = run(&mut cmd, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains('3'), "{err}");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_with_its_children() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]).process_group(0);
        let started = Instant::now();
        let err = run(&mut cmd, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn output_of_a_successful_command_is_returned() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello"]);
        assert_eq!(run(&mut cmd, Duration::from_secs(10)).unwrap(), "hello\n");
    }

    #[test]
    fn long_text_is_shortened_on_a_char_boundary() {
        assert_eq!(shorten("äöü", 2), "äö…");
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(last_lines("a\n\nb\nc\n", 2), "b\nc");
    }
}
