//! The structure check of a library's bytes before anything maps them: an ELF shared
//! object of this host's class, byte order and machine, whose program headers, segments
//! and section table all lie within the file.
//!
//! `dlopen` trusts a file's headers: a library cut short (a copy caught mid-write) has
//! segments past its end, and touching them kills the process with SIGBUS (issue 11).
//! The headers are read with the `object` crate, not by hand.

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

/// Checks that `bytes` are a complete ELF shared object for this machine; `Err` says
/// what they are instead, in a user's words.
pub(super) fn check(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    if bytes.len() < 4 || bytes[..4] != elf::ELFMAG {
        return Err(format!(
            "not an ELF file (it starts with `{}`)",
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
                .chars()
                .map(|c| if c.is_control() { '.' } else { c })
                .collect::<String>()
        ));
    }
    let header_len = std::mem::size_of::<FileHeader64<Endianness>>() as u64;
    if len < header_len {
        return Err(incomplete(len, header_len, "its header needs"));
    }
    if cfg!(target_pointer_width = "64") && bytes[4] != elf::ELFCLASS64.0 {
        return Err(
            "a 32-bit library, but this pipe is 64-bit; build the plugin for this \
                    machine"
                .into(),
        );
    }
    let header = FileHeader64::<Endianness>::parse(bytes)
        .map_err(|e| format!("not a valid ELF file ({e})"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("not a valid ELF file ({e})"))?;
    if endian != Endianness::default() {
        return Err(
            "a library for a machine of the other byte order; build the plugin for \
                    this machine"
                .into(),
        );
    }
    let machine = header.e_machine(endian).0;
    if machine != HOST_MACHINE {
        return Err(format!(
            "a library for {} (ELF machine {machine}), but this machine is {}; build the \
             plugin for this machine",
            machine_name(machine),
            machine_name(HOST_MACHINE)
        ));
    }
    let kind = header.e_type(endian).0;
    if kind != elf::ET_DYN.0 {
        return Err(format!(
            "not a shared library but {}; build the plugin as a `cdylib`",
            match kind {
                1 => "an object file (.o)",
                2 => "an executable",
                4 => "a core dump",
                _ => "another kind of ELF file",
            }
        ));
    }
    let phoff = header.e_phoff(endian);
    let phnum = u64::from(header.e_phnum(endian));
    let phentsize = u64::from(header.e_phentsize(endian));
    let table_end = phoff.saturating_add(phnum.saturating_mul(phentsize));
    if table_end > len {
        return Err(incomplete(len, table_end, "its program headers need"));
    }
    let phdrs = header
        .program_headers(endian, bytes)
        .map_err(|e| format!("not a valid ELF file ({e})"))?;
    let segments_end = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) != elf::PT_NULL)
        .map(|ph| ph.p_offset(endian).saturating_add(ph.p_filesz(endian)))
        .max()
        .unwrap_or(0);
    if segments_end > len {
        return Err(incomplete(len, segments_end, "its segments need"));
    }
    // Not needed by the loader, but written last: a file shorter than its section table
    // is still being written, and the rest may follow.
    let shoff = header.e_shoff(endian);
    let sections_end = shoff.saturating_add(
        u64::from(header.e_shnum(endian)).saturating_mul(u64::from(header.e_shentsize(endian))),
    );
    if shoff != 0 && sections_end > len {
        return Err(incomplete(len, sections_end, "its section table needs"));
    }
    Ok(())
}

fn incomplete(len: u64, need: u64, what: &str) -> String {
    format!("incomplete: the file is {len} bytes, {what} {need}; is it still being written?")
}

#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: u16 = elf::EM_X86_64.0;
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: u16 = elf::EM_AARCH64.0;
#[cfg(target_arch = "riscv64")]
const HOST_MACHINE: u16 = elf::EM_RISCV.0;
#[cfg(target_arch = "powerpc64")]
const HOST_MACHINE: u16 = elf::EM_PPC64.0;
#[cfg(target_arch = "s390x")]
const HOST_MACHINE: u16 = elf::EM_S390.0;
#[cfg(target_arch = "loongarch64")]
const HOST_MACHINE: u16 = elf::EM_LOONGARCH.0;

/// The CPUs a user may meet, by ELF machine number.
fn machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "x86 (32-bit)",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC 64",
        22 => "IBM S/390",
        40 => "ARM (32-bit)",
        62 => "x86-64",
        183 => "AArch64 (ARM 64-bit)",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another CPU",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own file: a complete ELF file for this machine (an executable,
    /// so made a shared object for the test; PIE executables already are).
    fn own_bytes() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn text_says_what_it_starts_with() {
        let e = check(b"#!/bin/sh\necho hello\n").unwrap_err();
        assert_eq!(e, "not an ELF file (it starts with `#!/bin/sh.echo h`)");
    }

    #[test]
    fn every_cut_of_a_complete_file_is_incomplete_or_not_elf() {
        let bytes = own_bytes();
        let whole = check(&bytes);
        if let Err(e) = &whole {
            // A non-PIE test binary is an executable; the cuts are still checked.
            assert!(e.contains("executable"), "{e}");
        }
        let step = (bytes.len() / 97).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            let e = check(&bytes[..cut]).unwrap_err();
            assert!(
                e.starts_with("incomplete: the file is") || cut < 4 || e.contains("executable"),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn another_cpu_is_named() {
        let mut bytes = own_bytes();
        let other: u16 = if HOST_MACHINE == 183 { 62 } else { 183 };
        bytes[18..20].copy_from_slice(&other.to_le_bytes());
        let e = check(&bytes).unwrap_err();
        assert!(e.contains("a library for"), "{e}");
        assert!(e.contains(&format!("ELF machine {other}")), "{e}");
    }
}
