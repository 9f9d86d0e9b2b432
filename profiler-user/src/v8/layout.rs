//! V8's object and frame layout, read from the `v8dbg_*` postmortem symbols of
//! the node binary being profiled (V8's tools/gen-postmortem-metadata.py).
//!
//! The binary is hostile input: every value is range-checked, and a missing or
//! out-of-range value makes the whole layout unusable (one error naming it)
//! rather than a layout that could name the wrong function.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use object::{Object, ObjectSection, ObjectSymbol};

/// A node binary is ~100 MB; more than this is not one.
const MAX_BINARY_BYTES: u64 = 512 << 20;
/// Class fields used here sit in an object's first few words.
const MAX_FIELD_OFFSET: i64 = 512;
/// Frame slots used here sit within a few words of the frame pointer.
const MAX_FP_OFFSET: i64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_BINARY_BYTES} bytes")]
    TooLarge { path: String },
    #[error("failed to parse {path} as ELF: {source}")]
    Elf { path: String, source: object::Error },
    #[error("no V8 postmortem metadata (v8dbg_* symbols) in {path}")]
    NoMetadata { path: String },
    #[error("V8 metadata in {path} lacks {missing}")]
    Missing { path: String, missing: String },
    #[error("V8 metadata in {path}: {name} = {value} is out of range")]
    OutOfRange {
        path: String,
        name: String,
        value: i64,
    },
    #[error(
        "V8 in {path} uses pointer compression (tagged size {tagged_size}), which is not read"
    )]
    PointerCompression { path: String, tagged_size: i64 },
}

/// Where things are in V8's heap objects and frames, for one node binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: (u32, u32),
    pub fp_function: i64,
    pub fp_context_or_frame_type: i64,
    pub fp_bytecode_array: Option<i64>,
    pub fp_bytecode_offset: Option<i64>,
    /// Frame-type marker value → V8's name for it (`ExitFrame`, …).
    pub frame_types: HashMap<u64, String>,
    /// File offsets of the embedded builtins (the interpreter, baseline
    /// entry, regexp and JSON code), when the binary names them.
    pub builtins: Option<(u64, u64)>,

    pub heap_object_map: u64,
    pub map_instance_type: u64,
    pub js_function_shared: u64,
    pub sfi_name_or_scope_info: u64,
    pub sfi_script_or_debug_info: u64,
    pub script_name: u64,
    pub script_line_ends: u64,
    pub script_source: u64,
    pub string_length: u64,
    pub seq_one_byte_chars: u64,
    pub seq_two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub fixed_array_length: u64,
    pub fixed_array_data: u64,

    /// JSFunction instance types (V8 has a range of them: class constructors, …).
    pub js_function_types: (u16, u16),
    pub sfi_type: u16,
    pub script_type: u16,
    pub scope_info_type: u16,
    pub fixed_array_type: u16,
    pub first_nonstring_type: u16,
    pub string_representation_mask: u16,
    pub string_encoding_mask: u16,
    pub seq_string_tag: u16,
    pub cons_string_tag: u16,
    pub thin_string_tag: u16,
    pub one_byte_string_tag: u16,

    pub scope_info_first_vars: u64,
    pub scope_info_ncontextlocals: u64,
}

/// The `v8dbg_*` values of one binary, names without the prefix.
pub struct Symbols {
    path: String,
    values: HashMap<String, i64>,
    /// File offsets spanned by the embedded builtins (`Builtins_*`).
    builtins: Option<(u64, u64)>,
}

