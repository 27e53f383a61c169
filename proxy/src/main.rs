//! pgsteer command line (placeholder until the proxy lands).
fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => println!("pgsteer demo: not yet available"),
        _ => println!("usage: pgsteer demo"),
    }
}
