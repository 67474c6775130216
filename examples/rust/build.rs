//! Links the static libzero_copy_net.a from ZCN_LIB_DIR (a CMake build
//! directory or an installed lib directory), plus liburing and pthreads,
//! which the archive needs. Without ZCN_LIB_DIR, the repository's own
//! `build/` directory (two levels up) is tried.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=ZCN_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let dir = match env::var_os("ZCN_LIB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../build"),
    };
    let archive = dir.join("libzero_copy_net.a");
    if !archive.is_file() {
        panic!(
            "{} not found. Build the C library first and point ZCN_LIB_DIR at it:\n  \
             cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j\n  \
             ZCN_LIB_DIR=$PWD/build cargo build --offline --manifest-path examples/rust/Cargo.toml",
            archive.display()
        );
    }
    // Relink when the library is rebuilt.
    println!("cargo:rerun-if-changed={}", archive.display());
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=zero_copy_net");
    println!("cargo:rustc-link-lib=dylib=uring");
    println!("cargo:rustc-link-lib=dylib=pthread");
}
