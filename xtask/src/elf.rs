//! Whether a binary runs in an image that holds nothing else: an x86-64 ELF executable with no
//! program interpreter (`PT_INTERP`), so no dynamic loader and no shared library is looked for.

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

pub fn check_static(bytes: &[u8]) -> Result<(), String> {
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    // 64-bit, little-endian, x86-64.
    if bytes.get(4) != Some(&2)
        || bytes.get(5) != Some(&1)
        || u16_at(bytes, 0x12) != Some(EM_X86_64)
    {
        return Err("not a 64-bit little-endian x86-64 ELF file".into());
    }
    let truncated = || "a truncated ELF header".to_string();
    let phoff = u64_at(bytes, 0x20).ok_or_else(truncated)? as usize;
    let phentsize = u16_at(bytes, 0x36).ok_or_else(truncated)? as usize;
    let phnum = u16_at(bytes, 0x38).ok_or_else(truncated)? as usize;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = u32_at(bytes, at).ok_or("a program header past the end of the file")?;
        if kind == PT_INTERP {
            return Err(
                "dynamically linked (it names a program interpreter): the image holds no shared library; build it with `-C target-feature=+crt-static`"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header with the given program header types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + types.len() * 56];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, kind) in types.iter().enumerate() {
            bytes[64 + i * 56..68 + i * 56].copy_from_slice(&kind.to_le_bytes());
        }
        bytes
    }

    #[test]
    fn a_static_binary_passes_and_a_dynamic_one_is_named() {
        // PT_LOAD, PT_DYNAMIC (a static PIE has one), PT_GNU_STACK.
        assert!(check_static(&elf(&[1, 2, 0x6474_e551])).is_ok());
        let err = check_static(&elf(&[6, PT_INTERP, 1])).unwrap_err();
        assert!(err.contains("crt-static"), "{err}");
        assert!(check_static(b"#!/bin/sh\n").is_err());
        let mut truncated = elf(&[1, 1]);
        truncated.truncate(80);
        assert!(check_static(&truncated).is_err());
    }

    #[test]
    fn this_test_binary_is_judged_as_what_it_is() {
        // The test binary itself is dynamically linked (no crt-static): the check must say so.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let result = check_static(&me);
        let interp = me.windows(b"ld-linux".len()).any(|w| w == b"ld-linux");
        assert_eq!(result.is_err(), interp, "{result:?}");
    }
}
