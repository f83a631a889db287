//! Generates the agent's gRPC types and stubs from proto/ with Debian's protoc.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("weir/agent/v1/agent.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure()
        .compile_protos(&[file], &[root])
        .unwrap_or_else(|e| panic!("compiling proto/ (is protobuf-compiler installed?): {e}"));
}
