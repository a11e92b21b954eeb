//! The kernel side of the packet path, the privileged verbs a root parent keeps (issue
//! #22): the nftables table and its detection chain ([`table`]), set elements and routes
//! over netlink ([`netlink`], on the shared plumbing in `nl`), noticing when another
//! process changes the table ([`tablewatch`]), the NFLOG socket handed to the sensor
//! ([`capture`]) and the writes of the served ports the worker finds for RESTART_GRACE
//! ([`served`]).

pub mod capture;
pub mod netlink;
pub mod nl;
pub mod served;
pub mod table;
pub mod tablewatch;
