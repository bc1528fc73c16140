use super::*;

/// A GGUF file written by hand, value by value.
#[derive(Default)]
struct Builder {
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn s(out: &mut Vec<u8>, text: &[u8]) {
    out.extend((text.len() as u64).to_le_bytes());
    out.extend(text);
}

impl Builder {
    fn new() -> Self {
        Builder {
            version: 3,
            ..Default::default()
        }
    }
    /// A key with a raw value (type code and bytes).
    fn raw(mut self, key: &str, code: u32, value: &[u8]) -> Self {
        s(&mut self.kv, key.as_bytes());
        self.kv.extend(code.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn u32(self, key: &str, v: u32) -> Self {
        self.raw(key, 4, &v.to_le_bytes())
    }
    fn str(self, key: &str, v: &str) -> Self {
        let mut b = Vec::new();
        s(&mut b, v.as_bytes());
        self.raw(key, 8, &b)
    }
    fn strs(self, key: &str, v: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        v.iter().for_each(|x| s(&mut b, x.as_bytes()));
        self.raw(key, 9, &b)
    }
    fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        s(&mut self.infos, name.as_bytes());
        self.infos.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| self.infos.extend(d.to_le_bytes()));
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    fn data(mut self, data: &[u8]) -> Self {
        self.data = data.to_vec();
        self
    }
    fn build_aligned(&self, alignment: usize) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        out.resize(out.len().next_multiple_of(alignment), 0);
        out.extend(&self.data);
        out
    }
    fn build(&self) -> Vec<u8> {
        self.build_aligned(32)
    }
}

fn every_type() -> Vec<u8> {
    let f32s: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let mut arr = 6u32.to_le_bytes().to_vec();
    arr.extend(2u64.to_le_bytes());
    arr.extend(&f32s);
    let mut i32s = 5u32.to_le_bytes().to_vec();
    i32s.extend(3u64.to_le_bytes());
    [7i32, -1, 0]
        .iter()
        .for_each(|x| i32s.extend(x.to_le_bytes()));
    let data: Vec<u8> = (0..16u8).collect();
    Builder::new()
        .raw("u8", 0, &[200])
        .raw("i8", 1, &[0xff])
        .raw("u16", 2, &60000u16.to_le_bytes())
        .raw("i16", 3, &(-300i16).to_le_bytes())
        .u32("u32", 4_000_000_000)
        .raw("i32", 5, &(-5i32).to_le_bytes())
        .raw("f32", 6, &0.25f32.to_le_bytes())
        .raw("bool", 7, &[1])
        .str("str", "héllo")
        .raw("u64", 10, &u64::MAX.to_le_bytes())
        .raw("i64", 11, &i64::MIN.to_le_bytes())
        .raw("f64", 12, &1e300f64.to_le_bytes())
        .raw("f32s", 9, &arr)
        .raw("i32s", 9, &i32s)
        .strs("strs", &["a", "", "ünï"])
        .tensor("t", &[4, 1], 0, 0)
        .data(&data)
        .build()
}

#[test]
fn reads_every_value_type_and_a_tensor() {
    let bytes = every_type();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get("u8"), Some(Value::U8(200)));
    assert_eq!(g.get("i8"), Some(Value::I8(-1)));
    assert_eq!(g.get("u16"), Some(Value::U16(60000)));
    assert_eq!(g.get("i16"), Some(Value::I16(-300)));
    assert_eq!(g.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get("i32"), Some(Value::I32(-5)));
    assert_eq!(g.get_f32("f32").unwrap(), 0.25);
    assert!(g.get_bool("bool").unwrap());
    assert_eq!(g.get_str("str").unwrap(), "héllo");
    assert_eq!(g.get_as::<u64>("u64").unwrap(), u64::MAX);
    assert_eq!(g.get_as::<i64>("i64").unwrap(), i64::MIN);
    assert_eq!(g.get_as::<f64>("f64").unwrap(), 1e300);
    assert_eq!(g.get_f32_array("f32s").unwrap(), vec![1.5, -2.0]);
    assert_eq!(g.get_i32_array("i32s").unwrap(), vec![7, -1, 0]);
    assert_eq!(g.get_str_array("strs").unwrap(), vec!["a", "", "ünï"]);
    assert_eq!(g.metadata().len(), 15);
    assert_eq!(g.metadata()[0].0, "u8");
    let t = g.require_tensor("t").unwrap();
    assert_eq!(
        (t.ty, t.dims.as_slice(), t.elements()),
        (GgmlType::F32, &[4u64, 1][..], 4)
    );
    assert_eq!(t.data, &(0..16u8).collect::<Vec<_>>()[..]);
    assert_eq!(g.data_start % 32, 0);
    // Version 2 has the same layout.
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(Gguf::parse(&v2).unwrap().version, 2);
}

