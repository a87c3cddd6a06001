//! The `appl.v1` wire format: protobuf messages and tonic services.
//!
//! This is the only crate that knows the wire format. The daemon's gRPC layer converts these
//! types to domain types at the edge; the engine, scheduler, audit store and sizing rules never
//! see them.

/// Generated code for the `appl.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("appl.v1");
}

/// The encoded `FileDescriptorSet` of `appl.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("appl_v1_descriptor");
