//! Compiles fleet.proto with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=fleet.proto");
    let fds = protox::compile(["fleet.proto"], ["."])?;
    // The RPC is called `Connect`, which would clash with the generated client's
    // `FleetClient::connect(url)` constructor; clients build a `Channel` themselves instead.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
