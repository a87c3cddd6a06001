//! The systemd unit is code: `systemd-analyze verify` accepts it without a warning, its
//! `systemd-analyze security` exposure stays at or under 2.0, and it agrees with the packaged
//! config, sysusers and tmpfiles files on users and paths.
//!
//! Needs `systemd-analyze` (Debian: the `systemd` package; `scripts/deps.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn read(name: &str) -> String {
    let p = packaging().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); install systemd (scripts/deps.sh does)")
        })
}

/// The values of `key=` in the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    // verify insists that ExecStart's binary exists, so point it at the one just built.
    let unit = read("appld.service").replace("/usr/bin/appld", env!("CARGO_BIN_EXE_appld"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appld.service");
    std::fs::write(&path, unit).unwrap();
    let out = systemd_analyze(&["verify", "--man=no", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn a_typo_in_the_unit_is_caught() {
    // The check above has teeth: an unknown key is reported.
    let unit = read("appld.service")
        .replace("/usr/bin/appld", env!("CARGO_BIN_EXE_appld"))
        .replace("Type=notify", "Tyep=notify");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("appld.service");
    std::fs::write(&path, unit).unwrap();
    let out = systemd_analyze(&["verify", "--man=no", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Tyep"));
}

#[test]
fn security_exposure_is_at_most_2_0() {
    // systemd 252 takes the threshold on a 0-100 scale: 20 is an exposure of 2.0.
    let path = packaging().join("appld.service");
    let out = systemd_analyze(&[
        "security",
        "--offline=true",
        "--threshold=20",
        "--no-pager",
        path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no overall line");
    assert!(
        out.status.success(),
        "exposure above 2.0: {overall}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unit_config_sysusers_and_tmpfiles_agree() {
    let unit = read("appld.service");
    let config: toml::Table = read("appld.toml").parse().expect("packaged config is TOML");
    let sysusers = read("appl.sysusers");
    let tmpfiles = read("appl.tmpfiles");

    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "User"), ["appl"]);
    assert!(sysusers.lines().any(|l| l.starts_with("u appl ")));
    for group in ["video", "render"] {
        assert!(
            sysusers.lines().any(|l| l == format!("m appl {group}")),
            "sysusers puts appl in {group}"
        );
    }
    assert!(sysusers.lines().any(|l| l.starts_with("g appl-admin ")));

    // The socket lives in the runtime directory; audit log and models in the state directory.
    let runtime = unit_values(&unit, "RuntimeDirectory")[0];
    let state: Vec<&str> = unit_values(&unit, "StateDirectory")[0]
        .split_whitespace()
        .collect();
    let socket = Path::new(config["server"]["socket"].as_str().unwrap());
    assert_eq!(socket.parent().unwrap(), Path::new("/run").join(runtime));
    let audit = Path::new(config["audit"]["dir"].as_str().unwrap());
    assert!(state.iter().any(|s| Path::new("/var/lib").join(s) == audit));
    let models = config["models"].as_array().unwrap();
    for m in models {
        let path = Path::new(m["path"].as_str().unwrap());
        assert!(
            state
                .iter()
                .any(|s| Path::new("/var/lib").join(s) == path.parent().unwrap()),
            "{} is outside the state directories {state:?}",
            path.display()
        );
    }
    // tmpfiles creates the same folders for runs outside systemd (and the install test).
    for dir in [
        Path::new("/run").join(runtime),
        audit.to_path_buf(),
        Path::new("/var/lib/appl/models").to_path_buf(),
    ] {
        assert!(
            tmpfiles
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(dir.to_str().unwrap())),
            "tmpfiles has no entry for {}",
            dir.display()
        );
    }
}

/// `applctl`, built beside `appld` by `cargo build --workspace --all-targets`.
fn applctl() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/applctl");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

#[test]
fn man_pages_and_completions_come_from_the_flags() {
    let appld = PathBuf::from(env!("CARGO_BIN_EXE_appld"));
    let generate = |bin: &Path, what: &str| {
        let out = Command::new(bin)
            .args(["--generate", what])
            .output()
            .unwrap();
        assert!(out.status.success(), "{} --generate {what}", bin.display());
        String::from_utf8(out.stdout).unwrap()
    };
    // (binary, what, text the output must contain)
    let cases: [(&Path, &str, &[&str]); 8] = [
        (
            &appld,
            "man",
            &[".TH appld 8", "check\\-config", "log\\-format"],
        ),
        (&appld, "complete-bash", &["_appld()", "--check-config"]),
        (
            &appld,
            "complete-zsh",
            &["#compdef appld", "--check-config"],
        ),
        (
            &appld,
            "complete-fish",
            &["complete -c appld", "check-config"],
        ),
        (&applctl(), "man", &[".TH applctl 1", "generate", "audit"]),
        (&applctl(), "complete-bash", &["_applctl()", "status"]),
        (&applctl(), "complete-zsh", &["#compdef applctl", "check"]),
        (
            &applctl(),
            "complete-fish",
            &["complete -c applctl", "models"],
        ),
    ];
    for (bin, what, needles) in cases {
        let text = generate(bin, what);
        for n in needles {
            assert!(
                text.contains(n),
                "{} --generate {what} lacks {n:?}",
                bin.display()
            );
        }
        // The flag that generates them stays out of what users see.
        assert!(!text.contains("generate man"), "{what} shows --generate");
    }
}
