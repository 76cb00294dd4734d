use which::which;

fn main() {
    // Building this crate depends on bpf-linker; rebuild when it changes (a new bpf-linker may
    // emit different code).
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("bpf-linker path is UTF-8")
    );
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        // Packet headers sit at any alignment, and without this LLVM splits every 32-bit
        // address load into four byte loads and shifts. The kernel's JIT targets (x86-64,
        // arm64) load unaligned words and the verifier permits it there. (aya-build sets
        // RUSTFLAGS itself, so the flag reaches the linker from here.)
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
    }
}
