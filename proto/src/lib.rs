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

/// Connecting a client to appld: over its Unix socket, or over TCP with TLS and a client
/// certificate (`grpcs://`), optionally with an API key on every call. `applctl`, the tests
/// and the benches all connect through here.
pub mod client {
    use std::path::PathBuf;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use tonic::codegen::http;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

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

    /// What a TLS client trusts and presents.
    #[derive(Clone, Default)]
    pub struct TlsClient {
        /// The CA bundle (PEM) that the server's certificate must chain to.
        pub ca_pem: Vec<u8>,
        /// The client's certificate chain and private key (PEM), for mTLS.
        pub identity: Option<(Vec<u8>, Vec<u8>)>,
        /// The name to check the server's certificate against; the address's host when `None`.
        pub server_name: Option<String>,
    }

    impl std::fmt::Debug for TlsClient {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Never print the private key.
            f.debug_struct("TlsClient")
                .field("client_certificate", &self.identity.is_some())
                .field("server_name", &self.server_name)
                .finish_non_exhaustive()
        }
    }

    /// A channel to appld over TCP with TLS. `addr` is `host:port`, `https://host:port` or
    /// `grpcs://host:port`.
    pub async fn connect_tls(
        addr: &str,
        tls: &TlsClient,
    ) -> Result<Channel, tonic::transport::Error> {
        let hostport = addr
            .strip_prefix("grpcs://")
            .or_else(|| addr.strip_prefix("https://"))
            .unwrap_or(addr);
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            cfg = cfg.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            cfg = cfg.domain_name(name.clone());
        }
        Endpoint::from_shared(format!("https://{hostport}"))?
            .tls_config(cfg)?
            .connect()
            .await
    }

    /// A channel that sends `authorization: Bearer <key>` with every call when it has a key.
    #[derive(Clone)]
    pub struct Authed {
        inner: Channel,
        authorization: Option<http::HeaderValue>,
    }

    impl std::fmt::Debug for Authed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            // Never print the key.
            f.debug_struct("Authed")
                .field("api_key", &self.authorization.is_some())
                .finish_non_exhaustive()
        }
    }

    /// Why an API key cannot be sent.
    #[derive(Debug)]
    pub struct BadApiKey;

    impl std::fmt::Display for BadApiKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the API key must be printable ASCII without spaces")
        }
    }

    impl std::error::Error for BadApiKey {}

    impl Authed {
        /// Wraps a channel; `api_key` is sent as a bearer token on every call.
        pub fn new(inner: Channel, api_key: Option<&str>) -> Result<Self, BadApiKey> {
            let authorization = match api_key {
                None => None,
                Some(k) if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err(BadApiKey)
                }
                Some(k) => {
                    let mut v = http::HeaderValue::from_str(&format!("Bearer {k}"))
                        .map_err(|_| BadApiKey)?;
                    v.set_sensitive(true);
                    Some(v)
                }
            };
            Ok(Self {
                inner,
                authorization,
            })
        }
    }

    impl tower::Service<http::Request<tonic::body::Body>> for Authed {
        type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
        type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
        type Future = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Future;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
            if let Some(v) = &self.authorization {
                req.headers_mut()
                    .insert(http::header::AUTHORIZATION, v.clone());
            }
            self.inner.call(req)
        }
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
