//! Starts a default cluster (primary + 2 replicas), prints how long that took and its nodes, and stops it.
//!
//! `cargo run -p pgsteer-cluster --example up [-- <seconds to keep it running>]`

use std::time::{Duration, Instant};

use pgsteer_cluster::{Cluster, Spec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keep = std::env::args()
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()?
        .unwrap_or(0);
    let started = Instant::now();
    let cluster = Cluster::start(&Spec::default())?;
    println!(
        "started in {:.2}s at {}",
        started.elapsed().as_secs_f64(),
        cluster.dir().display()
    );
    for node in cluster.nodes() {
        let role = if cluster.is_in_recovery(&node.name)? {
            "replica"
        } else {
            "primary"
        };
        println!("  {} {} {role}", node.name, node.address());
    }
    std::thread::sleep(Duration::from_secs(keep));
    let stopping = Instant::now();
    drop(cluster);
    println!(
        "stopped and removed in {:.2}s",
        stopping.elapsed().as_secs_f64()
    );
    Ok(())
}
