//! A reader for the kernel's BTF that finds the byte offsets of struct fields.
//!
//! Only the parts of the format needed for offsets are read: type records, struct and union
//! members, and the string table. The format is described in the kernel's
//! `Documentation/bpf/btf.rst`. aya's own BTF parser keeps member offsets private, which is
//! why this module exists.

use std::{borrow::Cow, fs, io, path::Path};

/// Path of the running kernel's BTF.
pub(crate) const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, which starts every type record.
const TYPE_RECORD_LEN: usize = 12;
/// Anonymous struct and union members nested deeper than this are not searched.
const MAX_ANONYMOUS_DEPTH: usize = 8;
/// Typedef and modifier chains longer than this are treated as malformed.
const MAX_TYPE_CHAIN: usize = 32;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// An error while reading BTF or looking up a field in it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    /// The BTF file could not be read.
    #[error("failed to read BTF from {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The data is not valid BTF.
    #[error("invalid BTF: {0}")]
    Malformed(Cow<'static, str>),
    /// No struct of that name exists.
    #[error("struct {0} not found in BTF")]
    StructNotFound(String),
    /// The struct has no member of that name, also not inside anonymous members.
    #[error("member {member} not found in {type_name}")]
    MemberNotFound { type_name: String, member: String },
    /// The field exists but is not of the expected kind, or is a bit field.
    #[error("field {field} is not {expected}")]
    UnexpectedField { field: String, expected: FieldKind },
}

/// Expected type of the last field of a path given to [`Btf::field_offset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// A pointer.
    Pointer,
    /// An integer of this many bytes.
    Integer(u32),
    /// A struct or union embedded by value.
    Struct,
}

impl std::fmt::Display for FieldKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pointer => formatter.write_str("a pointer"),
            Self::Integer(size) => write!(formatter, "a {size}-byte integer"),
            Self::Struct => formatter.write_str("a struct or union"),
        }
    }
}

/// Parsed BTF: the raw data plus the position of each type record.
pub(crate) struct Btf {
    data: Vec<u8>,
    types_start: usize,
    strings_start: usize,
    strings_end: usize,
    /// Offset of each type record from the start of `data`. Type id `n` is at index `n - 1`.
    type_offsets: Vec<usize>,
}

