//! A reader of GGUF files (versions 2 and 3), the container llama.cpp's models and
//! vocabularies come in (ggml's `docs/gguf.md`):
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 kv_count
//! kv_count x   (string key, u32 value type, value)
//! tensor_count x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset)
//! padding to general.alignment (32 unless the key says otherwise)
//! tensor data: each tensor at data_start + offset, offsets multiples of the alignment
//! ```
//!
//! A string is a u64 length and that many UTF-8 bytes; an array is a u32 element type, a
//! u64 count and the elements (arrays of arrays are refused, as ggml does). Everything is
//! little-endian.
//!
//! [`Gguf::parse`] borrows the file's bytes and copies nothing out of them: strings, arrays
//! and tensor data are slices of the input. It is bounded: every count and length is
//! checked against the bytes actually left before anything is read or allocated for it,
//! so a corrupt count fails as [`GgufReadError::Truncated`] instead of asking for
//! gigabytes; the only allocations are one entry per key and per tensor actually present.
//! What it checks, besides the layout: the magic and version, non-empty, unique keys and
//! tensor names, UTF-8 keys and strings, booleans that are 0 or 1, `general.alignment` a
//! u32 power of two, at most 4 dimensions per tensor, a known ggml type whose block size
//! divides the row, an element count and a byte length that fit in 63 bits, each
//! tensor's offset a multiple of the alignment and its bytes inside the file. (llama.cpp
//! further requires tensors to follow each other in order with only alignment padding
//! between them; walsh reads a file laid out otherwise too.)

#[cfg(test)]
mod tests;
mod types;

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

pub use types::{GgmlType, ValueType};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The key that sets the alignment of the data section and of each tensor's offset.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The alignment when [`ALIGNMENT_KEY`] is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// Why a GGUF file cannot be read, or a key or tensor is not what a caller asked for.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum GgufReadError {
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    BadMagic { found: Vec<u8> },

    #[error(
        "unsupported GGUF version {0}: walsh reads versions 2 and 3 (a version that large \
         may be a big-endian file)"
    )]
    UnsupportedVersion(u32),

    #[error("truncated GGUF: {what} needs {needed} bytes at offset {offset}, {left} are left")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
        left: usize,
    },

    #[error("GGUF key {index} is empty")]
    EmptyKey { index: u64 },

    #[error("GGUF key `{key}` appears twice")]
    DuplicateKey { key: String },

    #[error("GGUF: {what} is not UTF-8")]
    NotUtf8 { what: String },

    #[error("GGUF key `{key}` has an unknown value type {code}")]
    UnknownValueType { key: String, code: u32 },

    #[error("GGUF key `{key}` is an array of arrays, which GGUF readers do not support")]
    NestedArray { key: String },

    #[error("GGUF key `{key}` has a boolean byte {byte} (expected 0 or 1)")]
    BadBool { key: String, byte: u8 },

    #[error("GGUF key `{key}` is missing")]
    MissingKey { key: String },

    #[error("GGUF key `{key}` is {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: String,
        found: String,
    },

    #[error("GGUF `{ALIGNMENT_KEY}` is {0}: it must be a power of two")]
    BadAlignment(u64),

    #[error("GGUF tensor `{name}` appears twice")]
    DuplicateTensor { name: String },

    #[error("GGUF tensor `{name}` has {dims} dimensions (at most {MAX_DIMS})")]
    TooManyDims { name: String, dims: u32 },

    #[error("GGUF tensor `{name}` has an unknown ggml type {code}")]
    UnknownTensorType { name: String, code: u32 },

    #[error("GGUF tensor `{name}` has shape {dims:?}: {why}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        why: String,
    },

    #[error(
        "GGUF tensor `{name}` has offset {offset}, not a multiple of the alignment {alignment}"
    )]
    MisalignedOffset {
        name: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "GGUF tensor `{name}`: {bytes} bytes at data offset {offset} run past the end of the \
         file ({available} bytes of tensor data)"
    )]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        bytes: u64,
        available: u64,
    },

    #[error("GGUF tensor `{name}` is missing")]
    MissingTensor { name: String },
}

type Result<T> = std::result::Result<T, GgufReadError>;

/// One metadata value, borrowing its strings and array elements from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// How the value reads in errors: `u32`, `array of str`.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.elem),
            v => v.value_type().name().to_string(),
        }
    }
}

/// An array value: its element type and count, and the elements' bytes in the file
/// (checked when the file was parsed: the count fits, strings are UTF-8, booleans 0 or 1).
#[derive(Clone, Copy, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: usize,
    bytes: &'a [u8],
}

impl fmt::Debug for Array<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({} x {})", self.len, self.elem)
    }
}