impl Symbols {
    /// Reads the binary at `path` with O_NOFOLLOW|O_NONBLOCK.
    pub fn read(path: &Path) -> Result<Self, LayoutError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| LayoutError::Read {
                path: path.display().to_string(),
                source,
            })?;
        Self::read_file(&path.display().to_string(), file)
    }

    /// Reads the executable of `pid` through `/proc/PID/exe`: a link the
    /// kernel resolves to the very file the process runs, in whatever mount
    /// namespace (so no O_NOFOLLOW here; the target does not choose it).
    pub fn read_process(pid: u32) -> Result<Self, LayoutError> {
        let path = format!("/proc/{pid}/exe");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|source| LayoutError::Read {
                path: path.clone(),
                source,
            })?;
        Self::read_file(&path, file)
    }

    /// Refuses anything but a regular file of bounded size; reads only the
    /// parts of it the symbols need (a node binary is ~100 MB).
    fn read_file(shown: &str, file: std::fs::File) -> Result<Self, LayoutError> {
        let read_err = |source| LayoutError::Read {
            path: shown.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(read_err(std::io::Error::other("not a regular file")));
        }
        if meta.len() > MAX_BINARY_BYTES {
            return Err(LayoutError::TooLarge {
                path: shown.to_owned(),
            });
        }
        let cache = object::ReadCache::new(file);
        Self::parse(shown, &cache)
    }

    pub fn parse<'d, R: object::ReadRef<'d>>(path: &str, data: R) -> Result<Self, LayoutError> {
        let elf = object::File::parse(data).map_err(|source| LayoutError::Elf {
            path: path.to_owned(),
            source,
        })?;
        let mut values = HashMap::new();
        let mut builtins: Option<(u64, u64)> = None;
        for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
            let Ok(name) = symbol.name() else { continue };
            if name.starts_with("Builtins_") {
                if let Some(start) = file_offset(&elf, symbol.address()) {
                    let end = start.saturating_add(symbol.size().max(1));
                    builtins = Some(match builtins {
                        Some((lo, hi)) => (lo.min(start), hi.max(end)),
                        None => (start, end),
                    });
                }
                continue;
            }
            let key = if let Some(rest) = name.strip_prefix("v8dbg_") {
                rest.to_owned()
            } else if let Some(part) = version_part(name) {
                part.to_owned()
            } else {
                continue;
            };
            if values.contains_key(&key) {
                continue;
            }
            if let Some(value) = read_int(&elf, symbol.address()) {
                values.insert(key, value);
            }
        }
        if !values.keys().any(|k| k.starts_with("class_")) {
            return Err(LayoutError::NoMetadata {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            values,
            builtins,
        })
    }

    /// Replaces one value: how tests build a doctored layout.
    pub fn set(&mut self, name: &str, value: i64) {
        self.values.insert(name.to_owned(), value);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    pub fn value(&self, name: &str) -> Option<i64> {
        self.exact(name)
    }

    /// The full symbol name (without `v8dbg_`) of a class field.
    pub fn field_key(&self, class: &str, field: &str) -> Option<String> {
        let prefix = format!("class_{class}__{field}__");
        self.values
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .min()
            .cloned()
    }

    fn exact(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }

    /// `class_<Class>__<field>__<type>`: the type part differs between V8
    /// versions (`Context` vs `Tagged_Context_`), so only class and field match.
    fn field(&self, class: &str, field: &str) -> Option<i64> {
        let prefix = format!("class_{class}__{field}__");
        let mut found: Vec<(&String, i64)> = self
            .values
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k, *v))
            .collect();
        found.sort();
        // Several type spellings of one field must agree, or none is trusted.
        let first = found.first()?.1;
        found.iter().all(|(_, v)| *v == first).then_some(first)
    }

    /// `type_<Class>__<TYPE>`.
    fn type_of(&self, class: &str) -> Option<i64> {
        let prefix = format!("type_{class}__");
        self.values
            .iter()
            .find(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| *v)
    }
}

/// `v8::internal::Version::major_` and `minor_`, mangled.
fn version_part(name: &str) -> Option<&'static str> {
    match name {
        "_ZN2v88internal7Version6major_E" => Some("version_major"),
        "_ZN2v88internal7Version6minor_E" => Some("version_minor"),
        _ => None,
    }
}

/// Where virtual address `address` of the binary lies in its file.
fn file_offset<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>, address: u64) -> Option<u64> {
    elf.sections().find_map(|section| {
        let start = section.address();
        let inside = address >= start && address < start.saturating_add(section.size());
        let (offset, _) = section.file_range()?;
        inside.then(|| offset + (address - start))
    })
}

/// The 4-byte signed value stored at `address` in a section with file contents.
fn read_int<'d, R: object::ReadRef<'d>>(elf: &object::File<'d, R>, address: u64) -> Option<i64> {
    for section in elf.sections() {
        let start = section.address();
        if address < start || address >= start.saturating_add(section.size()) {
            continue;
        }
        // Zero-valued constants land in .bss, which has no bytes in the file.
        if section.kind() == object::SectionKind::UninitializedData {
            return Some(0);
        }
        // Only the four bytes: `data()` would read a whole (large) section.
        let bytes = section.data_range(address, 4).ok()??;
        let bytes: [u8; 4] = bytes.try_into().ok()?;
        return Some(i64::from(i32::from_le_bytes(bytes)));
    }
    None
}

impl Layout {
    pub fn from_binary(path: &Path) -> Result<Self, LayoutError> {
        Self::from_symbols(&Symbols::read(path)?)
    }

