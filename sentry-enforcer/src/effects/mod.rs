//! What a block does outside the kernel's sets, as root: kill commands without a shell
//! ([`exec`], run by the parent's command helper, and `nft -f -` by the parent) and the
//! TCP-wrappers deny file ([`hostsdeny`]). The worker's judge decides whether; the
//! parent's floor whether it may; these say how.

pub mod exec;
pub mod hostsdeny;
pub mod textfile;