#[test]
fn getters_name_the_key_that_is_missing_or_of_another_type() {
    let bytes = every_type();
    let g = Gguf::parse(&bytes).unwrap();
    let e = g.get_str("tokenizer.ggml.model").unwrap_err();
    assert_eq!(
        e,
        GgufReadError::MissingKey {
            key: "tokenizer.ggml.model".into()
        }
    );
    assert!(
        e.to_string().contains("`tokenizer.ggml.model` is missing"),
        "{e}"
    );
    let e = g.get_u32("str").unwrap_err();
    assert_eq!(e.to_string(), "GGUF key `str` is str, expected u32");
    let e = g.get_str_array("f32s").unwrap_err();
    assert_eq!(
        e.to_string(),
        "GGUF key `f32s` is array of f32, expected array of str"
    );
    assert_eq!(g.get_opt::<u32>("absent").unwrap(), None);
    assert!(g.get_opt::<u32>("u8").is_err());
    assert!(g.tensor("nope").is_none());
    assert!(matches!(
        g.require_tensor("nope"),
        Err(GgufReadError::MissingTensor { .. })
    ));
}

fn err(bytes: &[u8]) -> GgufReadError {
    Gguf::parse(bytes).unwrap_err()
}

#[test]
fn refuses_bad_headers() {
    assert!(matches!(err(b"GGU"), GgufReadError::Truncated { .. }));
    assert!(matches!(
        err(b"GGML\x03\0\0\0"),
        GgufReadError::BadMagic { .. }
    ));
    let mut b = Builder::new();
    b.version = 1;
    assert_eq!(err(&b.build()), GgufReadError::UnsupportedVersion(1));
    b.version = 3 << 24; // a big-endian version 3
    assert!(err(&b.build()).to_string().contains("big-endian"));
    // A count far beyond the file fails on the bytes, not on an allocation.
    let mut b = Builder::new().u32("a", 1).build_aligned(1);
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(
        matches!(err(&b), GgufReadError::Truncated { .. }),
        "{}",
        err(&b)
    );
    let mut b = Builder::new().build_aligned(1);
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(err(&b), GgufReadError::Truncated { .. }));
}

#[test]
fn refuses_bad_metadata() {
    let e = err(&Builder::new().u32("a", 1).u32("a", 2).build());
    assert_eq!(e, GgufReadError::DuplicateKey { key: "a".into() });
    assert!(matches!(
        err(&Builder::new().u32("", 1).build()),
        GgufReadError::EmptyKey { .. }
    ));
    let e = err(&Builder::new().raw("k", 13, &[]).build());
    assert_eq!(e.to_string(), "GGUF key `k` has an unknown value type 13");
    let e = err(&Builder::new().raw("k", 7, &[2]).build());
    assert_eq!(
        e,
        GgufReadError::BadBool {
            key: "k".into(),
            byte: 2
        }
    );
    // An array of arrays.
    let mut v = 9u32.to_le_bytes().to_vec();
    v.extend(0u64.to_le_bytes());
    assert_eq!(
        err(&Builder::new().raw("k", 9, &v).build()),
        GgufReadError::NestedArray { key: "k".into() }
    );
    // An array whose count runs past the end, and a huge string count.
    let mut v = 6u32.to_le_bytes().to_vec();
    v.extend((u64::MAX / 2).to_le_bytes());
    let e = err(&Builder::new().raw("k", 9, &v).build());
    assert!(e.to_string().contains("the value of `k`"), "{e}");
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend(u64::MAX.to_le_bytes());
    assert!(matches!(
        err(&Builder::new().raw("k", 9, &v).build()),
        GgufReadError::Truncated { .. }
    ));
    // Not UTF-8.
    let mut v = Vec::new();
    s(&mut v, b"\xff");
    let e = err(&Builder::new().raw("k", 8, &v).build());
    assert!(matches!(e, GgufReadError::NotUtf8 { .. }), "{e}");
    // The alignment: a u32 power of two.
    let e = err(&Builder::new().raw(ALIGNMENT_KEY, 10, &[0; 8]).build());
    assert!(matches!(e, GgufReadError::WrongType { .. }), "{e}");
    assert_eq!(
        err(&Builder::new().u32(ALIGNMENT_KEY, 24).build()),
        GgufReadError::BadAlignment(24)
    );
    assert_eq!(
        err(&Builder::new().u32(ALIGNMENT_KEY, 0).build()),
        GgufReadError::BadAlignment(0)
    );
}

