//! Generates the agent's gRPC types and stubs from proto/ with Debian's protoc:
//! Weir's own API, and Hubble's Observer and Peer APIs (proto/hubble, laid out as
//! Hubble's files are so their imports read the same).
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let agent = root.join("weir/agent/v1/agent.proto");
    let store = root.join("weir/store/v1/store.proto");
    let clustermesh = root.join("weir/clustermesh/v1/clustermesh.proto");
    let containerd = root.join("containerd/services/containers/v1/containers.proto");
    let hubble = root.join("hubble");
    let observer = hubble.join("observer/observer.proto");
    let peer = hubble.join("peer/peer.proto");
    for file in [
        &agent,
        &store,
        &clustermesh,
        &containerd,
        &observer,
        &peer,
        &hubble.join("flow/flow.proto"),
        &hubble.join("relay/relay.proto"),
    ] {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    // Weir's API carries Hubble's Flow: the type generated below.
    tonic_prost_build::configure()
        .extern_path(".flow", "crate::flow")
        .compile_protos(&[agent, store, clustermesh, containerd], &[root.clone(), hubble.clone()])
        .unwrap_or_else(|e| panic!("compiling proto/ (is protobuf-compiler installed?): {e}"));
    // The descriptors are kept: tests check Hubble's names and numbers on them.
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("hubble.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&[observer, peer], &[hubble])
        .unwrap_or_else(|e| panic!("compiling proto/hubble (is protobuf-compiler installed?): {e}"));
}
