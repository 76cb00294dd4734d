fn main() -> anyhow::Result<()> {
    let mut ebpf = aya::Ebpf::load(tunnel_user::EBPF_OBJECT)?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for name in names {
        let prog = ebpf.program_mut(&name).unwrap();
        match prog {
            aya::programs::Program::SchedClassifier(p) => p.load()?,
            aya::programs::Program::Xdp(p) => p.load()?,
            _ => {}
        }
        println!("loaded {name}");
    }
    Ok(())
}