impl<'a> Array<'a> {
    pub fn elem(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            elem: self.elem,
            left: self.len,
            cursor: Cursor {
                bytes: self.bytes,
                at: 0,
            },
        }
    }
}

/// The elements of an [`Array`].
pub struct ArrayIter<'a> {
    elem: ValueType,
    left: usize,
    cursor: Cursor<'a>,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;
    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The parse checked every element, so this reads what it read then.
        self.cursor.scalar(self.elem).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// A tensor's header entry, with its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo<'a> {
    pub name: &'a str,
    /// ggml order: the row length (innermost dimension) first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset in the data section (a multiple of the alignment).
    pub offset: u64,
    /// The tensor's bytes: elements / block size x bytes per block.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    /// Elements in the tensor (the product of its dimensions).
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file, borrowing the file's bytes.
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    /// The metadata in file order.
    metadata: Vec<(&'a str, Value<'a>)>,
    index: HashMap<&'a str, usize>,
    tensors: Vec<TensorInfo<'a>>,
    tensor_index: HashMap<&'a str, usize>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Where the tensor data section starts in the file.
    pub data_start: usize,
}

impl<'a> Gguf<'a> {
    /// Parses a whole GGUF file (module docs say what is checked).
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.take(4).map_err(|e| e.at("the magic"))?;
        if magic != MAGIC {
            return Err(GgufReadError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let version = c.u32().map_err(|e| e.at("the version"))?;
        if !(2..=3).contains(&version) {
            return Err(GgufReadError::UnsupportedVersion(version));
        }
        let n_tensors = c.u64().map_err(|e| e.at("the tensor count"))?;
        let n_kv = c.u64().map_err(|e| e.at("the key count"))?;

        // No capacity from the counts: each entry takes bytes, so the loops end with the
        // file however large a count claims to be.
        let mut metadata = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("key {i}"))?;
            if key.is_empty() {
                return Err(GgufReadError::EmptyKey { index: i });
            }
            let code = c
                .u32()
                .map_err(|e| e.at(format!("the type of key `{key}`")))?;
            let value = c.value(key, code)?;
            if index.insert(key, metadata.len()).is_some() {
                return Err(GgufReadError::DuplicateKey {
                    key: key.to_string(),
                });
            }
            metadata.push((key, value));
        }

        let alignment = match index.get(ALIGNMENT_KEY).map(|&i| metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) => u64::from(a),
            Some(other) => {
                return Err(GgufReadError::WrongType {
                    key: ALIGNMENT_KEY.to_string(),
                    expected: "u32".into(),
                    found: other.type_name(),
                });
            }
        };
        if !alignment.is_power_of_two() {
            return Err(GgufReadError::BadAlignment(alignment));
        }

        struct Header<'a> {
            name: &'a str,
            dims: Vec<u64>,
            ty: GgmlType,
            offset: u64,
            bytes: u64,
        }
        let mut headers = Vec::new();
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor {i}'s name"))?;
            let what = |field: &str| format!("tensor `{name}`'s {field}");
            let n_dims = c.u32().map_err(|e| e.at(what("dimension count")))?;
            if n_dims as usize > MAX_DIMS {
                return Err(GgufReadError::TooManyDims {
                    name: name.to_string(),
                    dims: n_dims,
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64().map_err(|e| e.at(what("dimensions")))?);
            }
            let code = c.u32().map_err(|e| e.at(what("type")))?;
            let ty = GgmlType::from_id(code).ok_or_else(|| GgufReadError::UnknownTensorType {
                name: name.to_string(),
                code,
            })?;
            let offset = c.u64().map_err(|e| e.at(what("offset")))?;
            let bytes = tensor_bytes(name, &dims, ty)?;
            if offset % alignment != 0 {
                return Err(GgufReadError::MisalignedOffset {
                    name: name.to_string(),
                    offset,
                    alignment,
                });
            }
            if tensor_index.insert(name, headers.len()).is_some() {
                return Err(GgufReadError::DuplicateTensor {
                    name: name.to_string(),
                });
            }
            headers.push(Header {
                name,
                dims,
                ty,
                offset,
                bytes,
            });
        }

        // The data section starts at the next multiple of the alignment (ggml pads the
        // header even when the file holds no tensor).
        let data_start = u64::try_from(c.at)
            .ok()
            .and_then(|at| at.checked_next_multiple_of(alignment))
            .and_then(|s| usize::try_from(s).ok())
            .unwrap_or(usize::MAX);
        let available = bytes.len().saturating_sub(data_start) as u64;
        let mut tensors = Vec::with_capacity(headers.len());
        for h in headers {
            let out_of_bounds = || GgufReadError::TensorOutOfBounds {
                name: h.name.to_string(),
                offset: h.offset,
                bytes: h.bytes,
                available,
            };
            let end = h.offset.checked_add(h.bytes).ok_or_else(out_of_bounds)?;
            if end > available {
                return Err(out_of_bounds());
            }
            // Both fit in the file, so in usize.
            let (lo, hi) = (data_start + h.offset as usize, data_start + end as usize);
            tensors.push(TensorInfo {
                name: h.name,
                dims: h.dims,
                ty: h.ty,
                offset: h.offset,
                data: &bytes[lo..hi],
            });
        }
        Ok(Gguf {
            version,
            metadata,
            index,
            tensors,
            tensor_index,
            alignment,
            data_start,
        })
    }

    /// Every key and value, in file order.
    pub fn metadata(&self) -> &[(&'a str, Value<'a>)] {
        &self.metadata
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[TensorInfo<'a>] {
        &self.tensors
    }

    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.index.get(key).map(|&i| self.metadata[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// `key` as `T`: [`GgufReadError::MissingKey`] when absent, [`GgufReadError::WrongType`]
    /// when of another type.
    pub fn get_as<T: FromValue<'a>>(&self, key: &str) -> Result<T> {
        self.get_opt(key)?.ok_or_else(|| GgufReadError::MissingKey {
            key: key.to_string(),
        })
    }

    /// `key` as `T` when present; [`GgufReadError::WrongType`] when of another type.
    pub fn get_opt<T: FromValue<'a>>(&self, key: &str) -> Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        T::from_value(value)
            .map(Some)
            .ok_or_else(|| GgufReadError::WrongType {
                key: key.to_string(),
                expected: T::EXPECTED.to_string(),
                found: value.type_name(),
            })
    }

    pub fn get_str(&self, key: &str) -> Result<&'a str> {
        self.get_as(key)
    }

    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.get_as(key)
    }

    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.get_as(key)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.get_as(key)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.get_as(key)
    }

    /// An array of f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.get_as(key)
    }

    /// An array of i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.get_as(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo<'a>> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor `name`, or [`GgufReadError::MissingTensor`].
    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo<'a>> {
        self.tensor(name)
            .ok_or_else(|| GgufReadError::MissingTensor {
                name: name.to_string(),
            })
    }
}

