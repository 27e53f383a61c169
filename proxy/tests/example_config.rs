//! The shipped example configuration stays valid.

#[test]
fn the_static_example_config_parses_and_validates() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/static.toml"
    );
    let c = pgsteer::Config::load(std::path::Path::new(path), std::iter::empty())
        .expect("deploy/examples/static.toml is valid");
    assert_eq!(c.discovery.members.len(), 3);
    assert_eq!(c.listen.rw.map(|a| a.port()), Some(6432));
}
