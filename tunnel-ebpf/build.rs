use which::which;

/// Building this crate depends on bpf-linker; rebuild when it changes (a new bpf-linker may
/// emit different code).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_linker.to_str().expect("bpf-linker path is UTF-8")
    );
}
