//! Port test-suites under their old paths. Each suite lives beside its port
//! (`ports/<port>/suite.rs`: [`crate::ports::bus::suite`], [`crate::ports::store::suite`], …);
//! this module re-exports them so the adapters' tests keep calling `testkit::…`. Enabled by the
//! `testkit` feature (for the adapters' own tests) and in this crate's tests.

/// The bus suite ([`crate::ports::bus::suite`]).
pub mod bus {
    pub use crate::ports::bus::suite::*;
}

pub use crate::ports::acks::suite::ack_store_suite;
pub use crate::ports::bus::suite::{BusHarness, MemoryBusHarness, bus_suite};
pub use crate::ports::discovery::suite::discovery_suite;
pub use crate::ports::online::suite::room_counts_suite;
pub use crate::ports::outbox::suite::outbox_store_suite;
pub use crate::ports::presence::suite::presence_suite;
pub use crate::ports::recent::suite::recent_messages_suite;
pub use crate::ports::routes::suite::{
    drop_node_removes_only_that_nodes_routes, reconcile_repairs_and_dead_nodes_are_collected,
    remove_touches_only_the_named_node, renewal_keeps_routes_expiry_hides_them, route_table_suite,
    routes_need_a_live_lease, watch_sees_adds_removes_and_drops,
};
pub use crate::ports::store::suite::{batch, message_store_suite};
