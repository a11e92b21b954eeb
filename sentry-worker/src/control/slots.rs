//! Control connection slots (issue #21): a bounded number of control connections at once,
//! with slots that only root can take and a cap per uid, so that a CONTROL_GROUP member
//! (the fleet bridge, say) holding idle connections can never lock root's `sentryctl`
//! out. Counted after authentication, in the accept loop, so unauthorised peers take no
//! slot at all. Idle connections still end at the control frame deadline (10 s from the
//! wait for a frame to its last byte, so dripping a byte now and then does not help).

use std::collections::HashMap;

/// Control connections served at once, root's included.
pub const TOTAL: usize = 16;
/// Of [`TOTAL`], the slots only uid 0 may take.
pub const ROOT_RESERVED: usize = 4;
/// Most connections one non-root uid may hold at once.
pub const PER_UID: usize = 4;

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every slot open to this peer is taken.
    Total,
    /// This uid already holds [`PER_UID`].
    Uid,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Total => write!(f, "too many control connections"),
            Self::Uid => write!(
                f,
                "too many control connections from this uid (at most {PER_UID})"
            ),
        }
    }
}

/// The slots in use, in total and per uid (at most [`TOTAL`] entries).
#[derive(Debug, Default)]
pub struct Slots {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

impl Slots {
    /// Take a slot for `uid`.
    pub fn take(&mut self, uid: u32) -> Result<(), Full> {
        let held = self.by_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 {
            if held >= PER_UID {
                return Err(Full::Uid);
            }
            if self.total >= TOTAL - ROOT_RESERVED {
                return Err(Full::Total);
            }
        } else if self.total >= TOTAL {
            return Err(Full::Total);
        }
        self.total += 1;
        self.by_uid.insert(uid, held + 1);
        Ok(())
    }

    /// Give back a slot [`Slots::take`] gave `uid`.
    pub fn give(&mut self, uid: u32) {
        if let Some(n) = self.by_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.by_uid.remove(&uid);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    pub fn in_use(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_member_cannot_lock_root_out() {
        let mut s = Slots::default();
        // One member opens as many as it can: it gets PER_UID.
        let got = (0..12).filter(|_| s.take(1000).is_ok()).count();
        assert_eq!(got, PER_UID);
        assert_eq!(s.take(1000), Err(Full::Uid));
        // Many members together stop at TOTAL - ROOT_RESERVED.
        let mut others = 0;
        for uid in 2000..2010 {
            while s.take(uid).is_ok() {
                others += 1;
            }
        }
        assert_eq!(PER_UID + others, TOTAL - ROOT_RESERVED);
        assert_eq!(s.take(3000), Err(Full::Total));
        // Root still gets its reserved slots, and no more than the total.
        for _ in 0..ROOT_RESERVED {
            assert_eq!(s.take(0), Ok(()));
        }
        assert_eq!(s.take(0), Err(Full::Total));
        assert_eq!(s.in_use(), TOTAL);
    }

    #[test]
    fn slots_come_back() {
        let mut s = Slots::default();
        for _ in 0..PER_UID {
            s.take(7).unwrap();
        }
        s.give(7);
        assert_eq!(s.take(7), Ok(()));
        for _ in 0..PER_UID {
            s.give(7);
        }
        assert_eq!(s.in_use(), 0);
        // Giving back what was never taken changes nothing.
        s.give(8);
        assert_eq!(s.in_use(), 0);
        assert!(s.by_uid.is_empty());
    }
}
