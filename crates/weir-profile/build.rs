//! Generates the pprof message types from proto/pprof/profile.proto with Debian's protoc.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("pprof/profile.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    prost_build::compile_protos(&[file], &[root])
        .unwrap_or_else(|e| panic!("compiling proto/pprof (is protobuf-compiler installed?): {e}"));
}
