//! Unit tests of the config: parsing, defaults and every validation error naming its key.

use super::*;

const MINIMAL: &str = r#"
[[models]]
id = "demo"
path = "/models/demo.gguf"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/appl/appld.toml"), text)
}

#[test]
fn minimal_config_takes_defaults() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.server.listen, "", "TCP is off unless configured");
    assert_eq!(c.models[0].slots, 4);
    assert_eq!(c.models[0].chat_template, "embedded");
    assert_eq!(c.default_model(), Some("demo"));
    assert_eq!(c.audit.dir, Path::new("/var/lib/appl/audit"));
    assert_eq!(c.audit.retention_years, 6);
}

#[test]
fn relative_audit_dir_is_relative_to_the_config_file() {
    let c = parse(&format!("[audit]\ndir = \"audit\"\n{MINIMAL}")).expect("valid");
    assert_eq!(c.audit.dir, Path::new("/etc/appl/audit"));
}

#[test]
fn relative_model_path_is_relative_to_the_config_file() {
    let c = parse("[[models]]\nid = \"m\"\npath = \"m.gguf\"\n").expect("valid");
    assert_eq!(c.models[0].path, Path::new("/etc/appl/m.gguf"));
}

/// Each bad config must be refused, and the message must name the offending key.
#[test]
fn bad_configs_name_the_key() {
    let cases: &[(&str, &str)] = &[
        ("[server]\nlisen = \"x\"\n", "lisen"),
        (
            "[server]\nlisten = \"nonsense\"\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "server.listen",
        ),
        (
            "[[models]]\nid = \"a\"\npath = \"a\"\nslots = 0\n",
            "models[0].slots",
        ),
        (
            "[[models]]\nid = \"a\"\npath = \"a\"\nslots = \"four\"\n",
            "slots",
        ),
        (
            "[[models]]\nid = \"a\"\npath = \"a\"\n[[models]]\nid = \"a\"\npath = \"b\"\n",
            "models[1].id",
        ),
        (
            "[[models]]\nid = \"a\"\npath = \"a\"\nbatch_tokens = 2\nslots = 4\n",
            "models[0].batch_tokens",
        ),
        (
            "[limits]\ndefault_max_tokens = 9000\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "limits.default_max_tokens",
        ),
        ("", "models"),
        ("[[models]]\nid = \"a\"\n", "path"),
        ("this is not toml", "line 1"),
        ("[audit]\nlog_prompts = true\n", "log_prompts"),
        (
            "[audit]\ncheckpoint_every_records = 0\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "audit.checkpoint_every_records",
        ),
        (
            "[audit]\ncheckpoint_every_secs = 0\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "audit.checkpoint_every_secs",
        ),
        (
            "[audit]\nretention_years = 0\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "audit.retention_years",
        ),
        (
            "[audit]\ndir = \"\"\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "audit.dir",
        ),
        (
            "[[models]]\nid = \"a\"\npath = \"a\"\ngpu_layers = \"most\"\n",
            "gpu_layers",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "tls.cert",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:1\"\n[tls]\ncert = \"c\"\nkey = \"k\"\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "tls.client_ca",
        ),
        (
            "[tls]\ninsecure_plaintext = true\ncert = \"c\"\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "tls.insecure_plaintext",
        ),
        ("[tls]\nclient_certs = \"maybe\"\n", "client_certs"),
        (
            "[limits]\nmax_message_bytes = 10\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "limits.max_message_bytes",
        ),
        (
            "[limits]\nmax_metadata_bytes = 0\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "limits.max_metadata_bytes",
        ),
        (
            "[limits]\nmax_chat_messages = 0\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "limits.max_chat_messages",
        ),
        (
            "[auth]\nlocal_roles = [\"root\"]\n",
            "local_roles",
        ),
        (
            "[[identities]]\ncn = \"x\"\ntenant = \"nope\"\nroles = [\"inference\"]\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "identities[0].tenant",
        ),
        (
            "[[api_keys]]\nname = \"k\"\nsha256 = \"secret\"\ntenant = \"default\"\nroles = [\"inference\"]\n[[models]]\nid=\"a\"\npath=\"a\"\n",
            "api_keys[0].sha256",
        ),
    ];
    for (text, key) in cases {
        let err = parse(text).expect_err(text).to_string();
        assert!(
            err.contains(key),
            "error for {text:?} should name {key:?}: {err}"
        );
    }
}
