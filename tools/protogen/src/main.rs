//! Writes src/grpc/proto/<package>.rs for each proto/*.proto kiln serves, each headed by the
//! SHA-256 of the .proto it came from (tests/it/grpc.rs checks that they still match).

use std::path::Path;

use sha2::{Digest, Sha256};

const PROTOS: &[&str] = &["inference.proto"];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_dir = root.join("proto");
    let out_dir = root.join("src/grpc/proto");
    let tmp = std::env::temp_dir().join(format!("kiln-protogen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for file in PROTOS {
        let fds = protox::compile([proto_dir.join(file)], [&proto_dir]).expect("protos compile");
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            // The client's `connect` needs tonic's transport, which kiln does not build.
            .build_transport(false)
            // Raw tensor bytes stay slices of the received buffer (no copy).
            .bytes(".")
            .emit_rerun_if_changed(false)
            .out_dir(&tmp)
            .compile_fds(fds)
            .expect("code generates");
        let source = std::fs::read(proto_dir.join(file)).unwrap();
        let hash: String = Sha256::digest(&source)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let stem = file.trim_end_matches(".proto");
        let code = std::fs::read_to_string(tmp.join(format!("{stem}.rs"))).unwrap();
        let header = format!(
            "// Generated from proto/{file} by tools/protogen (docs/grpc.md): do not edit.\n\
             // proto sha256: {hash}\n"
        );
        std::fs::write(out_dir.join(format!("{stem}.rs")), header + &code).unwrap();
        println!("wrote src/grpc/proto/{stem}.rs");
    }
    std::fs::remove_dir_all(&tmp).ok();
}
