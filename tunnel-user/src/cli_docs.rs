//! Man pages and shell completions made from a binary's command line (clap), for the package:
//! each binary writes its own with a hidden argument (`tunnel write-docs DIR`,
//! `tunneld --write-docs DIR`, `tunnel-gateway write-docs DIR`), which `cargo xtask package`
//! runs.
//!
//! ```text
//!  DIR/man/NAME.1             the command
//!  DIR/man/NAME-SUB.1         each visible subcommand
//!  DIR/completions/NAME.bash, _NAME (zsh), NAME.fish
//! ```

use std::{fs, io, path::Path};

use clap_complete::Shell;

/// Writes the man pages and completions of `cmd` under `dir`.
pub fn write(mut cmd: clap::Command, dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;
    cmd.build();
    let name = cmd.get_name().to_string();
    write_page(&cmd, &man.join(format!("{name}.1")))?;
    // clap's own `help` subcommand is `--help` again: no page of its own.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let page_name = format!("{name}-{}", sub.get_name());
        let version = cmd.get_version().unwrap_or_default().to_string();
        let sub = sub.clone().name(page_name.clone()).version(version);
        write_page(&sub, &man.join(format!("{page_name}.1")))?;
    }
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = fs::File::create(completions.join(file))?;
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut out);
    }
    Ok(())
}

fn write_page(cmd: &clap::Command, path: &Path) -> io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_for_a_command_and_its_visible_subcommands() {
        let dir = std::env::temp_dir().join(format!("tunnel-cli-docs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut cmd = clap::Command::new("demo")
            .version("1.2.3")
            .about("a demo")
            .subcommand(clap::Command::new("run").about("runs it"))
            .subcommand(clap::Command::new("secret").hide(true));
        cmd.build();
        assert!(cmd.find_subcommand("help").is_some());
        write(cmd, &dir).unwrap();
        let page = fs::read_to_string(dir.join("man/demo.1")).unwrap();
        assert!(
            page.contains(".TH demo 1") && page.contains("a demo"),
            "{page}"
        );
        let sub = fs::read_to_string(dir.join("man/demo-run.1")).unwrap();
        assert!(sub.contains("runs it"), "{sub}");
        assert!(!dir.join("man/demo-secret.1").exists());
        assert!(!dir.join("man/demo-help.1").exists());
        let bash = fs::read_to_string(dir.join("completions/demo.bash")).unwrap();
        assert!(bash.contains("run"), "{bash}");
        assert!(dir.join("completions/_demo").exists());
        assert!(dir.join("completions/demo.fish").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
