//! What a block does outside the kernel's sets, as root: typed actions and their
//! executor ([`action`]), kill commands without a shell ([`exec`]) and the TCP-wrappers
//! deny file ([`hostsdeny`]). The judge decides whether; these say how.

pub mod action;
pub mod exec;
pub mod hostsdeny;