/// One type record.
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    name_offset: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` for structs, unions and integers, or `type` for pointers, typedefs and modifiers.
    size_or_type: u32,
    /// Offset of the data that follows the record.
    extra: usize,
}

/// A struct or union member.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_offset: u32,
    type_id: u32,
    bit_offset: u32,
    bit_size: u32,
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub(crate) fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF_PATH))
    }

    /// Reads and parses a BTF file.
    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses raw BTF in the machine's byte order.
    pub(crate) fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(malformed("shorter than its header"));
        }
        if read_u16(&data, 0) != Some(BTF_MAGIC) {
            return Err(malformed("wrong magic number or byte order"));
        }
        let header_len = read_u32(&data, 4).unwrap_or(0) as usize;
        let section = |offset: usize, len: usize| -> Result<(usize, usize), BtfError> {
            let start = header_len
                .checked_add(offset)
                .ok_or_else(|| malformed("section offset overflows"))?;
            let end = start
                .checked_add(len)
                .filter(|&end| end <= data.len())
                .ok_or_else(|| malformed("section extends past the end of the data"))?;
            Ok((start, end))
        };
        let field = |offset| read_u32(&data, offset).unwrap_or(0) as usize;
        let (types_start, types_end) = section(field(8), field(12))?;
        let (strings_start, strings_end) = section(field(16), field(20))?;

        let mut btf = Self {
            data,
            types_start,
            strings_start,
            strings_end,
            type_offsets: Vec::new(),
        };
        btf.index_types(types_end)?;
        Ok(btf)
    }

    /// Returns the byte offset of the field reached by `path` from the start of
    /// `struct struct_name`.
    ///
    /// Each element of `path` names a member of the struct reached so far, also when the member
    /// sits inside anonymous structs or unions. The last member must be of kind `expected`.
    pub(crate) fn field_offset(
        &self,
        struct_name: &str,
        path: &[&str],
        expected: FieldKind,
    ) -> Result<u32, BtfError> {
        let mut type_id = self.struct_id(struct_name)?;
        let mut type_name = struct_name.to_owned();
        let mut offset_bits: u64 = 0;
        let mut last = None;

        for member_name in path {
            let container = self.resolve(type_id)?;
            let (member, member_offset) =
                self.find_member(container, member_name, 0)?
                    .ok_or_else(|| BtfError::MemberNotFound {
                        type_name: type_name.clone(),
                        member: (*member_name).to_owned(),
                    })?;
            offset_bits += member_offset;
            type_id = member.type_id;
            type_name = (*member_name).to_owned();
            last = Some(member);
        }

        let field = path.join(".");
        let unexpected = || BtfError::UnexpectedField {
            field: format!("{struct_name}.{field}"),
            expected,
        };
        let member = last.ok_or_else(unexpected)?;
        if member.bit_size != 0 || !offset_bits.is_multiple_of(8) {
            return Err(unexpected());
        }
        let resolved = self.resolve(type_id)?;
        let matches = match expected {
            FieldKind::Pointer => resolved.kind == KIND_PTR,
            FieldKind::Integer(size) => resolved.kind == KIND_INT && resolved.size_or_type == size,
            FieldKind::Struct => matches!(resolved.kind, KIND_STRUCT | KIND_UNION),
        };
        if !matches {
            return Err(unexpected());
        }
        u32::try_from(offset_bits / 8).map_err(|_| malformed("field offset exceeds u32"))
    }

    fn index_types(&mut self, types_end: usize) -> Result<(), BtfError> {
        let mut offset = self.types_start;
        while offset < types_end {
            let record = self.record_at(offset)?;
            self.type_offsets.push(offset);
            offset = record
                .extra
                .checked_add(extra_len(&record)?)
                .filter(|&end| end <= types_end)
                .ok_or_else(|| malformed("type record extends past the type section"))?;
        }
        Ok(())
    }

    fn record_at(&self, offset: usize) -> Result<TypeRecord, BtfError> {
        let word = |index: usize| {
            read_u32(&self.data, offset + 4 * index)
                .ok_or_else(|| malformed("truncated type record"))
        };
        let info = word(1)?;
        Ok(TypeRecord {
            name_offset: word(0)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: word(2)?,
            extra: offset + TYPE_RECORD_LEN,
        })
    }

    fn type_by_id(&self, type_id: u32) -> Result<TypeRecord, BtfError> {
        let index = (type_id as usize)
            .checked_sub(1)
            .ok_or_else(|| malformed("reference to type id 0 (void)"))?;
        let offset = *self
            .type_offsets
            .get(index)
            .ok_or_else(|| malformed("reference to a type id past the last type"))?;
        self.record_at(offset)
    }

    /// Follows typedefs and type modifiers to the underlying type.
    fn resolve(&self, mut type_id: u32) -> Result<TypeRecord, BtfError> {
        for _ in 0..MAX_TYPE_CHAIN {
            let record = self.type_by_id(type_id)?;
            match record.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    type_id = record.size_or_type;
                }
                _ => return Ok(record),
            }
        }
        Err(malformed("typedef or modifier chain too long"))
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        for (index, &offset) in self.type_offsets.iter().enumerate() {
            let record = self.record_at(offset)?;
            if record.kind == KIND_STRUCT
                && record.vlen > 0
                && self.name(record.name_offset)? == name.as_bytes()
            {
                return u32::try_from(index + 1).map_err(|_| malformed("too many types"));
            }
        }
        Err(BtfError::StructNotFound(name.to_owned()))
    }

    /// Searches `container` for a member named `name`, descending into anonymous members.
    /// Returns the member and its offset in bits from the start of `container`.
    fn find_member(
        &self,
        container: TypeRecord,
        name: &str,
        depth: usize,
    ) -> Result<Option<(Member, u64)>, BtfError> {
        if !matches!(container.kind, KIND_STRUCT | KIND_UNION) || depth > MAX_ANONYMOUS_DEPTH {
            return Ok(None);
        }
        for index in 0..container.vlen {
            let member = self.member(container, index)?;
            let offset = u64::from(member.bit_offset);
            if member.name_offset == 0 {
                let inner = self.resolve(member.type_id)?;
                if let Some((found, inner_offset)) = self.find_member(inner, name, depth + 1)? {
                    return Ok(Some((found, offset + inner_offset)));
                }
            } else if self.name(member.name_offset)? == name.as_bytes() {
                return Ok(Some((member, offset)));
            }
        }
        Ok(None)
    }

    fn member(&self, container: TypeRecord, index: usize) -> Result<Member, BtfError> {
        let offset = container.extra + index * 12;
        let word = |field: usize| {
            read_u32(&self.data, offset + 4 * field).ok_or_else(|| malformed("truncated member"))
        };
        let raw_offset = word(2)?;
        // With `kind_flag` set, the offset word contains the bit field size in its top 8 bits.
        let (bit_offset, bit_size) = if container.kind_flag {
            (raw_offset & 0x00ff_ffff, raw_offset >> 24)
        } else {
            (raw_offset, 0)
        };
        Ok(Member {
            name_offset: word(0)?,
            type_id: word(1)?,
            bit_offset,
            bit_size,
        })
    }

    /// Returns the NUL-terminated string at `offset` in the string section, without the NUL.
    fn name(&self, offset: u32) -> Result<&[u8], BtfError> {
        let start = self
            .strings_start
            .checked_add(offset as usize)
            .filter(|&start| start < self.strings_end)
            .ok_or_else(|| malformed("string offset past the string section"))?;
        let strings = &self.data[start..self.strings_end];
        let len = strings
            .iter()
            .position(|&byte| byte == 0)
            .ok_or_else(|| malformed("unterminated string"))?;
        Ok(&strings[..len])
    }
}

/// Returns the length of the kind-specific data after a type record.
fn extra_len(record: &TypeRecord) -> Result<usize, BtfError> {
    let len = match record.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * record.vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * record.vlen,
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        kind => {
            return Err(BtfError::Malformed(
                format!("unknown type kind {kind}").into(),
            ));
        }
    };
    Ok(len)
}

fn malformed(reason: &'static str) -> BtfError {
    BtfError::Malformed(reason.into())
}

fn read_u16(data: &[u8], offset: usize) -> Option<u16> {
    let bytes = data.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

fn read_u32(data: &[u8], offset: usize) -> Option<u32> {
    let bytes = data.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests;