    pub fn from_symbols(s: &Symbols) -> Result<Self, LayoutError> {
        let path = || s.path.clone();
        let missing = |what: &str| LayoutError::Missing {
            path: path(),
            missing: what.to_owned(),
        };
        let range = |name: &str, value: i64, lo: i64, hi: i64| {
            if value < lo || value > hi {
                Err(LayoutError::OutOfRange {
                    path: path(),
                    name: name.to_owned(),
                    value,
                })
            } else {
                Ok(value)
            }
        };
        let constant = |name: &str, lo: i64, hi: i64| -> Result<i64, LayoutError> {
            range(name, s.exact(name).ok_or_else(|| missing(name))?, lo, hi)
        };
        if let Some(tagged_size) = s.exact("TaggedSize") {
            if tagged_size != 8 {
                return Err(LayoutError::PointerCompression {
                    path: path(),
                    tagged_size,
                });
            }
        }
        // The tag scheme is fixed in the reader; a binary that says otherwise is refused.
        for (name, want) in [
            ("HeapObjectTag", 1),
            ("HeapObjectTagMask", 3),
            ("SmiTag", 0),
            ("SmiTagMask", 1),
            ("SmiShiftSize", 31),
        ] {
            constant(name, want, want)?;
        }
        let fp = |name: &str| -> Result<i64, LayoutError> {
            let v = constant(name, -MAX_FP_OFFSET, MAX_FP_OFFSET)?;
            if v % 8 != 0 {
                return range(name, v, 1, 0);
            }
            Ok(v)
        };
        let optional_fp = |name: &str| s.exact(name).map(|_| fp(name)).transpose();
        let field = |class: &str, name: &str, align: i64| -> Result<u64, LayoutError> {
            let what = format!("class_{class}__{name}");
            let v = s.field(class, name).ok_or_else(|| missing(&what))?;
            let v = range(&what, v, 0, MAX_FIELD_OFFSET)?;
            if v % align != 0 {
                return range(&what, v, 1, 0).map(|v| v as u64);
            }
            Ok(v as u64)
        };
        let ty = |class: &str| -> Result<u16, LayoutError> {
            let what = format!("type_{class}");
            let v = s.type_of(class).ok_or_else(|| missing(&what))?;
            range(&what, v, 0, 0xffff).map(|v| v as u16)
        };
        let small = |name: &str| -> Result<u16, LayoutError> {
            constant(name, 0, 0xffff).map(|v| v as u16)
        };
        let js_function = ty("JSFunction")?;
        let js_function_types = match (
            s.exact("FirstJSFunctionType"),
            s.exact("LastJSFunctionType"),
        ) {
            (Some(first), Some(last)) => {
                let first = range("FirstJSFunctionType", first, 0, 0xffff)? as u16;
                let last = range("LastJSFunctionType", last, i64::from(first), 0xffff)? as u16;
                (first, last)
            }
            _ => (js_function, js_function),
        };
        let context_or_frame_type = match s.exact("off_fp_context_or_frame_type") {
            Some(_) => fp("off_fp_context_or_frame_type")?,
            None => fp("off_fp_context")?,
        };
        let frame_types = s
            .values
            .iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("frametype_")?;
                (0..256).contains(v).then(|| (*v as u64, name.to_owned()))
            })
            .collect();
        let version = (
            constant("version_major", 1, 100)? as u32,
            constant("version_minor", 0, 100)? as u32,
        );
        Ok(Layout {
            version,
            fp_function: fp("off_fp_function")?,
            fp_context_or_frame_type: context_or_frame_type,
            fp_bytecode_array: optional_fp("off_fp_bytecode_array")?,
            fp_bytecode_offset: optional_fp("off_fp_bytecode_offset")?,
            frame_types,
            builtins: s.builtins,
            heap_object_map: field("HeapObject", "map", 8)?,
            map_instance_type: field("Map", "instance_type", 2)?,
            js_function_shared: field("JSFunction", "shared", 8)?,
            sfi_name_or_scope_info: field("SharedFunctionInfo", "name_or_scope_info", 8)?,
            sfi_script_or_debug_info: field("SharedFunctionInfo", "script_or_debug_info", 8)
                .or_else(|_| field("SharedFunctionInfo", "script", 8))?,
            script_name: field("Script", "name", 8)?,
            script_line_ends: field("Script", "line_ends", 8)?,
            script_source: field("Script", "source", 8)?,
            string_length: field("String", "length", 4)?,
            seq_one_byte_chars: field("SeqOneByteString", "chars", 1)?,
            seq_two_byte_chars: field("SeqTwoByteString", "chars", 2)?,
            cons_first: field("ConsString", "first", 8)?,
            cons_second: field("ConsString", "second", 8)?,
            thin_actual: field("ThinString", "actual", 8)?,
            fixed_array_length: field("FixedArrayBase", "length", 8)?,
            fixed_array_data: field("FixedArray", "data", 8)?,
            js_function_types,
            sfi_type: ty("SharedFunctionInfo")?,
            script_type: ty("Script")?,
            scope_info_type: ty("ScopeInfo")?,
            fixed_array_type: ty("FixedArray")?,
            first_nonstring_type: small("FirstNonstringType")?,
            string_representation_mask: small("StringRepresentationMask")?,
            string_encoding_mask: small("StringEncodingMask")?,
            seq_string_tag: small("SeqStringTag")?,
            cons_string_tag: small("ConsStringTag")?,
            thin_string_tag: small("ThinStringTag")?,
            one_byte_string_tag: small("OneByteStringTag")?,
            scope_info_first_vars: constant("scopeinfo_idx_first_vars", 0, 32)? as u64,
            scope_info_ncontextlocals: constant("scopeinfo_idx_ncontextlocals", 0, 32)? as u64,
        })
    }

    pub fn frame_type_name(&self, marker: u64) -> Option<&str> {
        self.frame_types.get(&marker).map(String::as_str)
    }
}
