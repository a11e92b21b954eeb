//! Running kill commands: argv + execve, never a shell; empty environment except a fixed
//! PATH; stdin from /dev/null; stdout discarded; stderr captured up to a bound; a timeout
//! after which the whole process group is killed; the exit status is always reported.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// PATH given to every command (and used to find a program named without a slash).
pub const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes of stderr kept for the audit record.
pub const STDERR_KEEP: usize = 512;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Ran past the timeout and was killed.
    TimedOut,
    /// Could not be started.
    SpawnFailed(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Self::Exited(0))
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Exited(c) => format!("exit {c}"),
            Self::Signaled(s) => format!("killed by signal {s}"),
            Self::TimedOut => "timed out (killed)".to_string(),
            Self::SpawnFailed(e) => format!("could not start: {e}"),
        }
    }
}

/// The pids of the last children [`run`] started, newest last. nftables notifications name
/// the netlink port of the process that made a change, which for a process's first socket
/// is its pid: so the table watch can tell our own `nft` runs from another process's.
static SPAWNED: std::sync::Mutex<std::collections::VecDeque<u32>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// How many pids [`SPAWNED`] keeps.
const SPAWNED_KEEP: usize = 64;

/// Whether `pid` is one of the last children [`run`] started.
pub fn recently_spawned(pid: u32) -> bool {
    SPAWNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&pid)
}

/// Result of [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    pub outcome: Outcome,
    /// First [`STDERR_KEEP`] bytes of stderr, lossily decoded.
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `argv` (`argv[0]` is the program) with stdin (`input`) if given, a clean environment
/// and `timeout`.
pub fn run(argv: &[String], input: Option<&[u8]>, timeout: Duration) -> RunResult {
    let start = Instant::now();
    let failed = |why: String| RunResult {
        outcome: Outcome::SpawnFailed(why),
        stderr: String::new(),
        elapsed: start.elapsed(),
    };
    let Some((prog, args)) = argv.split_first() else {
        return failed("empty command".into());
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir("/")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(e.to_string()),
    };
    {
        let mut s = SPAWNED.lock().unwrap_or_else(|p| p.into_inner());
        if s.len() >= SPAWNED_KEEP {
            s.pop_front();
        }
        s.push_back(child.id());
    }
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // A writer thread so a child that does not read cannot block us past the timeout.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&data);
        });
    }
    let rx = read_stderr(&mut child);
    let outcome = wait_or_kill(&mut child, pgid, start + timeout);
    // The stderr reader finishes when every holder of the pipe has exited; do not wait
    // long for grandchildren that escaped the process group.
    let stderr = rx
        .recv_timeout(Duration::from_millis(100))
        .map(|v| String::from_utf8_lossy(&v).trim_end().to_string())
        .unwrap_or_default();
    RunResult {
        outcome,
        stderr,
        elapsed: start.elapsed(),
    }
}

/// A thread that keeps the first [`STDERR_KEEP`] bytes of the child's stderr and sends
/// them when the pipe closes.
fn read_stderr(child: &mut std::process::Child) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut kept = Vec::with_capacity(STDERR_KEEP);
            let mut chunk = [0u8; 1024];
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = STDERR_KEEP.saturating_sub(kept.len());
                        kept.extend_from_slice(chunk.get(..n.min(room)).unwrap_or(&[]));
                    }
                }
            }
            let _ = tx.send(kept);
        });
    }
    rx
}

/// Wait for the child until `deadline` (polling, with a growing nap of at most 5 ms);
/// past it, kill its process group and the child.
fn wait_or_kill(child: &mut std::process::Child, pgid: Pid, deadline: Instant) -> Outcome {
    let mut nap = Duration::from_micros(100);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                break match (status.code(), status.signal()) {
                    (Some(c), _) => Outcome::Exited(c),
                    (None, Some(s)) => Outcome::Signaled(s),
                    (None, None) => Outcome::Exited(-1),
                }
            }
            Ok(None) => {}
            Err(e) => break Outcome::SpawnFailed(format!("wait: {e}")),
        }
        let now = Instant::now();
        if now >= deadline {
            // The child is not reaped yet, so its process group id cannot have been reused.
            if pgid.as_raw() > 0 {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            break Outcome::TimedOut;
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn exit_codes_are_reported() {
        assert_eq!(
            run(&s(&["true"]), None, Duration::from_secs(5)).outcome,
            Outcome::Exited(0)
        );
        let r = run(&s(&["false"]), None, Duration::from_secs(5));
        assert_eq!(r.outcome, Outcome::Exited(1));
        assert!(!r.outcome.success());
    }

    #[test]
    fn no_shell_and_clean_env() {
        // The argument reaches the program verbatim: no word splitting, no expansion.
        let r = run(
            &s(&["sh", "-c", "echo \"$HOME|$PATH|$1\" >&2", "x", "a b;$(id)"]),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(r.outcome, Outcome::Exited(0));
        assert_eq!(r.stderr, format!("|{SAFE_PATH}|a b;$(id)"));
    }

    #[test]
    fn timeout_kills() {
        let r = run(&s(&["sleep", "10"]), None, Duration::from_millis(200));
        assert_eq!(r.outcome, Outcome::TimedOut);
        assert!(r.elapsed < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_an_error() {
        let r = run(&s(&["/nonexistent/prog"]), None, Duration::from_secs(1));
        assert!(matches!(r.outcome, Outcome::SpawnFailed(_)));
        assert!(matches!(
            run(&[], None, Duration::from_secs(1)).outcome,
            Outcome::SpawnFailed(_)
        ));
    }

    #[test]
    fn stdin_and_bounded_stderr() {
        let r = run(
            &s(&["sh", "-c", "cat >&2"]),
            Some(b"hello"),
            Duration::from_secs(5),
        );
        assert_eq!(r.stderr, "hello");
        let r = run(
            &s(&["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2"]),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(r.stderr.len(), STDERR_KEEP);
    }
}
