//! `routes[].grpc`: the route's descriptors read (or its .proto files compiled) at load, its
//! `google.api.http` rules extracted and checked, and the upstream it calls checked to speak
//! gRPC.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_domain::grpc::GrpcSpec;
use weir_domain::upstream::Protocol;

use crate::grpc;
use crate::model::GrpcRouteConfig;
use crate::node::KeyPath;
use crate::report::Report;

/// `protocol`: the route's upstream's, when the route has one that was built.
pub(crate) fn build(
    c: &GrpcRouteConfig,
    protocol: Option<Protocol>,
    dir: &Path,
    path: &KeyPath,
    r: &mut Report<'_>,
) -> Option<Arc<GrpcSpec>> {
    if let Some(p) = protocol
        && p != Protocol::Grpc
    {
        r.at(
            path,
            "`grpc` needs the route's upstream to have `protocol: grpc`",
        );
        return None;
    }
    let (descriptors, source) = match (&c.descriptor_set, c.protos.as_slice()) {
        (Some(_), [_, ..]) => {
            r.at(path, "use `descriptor_set` or `protos`, not both");
            return None;
        }
        (Some(file), []) => {
            let at = path.key("descriptor_set");
            let full = dir.join(file.trim());
            let bytes = match std::fs::read(&full) {
                Ok(b) => b,
                Err(e) => {
                    r.at(&at, format!("cannot read {}: {e}", full.display()));
                    return None;
                }
            };
            // Decoded here only to be checked; the transcoder decodes its own copy.
            r.check(&at, grpc::decode_set(&bytes))?;
            (bytes, file.trim().to_owned())
        }
        (None, []) => (Vec::new(), String::new()),
        (None, files) => {
            let at = path.key("protos");
            let includes: Vec<PathBuf> = if c.import_paths.is_empty() {
                vec![dir.to_path_buf()]
            } else {
                c.import_paths.iter().map(|p| dir.join(p.trim())).collect()
            };
            let files: Vec<PathBuf> = files.iter().map(|f| PathBuf::from(f.trim())).collect();
            let bytes = r.check(&at, grpc::compile(&files, &includes))?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (bytes, names.join(", "))
        }
    };
    let rules = if descriptors.is_empty() {
        Vec::new()
    } else {
        let at = path.key(if c.descriptor_set.is_some() {
            "descriptor_set"
        } else {
            "protos"
        });
        let pool = r.check(&at, grpc::decode_set(&descriptors))?;
        match grpc::rules(&pool) {
            Ok(rules) if rules.is_empty() => {
                r.at(
                    &at,
                    "no method has a google.api.http annotation, so no REST call maps to gRPC \
                     (for gRPC clients alone, leave out descriptor_set and protos)",
                );
                return None;
            }
            Ok(rules) => rules,
            Err(problems) => {
                for p in problems {
                    r.at(&at, p);
                }
                return None;
            }
        }
    };
    if rules.is_empty() && !c.web {
        r.at(
            path,
            "`grpc` needs `descriptor_set` or `protos` (transcoding), or `web: true`",
        );
        return None;
    }
    Some(Arc::new(GrpcSpec {
        descriptors: Arc::from(descriptors),
        rules,
        web: c.web,
        source,
    }))
}