#[test]
fn refuses_bad_tensors() {
    let data = [0u8; 64];
    let one = |dims: &[u64], ty: u32, offset: u64| {
        Builder::new()
            .tensor("w", dims, ty, offset)
            .data(&data)
            .build()
    };
    assert!(Gguf::parse(&one(&[16], 0, 0)).is_ok());
    assert!(Gguf::parse(&one(&[32], 8, 0)).is_ok()); // one Q8_0 block, 34 bytes
    assert!(matches!(
        err(&one(&[1, 1, 1, 1, 1], 0, 0)),
        GgufReadError::TooManyDims { dims: 5, .. }
    ));
    assert!(matches!(
        err(&one(&[4], 4, 0)),
        GgufReadError::UnknownTensorType { code: 4, .. }
    ));
    let e = err(&one(&[16], 8, 0));
    assert!(e.to_string().contains("not whole Q8_0 blocks of 32"), "{e}");
    assert!(matches!(
        err(&one(&[u64::MAX], 0, 0)),
        GgufReadError::BadShape { .. }
    ));
    assert!(matches!(
        err(&one(&[1 << 40, 1 << 40], 0, 0)),
        GgufReadError::BadShape { .. }
    ));
    assert!(matches!(
        err(&one(&[4], 0, 8)),
        GgufReadError::MisalignedOffset { offset: 8, .. }
    ));
    let e = err(&one(&[17], 0, 0));
    assert!(
        matches!(
            e,
            GgufReadError::TensorOutOfBounds {
                bytes: 68,
                available: 64,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        err(&one(&[4], 0, 64)),
        GgufReadError::TensorOutOfBounds { .. }
    ));
    assert!(matches!(
        err(&one(&[4], 0, u64::MAX - 31)),
        GgufReadError::TensorOutOfBounds { .. }
    ));
    let two = Builder::new()
        .tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .data(&data)
        .build();
    assert_eq!(
        err(&two),
        GgufReadError::DuplicateTensor { name: "w".into() }
    );
    // A larger alignment moves the data section.
    let b = Builder::new()
        .u32(ALIGNMENT_KEY, 64)
        .tensor("w", &[4], 0, 0)
        .data(&data);
    let bytes = b.build_aligned(64);
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!((g.alignment, g.data_start % 64), (64, 0));
}

#[test]
fn every_truncation_fails_and_no_byte_flip_panics() {
    let bytes = every_type();
    let g = Gguf::parse(&bytes).unwrap();
    let end = g.data_start + 16;
    for n in 0..end {
        assert!(Gguf::parse(&bytes[..n]).is_err(), "truncated at {n}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let _ = Gguf::parse(&b);
        }
    }
}

#[test]
fn type_codes_match_ggml() {
    for code in 0..13 {
        assert_eq!(ValueType::from_code(code).unwrap().code(), code);
    }
    assert_eq!(ValueType::from_code(13), None);
    for id in 0..43 {
        match GgmlType::from_id(id) {
            Some(t) => assert_eq!(t.id(), id),
            None => assert!([4, 5, 31, 32, 33, 36, 37, 38].contains(&id), "{id}"),
        }
    }
    assert_eq!(GgmlType::Q4K.name(), "Q4_K");
    assert_eq!(
        (GgmlType::Q6K.block_size(), GgmlType::Q6K.block_bytes()),
        (256, 210)
    );
}
