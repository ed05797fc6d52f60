//! roomcast between its processes (distributed mode): the gRPC services of
//! `proto/internal.proto` and the adapters that put the core's ports on them —
//! gateway → ingest ([`IngestClient`] implements `Ingest`, [`IngestServer`] serves one), room
//! worker → gateway ([`GrpcDelivery`] implements `Delivery`), server API → gateway
//! ([`GrpcNodeCommands`] implements `NodeCommands`, under `RoutedControl`); [`GatewayServer`]
//! serves both on a gateway. Where the other nodes are comes from discovery
//! ([`NodeDirectory`]).

pub mod convert;
pub mod directory;
pub mod gateway;
pub mod ingest;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("roomcast.internal.v1");
}

pub use directory::{ChannelSettings, NodeDirectory};
pub use gateway::{
    DeliverySettings, GatewayNode, GatewayServer, GrpcDelivery, GrpcNodeCommands, MAX_PUSH_BYTES,
};
pub use ingest::{IngestClient, IngestServer};