/// A type a metadata value can be read as (by [`Gguf::get_as`]).
pub trait FromValue<'a>: Sized {
    /// What errors say was expected.
    const EXPECTED: &'static str;
    fn from_value(value: Value<'a>) -> Option<Self>;
}

macro_rules! scalar_from_value {
    ($t:ty, $variant:ident, $name:literal) => {
        impl<'a> FromValue<'a> for $t {
            const EXPECTED: &'static str = $name;
            fn from_value(value: Value<'a>) -> Option<Self> {
                match value {
                    Value::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

scalar_from_value!(u8, U8, "u8");
scalar_from_value!(i8, I8, "i8");
scalar_from_value!(u16, U16, "u16");
scalar_from_value!(i16, I16, "i16");
scalar_from_value!(u32, U32, "u32");
scalar_from_value!(i32, I32, "i32");
scalar_from_value!(f32, F32, "f32");
scalar_from_value!(bool, Bool, "bool");
scalar_from_value!(u64, U64, "u64");
scalar_from_value!(i64, I64, "i64");
scalar_from_value!(f64, F64, "f64");
scalar_from_value!(&'a str, Str, "str");
scalar_from_value!(Array<'a>, Array, "array");

macro_rules! vec_from_value {
    ($t:ty, $elem:ident, $variant:ident, $name:literal) => {
        impl<'a> FromValue<'a> for Vec<$t> {
            const EXPECTED: &'static str = $name;
            fn from_value(value: Value<'a>) -> Option<Self> {
                let Value::Array(a) = value else {
                    return None;
                };
                if a.elem != ValueType::$elem {
                    return None;
                }
                // The parse checked that the elements are in the file.
                a.iter()
                    .map(|v| match v {
                        Value::$variant(x) => Some(x),
                        _ => None,
                    })
                    .collect()
            }
        }
    };
}

vec_from_value!(&'a str, String, Str, "array of str");
vec_from_value!(f32, F32, F32, "array of f32");
vec_from_value!(i32, I32, I32, "array of i32");
vec_from_value!(u32, U32, U32, "array of u32");

/// The bytes of a tensor of `dims` and `ty`, checked as ggml checks them.
fn tensor_bytes(name: &str, dims: &[u64], ty: GgmlType) -> Result<u64> {
    let bad = |why: String| GgufReadError::BadShape {
        name: name.to_string(),
        dims: dims.to_vec(),
        why,
    };
    let mut elements: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(bad(format!("dimension {d} is negative as ggml's int64")));
        }
        elements = elements
            .checked_mul(d)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| bad("more than 2^63 elements".into()))?;
    }
    let row = dims.first().copied().unwrap_or(1);
    if row % ty.block_size() != 0 {
        return Err(bad(format!(
            "rows of {row} are not whole {} blocks of {}",
            ty.name(),
            ty.block_size()
        )));
    }
    (elements / ty.block_size())
        .checked_mul(ty.block_bytes())
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(|| bad("more than 2^63 bytes".into()))
}

/// Reading past the end: where, and how much was wanted.
struct Short {
    offset: usize,
    needed: u64,
    left: usize,
}

impl Short {
    fn at(self, what: impl Into<String>) -> GgufReadError {
        GgufReadError::Truncated {
            what: what.into(),
            offset: self.offset,
            needed: self.needed,
            left: self.left,
        }
    }
}

#[derive(Clone, Copy)]
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: u64) -> std::result::Result<&'a [u8], Short> {
        let short = Short {
            offset: self.at,
            needed: n,
            left: self.left(),
        };
        let n = usize::try_from(n).map_err(|_| short)?;
        if n > self.left() {
            return Err(Short {
                offset: self.at,
                needed: n as u64,
                left: self.left(),
            });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], Short> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u32(&mut self) -> std::result::Result<u32, Short> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::result::Result<u64, Short> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string; `what` names it in errors.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<&'a str> {
        let n = self
            .u64()
            .map_err(|e| e.at(format!("{}'s length", what())))?;
        let bytes = self.take(n).map_err(|e| e.at(what()))?;
        std::str::from_utf8(bytes).map_err(|_| GgufReadError::NotUtf8 { what: what() })
    }

    /// One value of a scalar or string type, after the checks [`Cursor::value`] made.
    fn scalar(&mut self, ty: ValueType) -> std::result::Result<Value<'a>, Short> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array()?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array()?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => Value::Bool(self.array::<1>()?[0] != 0),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array()?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::String => {
                let n = self.u64()?;
                Value::Str(std::str::from_utf8(self.take(n)?).unwrap_or_default())
            }
            // Arrays are not elements (refused by `value`).
            ValueType::Array => Value::Array(Array {
                elem: ValueType::U8,
                len: 0,
                bytes: &[],
            }),
        })
    }

    /// The value of `key`, of type `code`, checked.
    fn value(&mut self, key: &str, code: u32) -> Result<Value<'a>> {
        let ty = ValueType::from_code(code).ok_or_else(|| GgufReadError::UnknownValueType {
            key: key.to_string(),
            code,
        })?;
        let what = || format!("the value of `{key}`");
        match ty {
            ValueType::Array => {
                let elem_code = self.u32().map_err(|e| e.at(what()))?;
                let elem = ValueType::from_code(elem_code).ok_or_else(|| {
                    GgufReadError::UnknownValueType {
                        key: key.to_string(),
                        code: elem_code,
                    }
                })?;
                if elem == ValueType::Array {
                    return Err(GgufReadError::NestedArray {
                        key: key.to_string(),
                    });
                }
                let count = self.u64().map_err(|e| e.at(what()))?;
                let start = self.at;
                match elem.fixed_size() {
                    Some(size) => {
                        let n = count.saturating_mul(size as u64);
                        let bytes = self.take(n).map_err(|e| e.at(what()))?;
                        if elem == ValueType::Bool
                            && let Some(&b) = bytes.iter().find(|&&b| b > 1)
                        {
                            return Err(GgufReadError::BadBool {
                                key: key.to_string(),
                                byte: b,
                            });
                        }
                    }
                    None => {
                        // Strings: each at least its 8-byte length, so the loop ends with
                        // the file whatever the count.
                        for i in 0..count {
                            self.string(&|| format!("element {i} of `{key}`"))?;
                        }
                    }
                }
                Ok(Value::Array(Array {
                    elem,
                    // The elements are in the file, so the count fits in usize.
                    len: count as usize,
                    bytes: &self.bytes[start..self.at],
                }))
            }
            ValueType::String => Ok(Value::Str(self.string(&what)?)),
            ValueType::Bool => {
                let b = self.array::<1>().map_err(|e| e.at(what()))?[0];
                if b > 1 {
                    return Err(GgufReadError::BadBool {
                        key: key.to_string(),
                        byte: b,
                    });
                }
                Ok(Value::Bool(b == 1))
            }
            _ => self.scalar(ty).map_err(|e| e.at(what())),
        }
    }
}
