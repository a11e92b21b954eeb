//! What a block does outside the kernel's sets, as root: kill commands without a shell
//! ([`exec`]) and the TCP-wrappers deny file ([`hostsdeny`]); [`run`] carries out one
//! checked request of the worker with them. The worker's judge decides whether; these
//! say how.

pub mod exec;
pub mod hostsdeny;
