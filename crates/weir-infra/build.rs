//! Nothing is generated here. The build-dependency on protoc-bin-vendored exists so that
//! Cargo unpacks a protoc before etcd-client's build script asks for one (see
//! scripts/protoc, which `.cargo/config.toml` names as PROTOC).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
