//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where a field
//! of a kernel struct is: the thread programs read `skc_cookie` from `struct sock`,
//! whose layout changes between kernels and configurations, at the offset found here
//! (the eBPF programs are Rust, without compile-once-run-everywhere relocations).
//!
//! Format: the kernel's Documentation/bpf/btf.rst — a header, a type section of
//! `btf_type` records each followed by kind-specific data, and a string section.

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One type record's place in the type section.
struct Type {
    kind: u32,
    name_off: u32,
    vlen: u32,
    kind_flag: bool,
    /// Offset of the kind-specific data in the type section.
    data: usize,
}

/// A parsed BTF blob (types indexed by id; id 0 is `void`).
pub struct Btf<'a> {
    types: Vec<Type>,
    type_sec: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob; `None` when it is not one.
    pub fn parse(raw: &'a [u8]) -> Option<Self> {
        let magic = u16::from_le_bytes(raw.get(0..2)?.try_into().ok()?);
        if magic != MAGIC {
            return None;
        }
        let hdr_len = u32_at(raw, 4)? as usize;
        let (type_off, type_len) = (u32_at(raw, 8)? as usize, u32_at(raw, 12)? as usize);
        let (str_off, str_len) = (u32_at(raw, 16)? as usize, u32_at(raw, 20)? as usize);
        let type_sec = raw.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = raw.get(hdr_len + str_off..hdr_len + str_off + str_len)?;
        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            vlen: 0,
            kind_flag: false,
            data: 0,
        }];
        let mut at = 0;
        while at < type_sec.len() {
            let name_off = u32_at(type_sec, at)?;
            let info = u32_at(type_sec, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, info & 0xffff);
            let data = at + 12;
            let extra = match kind {
                1 | 14 | 17 => 4,                      // INT, VAR, DECL_TAG
                3 => 12,                               // ARRAY
                4 | 5 | 15 | 19 => vlen as usize * 12, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => vlen as usize * 8,           // ENUM, FUNC_PROTO
                2 | 7..=12 | 16 | 18 => 0,
                _ => return None,
            };
            types.push(Type {
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                data,
            });
            at = data + extra;
        }
        Some(Self {
            types,
            type_sec,
            strings,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        &s[..s.iter().position(|&c| c == 0).unwrap_or(s.len())]
    }

    /// The byte offset of `field` in the struct named `name`, looking into anonymous
    /// struct and union members; `None` when not found or a bit field.
    pub fn field_offset(&self, name: &str, field: &str) -> Option<u32> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name.as_bytes())?;
        self.find(id, field.as_bytes(), 0)
    }

    fn find(&self, id: usize, field: &[u8], depth: u32) -> Option<u32> {
        let t = self.types.get(id)?;
        if depth > 8 || !(t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.data + i * 12;
            let (name_off, member_type) =
                (u32_at(self.type_sec, m)?, u32_at(self.type_sec, m + 4)?);
            let raw_offset = u32_at(self.type_sec, m + 8)?;
            let (bits, bit_offset) = if t.kind_flag {
                (raw_offset >> 24, raw_offset & 0xff_ffff)
            } else {
                (0, raw_offset)
            };
            if name_off == 0 {
                if let Some(inner) = self.find(member_type as usize, field, depth + 1) {
                    return Some(bit_offset / 8 + inner);
                }
            } else if self.name(name_off) == field {
                return (bits == 0 && bit_offset.is_multiple_of(8)).then_some(bit_offset / 8);
            }
        }
        None
    }
}

/// The offset of `skc_cookie` in `struct sock` (its first member is the
/// `struct sock_common`), from the running kernel's BTF.
pub fn skc_cookie_offset() -> Result<u32, String> {
    let raw = std::fs::read(VMLINUX).map_err(|e| format!("{VMLINUX}: {e}"))?;
    let btf = Btf::parse(&raw).ok_or_else(|| format!("{VMLINUX}: not BTF"))?;
    let common = btf
        .field_offset("sock", "__sk_common")
        .ok_or("struct sock has no __sk_common in the kernel's BTF")?;
    let cookie = btf
        .field_offset("sock_common", "skc_cookie")
        .ok_or("struct sock_common has no skc_cookie in the kernel's BTF")?;
    Ok(common + cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_fields_of_the_running_kernel() {
        // Every kernel the agent supports has BTF here (docs/KERNELS.md).
        let raw = std::fs::read(VMLINUX).expect("kernel BTF");
        let btf = Btf::parse(&raw).expect("parses");
        // Fields whose offsets have been the same for a decade.
        assert_eq!(btf.field_offset("sock_common", "skc_daddr"), Some(0));
        assert_eq!(btf.field_offset("sock_common", "skc_rcv_saddr"), Some(4));
        assert_eq!(btf.field_offset("sock_common", "skc_dport"), Some(12));
        assert_eq!(btf.field_offset("sock_common", "skc_num"), Some(14));
        assert_eq!(btf.field_offset("sock", "__sk_common"), Some(0));
        let off = skc_cookie_offset().expect("skc_cookie");
        assert!(off > 16 && off.is_multiple_of(8), "{off}");
        assert_eq!(btf.field_offset("sock_common", "no_such_field"), None);
        assert_eq!(btf.field_offset("no_such_struct", "skc_num"), None);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Btf::parse(b"").is_none());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).is_none());
        assert!(Btf::parse(b"\x7fELF and then some bytes").is_none());
    }
}
