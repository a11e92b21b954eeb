//! Running kill commands: argv + execve, never a shell; empty environment except a fixed
//! PATH; stdin from /dev/null; stdout discarded; stderr captured up to a bound; a timeout
//! after which the whole process group is killed; the exit status is always reported.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
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

thread_local! {
    /// The pids of the last children [`run`] started, newest last. nftables notifications
    /// name the netlink port of the process that made a change, which for a process's
    /// first socket is its pid: so the table watch can tell our own `nft` runs from
    /// another process's. (The parent is single-threaded: its runs and its watch share
    /// this thread.)
    static SPAWNED: std::cell::RefCell<std::collections::VecDeque<u32>> = const {
        std::cell::RefCell::new(std::collections::VecDeque::new())
    };
}
/// How many pids [`SPAWNED`] keeps.
const SPAWNED_KEEP: usize = 64;

/// Whether `pid` is one of the last children [`run`] started (on this thread).
pub fn recently_spawned(pid: u32) -> bool {
    SPAWNED.with(|s| s.borrow().contains(&pid))
}

fn remember(pid: u32) {
    SPAWNED.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SPAWNED_KEEP {
            s.pop_front();
        }
        s.push_back(pid);
    });
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
/// and `timeout`. No thread: one poll(2) loop feeds stdin, keeps the head of stderr and
/// waits for the child (its pidfd), so the single-threaded parent stays so.
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
    remember(child.id());
    let mut io = Io {
        stdin: child.stdin.take().map(OwnedFd::from),
        input: input.unwrap_or_default(),
        stderr: child.stderr.take().map(OwnedFd::from),
        kept: Vec::with_capacity(STDERR_KEEP),
        pidfd: crate::sys::pidfd_open(child.id()).ok(),
    };
    let outcome = io.until_exit(&mut child, start + timeout, false);
    // Grandchildren that escaped the process group may hold stderr: not long.
    io.stdin = None;
    io.pidfd = None;
    let _ = io.until_exit(
        &mut child,
        Instant::now() + Duration::from_millis(100),
        true,
    );
    RunResult {
        outcome,
        stderr: String::from_utf8_lossy(&io.kept).trim_end().to_string(),
        elapsed: start.elapsed(),
    }
}

/// The child's pipes while it runs.
struct Io<'a> {
    stdin: Option<OwnedFd>,
    input: &'a [u8],
    stderr: Option<OwnedFd>,
    kept: Vec<u8>,
    pidfd: Option<OwnedFd>,
}

impl Io<'_> {
    /// Feed stdin and read stderr until the child exits (with `drain`: and stderr
    /// closed) or `deadline`, past which its process group is killed.
    fn until_exit(
        &mut self,
        child: &mut std::process::Child,
        deadline: Instant,
        drain: bool,
    ) -> Outcome {
        for fd in [&self.stdin, &self.stderr].into_iter().flatten() {
            let fl = fcntl(fd, FcntlArg::F_GETFL)
                .map(OFlag::from_bits_truncate)
                .unwrap_or(OFlag::empty());
            let _ = fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK));
        }
        loop {
            if let Some(o) = exited(child) {
                if !drain || self.stderr.is_none() || Instant::now() >= deadline {
                    return o;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // The child is not reaped yet, so its process group id cannot be reused.
                if let Ok(pg) = i32::try_from(child.id()) {
                    let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::TimedOut;
            }
            self.step(deadline - now);
        }
    }

    /// One poll: write what stdin takes, read what stderr has, or wake when the child
    /// exits (5 ms ticks without a pidfd).
    fn step(&mut self, left: Duration) {
        let mut fds = Vec::new();
        if let Some(f) = &self.stdin {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
        }
        if let Some(f) = &self.stderr {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        let left = match &self.pidfd {
            Some(f) => {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                left
            }
            None => left.min(Duration::from_millis(5)),
        };
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        );
        drop(fds);
        if let Some(f) = &self.stdin {
            match nix::unistd::write(f, self.input) {
                Ok(n) => self.input = self.input.get(n..).unwrap_or_default(),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => self.input = &[],
            }
            if self.input.is_empty() {
                self.stdin = None;
            }
        }
        if let Some(f) = &self.stderr {
            let mut chunk = [0u8; 1024];
            match nix::unistd::read(f, &mut chunk) {
                Ok(0) => self.stderr = None,
                Ok(n) => {
                    let room = STDERR_KEEP.saturating_sub(self.kept.len());
                    self.kept
                        .extend_from_slice(chunk.get(..n.min(room)).unwrap_or_default());
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(_) => self.stderr = None,
            }
        }
    }
}

/// How the child ended, if it has (reaped here).
fn exited(child: &mut std::process::Child) -> Option<Outcome> {
    match child.try_wait() {
        Ok(Some(status)) => Some(match (status.code(), status.signal()) {
            (Some(c), _) => Outcome::Exited(c),
            (None, Some(s)) => Outcome::Signaled(s),
            (None, None) => Outcome::Exited(-1),
        }),
        Ok(None) => None,
        Err(e) => Some(Outcome::SpawnFailed(format!("wait: {e}"))),
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
