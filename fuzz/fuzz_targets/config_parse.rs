//! Config parsing: any text either parses into a validated config or is refused with an error
//! that names the file; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("/etc/appl/appld.toml");
    match appld::config::Config::parse(path, text) {
        Ok(c) => {
            // A config that validates builds its identity table and reload comparison.
            let _ = appld::identity::AuthTable::from_config(&c);
            let _ = c.default_model();
        }
        Err(e) => assert!(e.to_string().contains("appld.toml"), "{e}"),
    }
});
