use super::*;

/// Builds BTF in memory, one type record at a time.
#[derive(Default)]
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl BtfBuilder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }

    fn string(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset
    }

    fn record(
        &mut self,
        name: &str,
        kind: u32,
        vlen: u32,
        kind_flag: bool,
        size_or_type: u32,
    ) -> u32 {
        let name_offset = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for word in [name_offset, info, size_or_type] {
            self.types.extend_from_slice(&word.to_ne_bytes());
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.record(name, KIND_INT, 0, false, size);
        self.types.extend_from_slice(&(size * 8).to_ne_bytes());
        id
    }

    fn pointer(&mut self, target: u32) -> u32 {
        self.record("", KIND_PTR, 0, false, target)
    }

    fn typedef(&mut self, name: &str, target: u32) -> u32 {
        self.record(name, KIND_TYPEDEF, 0, false, target)
    }

    /// Adds a struct or union with members given as (name, type id, offset word).
    fn composite(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        kind_flag: bool,
        members: &[(&str, u32, u32)],
    ) -> u32 {
        let id = self.record(name, kind, members.len() as u32, kind_flag, size);
        for &(member_name, type_id, offset) in members {
            let name_offset = self.string(member_name);
            for word in [name_offset, type_id, offset] {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
        }
        id
    }

    fn build(self) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
        data.extend_from_slice(&[1, 0]);
        let types_len = self.types.len() as u32;
        for word in [
            HEADER_LEN as u32,
            0,
            types_len,
            types_len,
            self.strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_ne_bytes());
        }
        data.extend_from_slice(&self.types);
        data.extend_from_slice(&self.strings);
        data
    }
}

/// Builds BTF for these types, in which `outer.in.next` sits at byte 24:
///
/// ```c
/// struct inner {};
/// struct inner_body { u64 skip; struct inner *next; };
/// struct outer {
///     int a;
///     union { long b; struct { int c; const struct inner_body in; }; };
///     int bits : 3;
/// };
/// ```
fn sample() -> Btf {
    let mut builder = BtfBuilder::new();
    let int = builder.int("int", 4);
    let long = builder.int("long", 8);
    let u64_type = builder.typedef("u64", long);

    let inner = builder.composite(KIND_STRUCT, "inner", 0, false, &[]);
    let inner_pointer = builder.pointer(inner);
    let inner_body = builder.composite(
        KIND_STRUCT,
        "inner_body",
        16,
        false,
        &[("skip", u64_type, 0), ("next", inner_pointer, 64)],
    );
    let inner_body_const = builder.record("", KIND_CONST, 0, false, inner_body);

    let anon_struct = builder.composite(
        KIND_STRUCT,
        "",
        24,
        false,
        &[("c", int, 0), ("in", inner_body_const, 64)],
    );
    let anon_union = builder.composite(
        KIND_UNION,
        "",
        24,
        false,
        &[("b", long, 0), ("", anon_struct, 0)],
    );
    // `kind_flag` set: the offset words carry bit field sizes in their top 8 bits.
    builder.composite(
        KIND_STRUCT,
        "outer",
        40,
        true,
        &[
            ("a", int, 0),
            ("", anon_union, 64),
            ("bits", int, (3 << 24) | 256),
        ],
    );

    Btf::parse(builder.build()).expect("sample BTF parses")
}

#[test]
fn field_offset_adds_anonymous_members() {
    let btf = sample();

    let offset = btf
        .field_offset("outer", &["c"], FieldKind::Integer(4))
        .unwrap();

    assert_eq!(offset, 8);
}

#[test]
fn field_offset_follows_embedded_struct() {
    let btf = sample();

    let offset = btf
        .field_offset("outer", &["in", "next"], FieldKind::Pointer)
        .unwrap();

    assert_eq!(offset, 8 + 8 + 8);
}

#[test]
fn field_offset_resolves_typedef() {
    let btf = sample();

    let offset = btf
        .field_offset("outer", &["in", "skip"], FieldKind::Integer(8))
        .unwrap();

    assert_eq!(offset, 16);
}

#[test]
fn field_offset_rejects_wrong_kind() {
    let btf = sample();

    let error = btf
        .field_offset("outer", &["b"], FieldKind::Pointer)
        .unwrap_err();

    assert!(matches!(error, BtfError::UnexpectedField { .. }), "{error}");
}

#[test]
fn field_offset_rejects_bit_field() {
    let btf = sample();

    let error = btf
        .field_offset("outer", &["bits"], FieldKind::Integer(4))
        .unwrap_err();

    assert!(matches!(error, BtfError::UnexpectedField { .. }), "{error}");
}

#[test]
fn field_offset_reports_missing_member() {
    let btf = sample();

    let error = btf
        .field_offset("outer", &["in", "missing"], FieldKind::Pointer)
        .unwrap_err();

    assert!(matches!(error, BtfError::MemberNotFound { .. }), "{error}");
}

#[test]
fn field_offset_reports_missing_struct() {
    let btf = sample();

    let error = btf
        .field_offset("absent", &["a"], FieldKind::Pointer)
        .unwrap_err();

    assert!(matches!(error, BtfError::StructNotFound(_)), "{error}");
}

#[test]
fn parse_rejects_wrong_magic() {
    let mut data = BtfBuilder::new().build();
    data[0] ^= 0xff;

    let error = Btf::parse(data).err().expect("wrong magic is rejected");

    assert!(matches!(error, BtfError::Malformed(_)), "{error}");
}

#[test]
fn parse_rejects_truncated_types() {
    let mut builder = BtfBuilder::new();
    builder.int("int", 4);
    let mut data = builder.build();
    // Claim a type section longer than the data.
    data[12..16].copy_from_slice(&1000u32.to_ne_bytes());

    let error = Btf::parse(data).err().expect("truncated BTF is rejected");

    assert!(matches!(error, BtfError::Malformed(_)), "{error}");
}
