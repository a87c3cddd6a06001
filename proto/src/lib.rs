//! The `appl.v1` wire format: protobuf messages and tonic services.
//!
//! This is the only crate that knows the wire format. The daemon's gRPC layer converts these
//! types to domain types at the edge; the engine, scheduler, audit store and sizing rules never
//! see them.

#![forbid(unsafe_code)]

/// Generated code for the `appl.v1` package.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("appl.v1");
}

/// Connecting a client to appld.
pub mod client {
    use std::path::PathBuf;

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint, Uri};

    /// A channel to appld over its Unix socket (`/run/appl/appld.sock` on an installed system).
    pub async fn connect_unix(
        path: impl Into<PathBuf>,
    ) -> Result<Channel, tonic::transport::Error> {
        let path = path.into();
        // The URI is required by the API but unused: the connector dials the socket.
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }
}

/// The encoded `FileDescriptorSet` of `appl.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("appl_v1_descriptor");

/// The protobuf codec of the `appl.v1` services.
///
/// It is tonic's prost codec except for one thing: a request that cannot be decoded (a string
/// field holding invalid UTF-8, a truncated message) is the client's fault, so the server answers
/// `INVALID_ARGUMENT` rather than prost's default `INTERNAL`.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
    use tonic::Status;
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Used by the generated code through `codec_path`.
    #[derive(Debug, Clone)]
    pub struct Codec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for Codec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> tonic::codec::Codec for Codec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ClientFaultDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ClientFaultDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::default()))
        }
    }

    /// Decodes like prost, but reports undecodable input as `INVALID_ARGUMENT`.
    #[derive(Debug)]
    pub struct ClientFaultDecoder<U>(ProstDecoder<U>);

    impl<U: prost::Message + Default> Decoder for ClientFaultDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            self.0.decode(buf).map_err(|s| {
                Status::invalid_argument(format!(
                    "the message is not a valid {}: {}; string fields must be UTF-8",
                    std::any::type_name::<U>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("message"),
                    s.message()
                ))
            })
        }

        fn buffer_settings(&self) -> BufferSettings {
            self.0.buffer_settings()
        }
    }
}
