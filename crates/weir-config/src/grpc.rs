//! Reading a route's gRPC descriptors: an encoded `FileDescriptorSet` given as a file, or
//! `.proto` files compiled at load (protox, so no `protoc` is needed), and the
//! `google.api.http` rules read from their method options as domain [`GrpcRule`]s.
//!
//! [`GrpcRule`]: weir_domain::grpc::GrpcRule

mod http_rule;
mod rules;

use std::path::PathBuf;

use prost_reflect::DescriptorPool;
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

pub(crate) use rules::rules;

/// Decodes an encoded `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`,
/// `buf build -o`). Extension options are kept, so `pool.encode_to_vec()` gives back a set
/// that still carries the `google.api.http` annotations.
pub(crate) fn decode_set(bytes: &[u8]) -> Result<DescriptorPool, String> {
    DescriptorPool::decode(bytes).map_err(|e| {
        let hint = if e.to_string().contains("has not been added") {
            " (was it built with --include_imports?)"
        } else {
            ""
        };
        format!("not a usable FileDescriptorSet: {e}{hint}")
    })
}

/// Compiles `.proto` files (named as imports name them, relative to an include directory)
/// and returns the encoded `FileDescriptorSet` with every import included. The standard
/// `google/protobuf/*.proto` files are always importable.
pub(crate) fn compile(files: &[PathBuf], includes: &[PathBuf]) -> Result<Vec<u8>, String> {
    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.clone()));
    }
    // After the user's own, so a service that brings its copies uses them.
    resolver.add(GoogleApi);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_files(files).map_err(|e| render(&e))?;
    Ok(compiler.encode_file_descriptor_set())
}

/// protox's `Debug` is its one-line form with the location, `file.proto:LINE:COL: message`;
/// its `Display` leaves the location out.
fn render(e: &protox::Error) -> String {
    format!("{e:?}")
}

#[cfg(test)]
mod tests;

/// `google/api/annotations.proto` and `google/api/http.proto`, built in: nearly every
/// service with HTTP rules imports them, and few keep a copy beside their own files.
struct GoogleApi;

impl FileResolver for GoogleApi {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        let source = match name {
            "google/api/annotations.proto" => {
                include_str!("../../../examples/protos/google/api/annotations.proto")
            }
            "google/api/http.proto" => {
                include_str!("../../../examples/protos/google/api/http.proto")
            }
            _ => return Err(protox::Error::file_not_found(name)),
        };
        File::from_source(name, source)
    }
}
