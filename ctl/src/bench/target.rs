//! Benchmark targets: which server a run drives and how to reach it.
//!
//! `unix:///path` and `grpc://host:port` reach appld's `GenerateStream`; `openai://host:port`
//! reaches any OpenAI-compatible server's streaming `/v1/completions`. `grpcs://host:port` is
//! appld over TLS, with applctl's `--ca`, `--cert`, `--key` (mTLS) and `--api-key`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::grpc::Grpc;
use super::openai::OpenAi;
use super::report::Sample;
use super::Request;
use crate::client::ConnArgs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Grpc(String),
    Grpcs(String),
    OpenAi(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "target {0:?} has no scheme; use unix:///path, grpc://host:port or openai://host:port"
    )]
    NoScheme(String),
    #[error("target scheme {0:?} is not known; use unix://, grpc://, grpcs:// or openai://")]
    UnknownScheme(String),
    #[error("target {0:?} needs host:port")]
    NoPort(String),
    #[error("target {0:?} needs an absolute socket path, such as unix:///run/appl/appld.sock")]
    RelativeSocket(String),
}

fn host_port(s: &str, whole: &str) -> Result<String, TargetError> {
    let hp = s.trim_end_matches('/');
    match hp.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(hp.to_owned()),
        _ => Err(TargetError::NoPort(whole.to_owned())),
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NoScheme(s.to_owned()))?;
        match scheme {
            "unix" if rest.starts_with('/') => Ok(Target::Unix(PathBuf::from(rest))),
            "unix" => Err(TargetError::RelativeSocket(s.to_owned())),
            "grpc" => host_port(rest, s).map(Target::Grpc),
            "grpcs" => host_port(rest, s).map(Target::Grpcs),
            "openai" => host_port(rest, s).map(Target::OpenAi),
            other => Err(TargetError::UnknownScheme(other.to_owned())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
            Target::Grpc(a) => write!(f, "grpc://{a}"),
            Target::Grpcs(a) => write!(f, "grpcs://{a}"),
            Target::OpenAi(a) => write!(f, "openai://{a}"),
        }
    }
}

impl Target {
    /// The target that applctl's global `--socket` / `--addr` name.
    pub fn from_conn(conn: &ConnArgs) -> Self {
        match &conn.addr {
            Some(a) => Target::Grpc(
                a.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned(),
            ),
            None => Target::Unix(conn.socket.clone()),
        }
    }

    /// A client for one stream of the run; gRPC targets use `conn`'s credentials.
    pub fn client(&self, conn: &ConnArgs) -> anyhow::Result<Client> {
        let at = |socket: PathBuf, addr: Option<String>| ConnArgs {
            socket,
            addr,
            ..conn.clone()
        };
        Ok(match self {
            Target::Unix(p) => Client::Grpc(Box::new(Grpc::new(at(p.clone(), None)))),
            Target::Grpc(a) => Client::Grpc(Box::new(Grpc::new(at(
                PathBuf::new(),
                Some(format!("http://{a}")),
            )))),
            Target::Grpcs(a) => Client::Grpc(Box::new(Grpc::new(at(
                PathBuf::new(),
                Some(format!("grpcs://{a}")),
            )))),
            Target::OpenAi(a) => Client::OpenAi(OpenAi::new(a.clone(), conn.api_key.clone())),
        })
    }
}

/// A connection to the target, for one stream at a time.
pub enum Client {
    // Boxed: a gRPC client carries its connection settings; there is one client per stream.
    Grpc(Box<Grpc>),
    OpenAi(OpenAi),
}

impl Client {
    pub async fn generate(&mut self, r: &Request) -> Sample {
        match self {
            Client::Grpc(c) => c.generate(r).await,
            Client::OpenAi(c) => c.generate(r).await,
        }
    }

    /// Tokens in `text` by the server's tokenizer, when it offers one.
    pub async fn count_tokens(&mut self, model: &str, text: &str) -> Option<u32> {
        match self {
            Client::Grpc(c) => c.count_tokens(model, text).await,
            Client::OpenAi(c) => c.count_tokens(text).await,
        }
    }

    /// The served model's id and file path, when the server says.
    pub async fn model(&mut self, model: &str) -> Option<(String, String)> {
        match self {
            Client::Grpc(c) => c.model(model).await,
            Client::OpenAi(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_what_is_wrong() {
        let ok: &[(&str, Target)] = &[
            (
                "unix:///run/appl/appld.sock",
                Target::Unix("/run/appl/appld.sock".into()),
            ),
            (
                "grpc://127.0.0.1:50051",
                Target::Grpc("127.0.0.1:50051".into()),
            ),
            (
                "grpcs://appl.example:443",
                Target::Grpcs("appl.example:443".into()),
            ),
            (
                "openai://localhost:8080/",
                Target::OpenAi("localhost:8080".into()),
            ),
        ];
        for (s, want) in ok {
            let t: Target = s.parse().expect(s);
            assert_eq!(&t, want);
            assert_eq!(
                t.to_string().parse::<Target>().as_ref(),
                Ok(want),
                "round trip"
            );
        }
        let bad: &[(&str, TargetError)] = &[
            (
                "127.0.0.1:50051",
                TargetError::NoScheme("127.0.0.1:50051".into()),
            ),
            ("http://x:1", TargetError::UnknownScheme("http".into())),
            ("grpc://host", TargetError::NoPort("grpc://host".into())),
            ("openai://:80", TargetError::NoPort("openai://:80".into())),
            (
                "unix://appld.sock",
                TargetError::RelativeSocket("unix://appld.sock".into()),
            ),
        ];
        for (s, want) in bad {
            assert_eq!(&s.parse::<Target>().unwrap_err(), want, "{s}");
        }
    }

    #[test]
    fn grpc_targets_carry_the_global_credentials() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            conn: ConnArgs,
        }
        let cli = Cli::parse_from([
            "applctl",
            "--ca",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--api-key",
            "s3cret",
        ]);
        for (target, addr) in [
            ("grpcs://h:1", Some("grpcs://h:1")),
            ("grpc://h:2", Some("http://h:2")),
            ("unix:///run/appl/appld.sock", None),
        ] {
            let t: Target = target.parse().expect("parses");
            let Ok(Client::Grpc(g)) = t.client(&cli.conn) else {
                panic!("{target} is a gRPC target")
            };
            let c = g.conn();
            assert_eq!(c.addr.as_deref(), addr, "{target}");
            assert_eq!(c.ca.as_deref(), Some(std::path::Path::new("ca.pem")));
            assert_eq!(c.cert.as_deref(), Some(std::path::Path::new("c.pem")));
            assert_eq!(c.api_key.as_deref(), Some("s3cret"));
        }
    }
}
