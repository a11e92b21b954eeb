//! `sched_setattr(2)` for the sensor and the enforcer alike. Both needed the same raw
//! system call; the crates they share (`sentry-proto`, `policy`) forbid unsafe code and
//! should keep doing so, since they parse what less trusted peers send. So the one call
//! lives here, alone, and each daemon's own `sys` module keeps only its own unsafe code.

/// `struct sched_attr` (SCHED_ATTR_SIZE_VER0).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

/// Ask the fair scheduler (EEVDF, Linux 6.12+) for a time slice of `slice_ns` for the
/// calling thread, keeping its policy and nice value. A task with a shorter slice than the
/// one running may preempt it on wake-up instead of waiting for that task's slice (up to a
/// tick, 4 ms at HZ=250) to run out; it gets no more CPU time in total. Needs no
/// privilege; threads do not inherit it. Older kernels ignore the value for normal tasks.
pub fn set_sched_slice(slice_ns: u64) -> std::io::Result<()> {
    let size = u32::try_from(std::mem::size_of::<SchedAttr>())
        .map_err(|_| std::io::Error::other("size"))?;
    let mut attr = SchedAttr {
        size,
        ..SchedAttr::default()
    };
    // SAFETY: sched_getattr(0, &attr, size, 0) writes at most `size` bytes into `attr`,
    // a live, exclusively borrowed SchedAttr of exactly that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.sched_policy != 0 {
        // Not SCHED_OTHER (the administrator chose another policy): leave it alone.
        return Ok(());
    }
    attr.size = size;
    attr.sched_runtime = slice_ns;
    attr.sched_flags = 0;
    // SAFETY: sched_setattr(0, &attr, 0) only reads `attr`, a live, initialised
    // SchedAttr whose `size` field is its exact size.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The call works unprivileged (or is refused by an old kernel with an error, never
    /// a crash).
    #[test]
    fn sets_or_reports_an_error() {
        let r = super::set_sched_slice(1_000_000);
        if let Err(e) = r {
            assert!(e.raw_os_error().is_some(), "{e}");
        }
    }
}
