//! include/barkeep.h is what cbindgen makes of src/lib.rs: regenerate it
//! and fail on any difference (run with BARKEEP_BLESS=1 to rewrite it).

use std::path::Path;

#[test]
fn the_committed_header_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/barkeep.h");
    if std::env::var_os("BARKEEP_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "capi/include/barkeep.h is stale: run `BARKEEP_BLESS=1 cargo test -p barkeep-capi --test header` and commit it"
    );
    // The C API's entry points are all there.
    for f in [
        "barkeep_connect",
        "barkeep_acquire",
        "barkeep_release",
        "barkeep_map",
        "barkeep_write32",
        "barkeep_last_error_message",
    ] {
        assert!(
            generated.contains(&format!("{f}(")),
            "{f} missing from the header"
        );
    }
}
