//! A restricted unpickler for the `data.pkl` that `torch.save` writes for a state dict.
//! It never executes anything: globals resolve to a fixed table of what a state dict
//! needs, and every other global, and every opcode outside the table below, is refused
//! with its name.
//!
//! Accepted globals: `torch._utils._rebuild_tensor_v2`, `_rebuild_tensor_v3`,
//! `_rebuild_parameter`, `_rebuild_parameter_with_state`; the typed storage classes
//! `torch.{Float,Half,BFloat16,Double,Long,Int,Short,Char,Byte,Bool,ComplexFloat}Storage`
//! and `torch.storage.UntypedStorage` (torch 2.x writes the latter, with a `torch.<dtype>`
//! global, for dtypes that have no legacy storage class: float8, uint16/32/64);
//! `torch.<dtype>` for those dtypes; `collections.OrderedDict`. What torch 2.15 writes was
//! checked with `pickletools.dis` (protocol 2 by default; 4 with `pickle_protocol=4`).
//!
//! Accepted opcodes (protocols 2–5, what a state dict needs): PROTO, FRAME, STOP, MARK,
//! POP, POP_MARK, DUP, the memo (PUT/GET in their binary forms, MEMOIZE), None/bools,
//! binary ints (BININT, BININT1, BININT2, LONG1 up to 8 bytes), BINFLOAT, unicode strings
//! (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8), tuples, lists, dicts (EMPTY_* and their
//! builders), GLOBAL, STACK_GLOBAL, REDUCE, BUILD (only to give an `OrderedDict` its
//! `_metadata`, which is ignored), BINPERSID. Everything else (INST, OBJ, NEWOBJ, EXT*,
//! bytes, sets, out-of-band buffers, text-mode opcodes…) is refused.
//!
//! Memory stays bounded by the input: containers live in an arena and are shared by
//! index (a memo get never copies), strings are reference-counted, and every opcode
//! creates at most one object. The result is flattened to dotted names with a depth
//! limit and refuses containers reached twice, so shared or cyclic structures cannot
//! blow up.

use std::collections::HashMap;
use std::rc::Rc;

use super::{join_name, MetaValue};
use crate::dtype::Dtype;

/// Deepest nesting of containers the flattening follows.
pub const MAX_DEPTH: usize = 64;

/// What is wrong with a pickle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PickleError {
    /// The stream ends inside an opcode's argument or before STOP.
    #[error("pickle is truncated: {what} at offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Offset of the opcode.
        offset: usize,
    },
    /// An opcode outside the whitelist.
    #[error(
        "pickle opcode {opcode:#04x} ({name}) at offset {offset} is not allowed in a state dict"
    )]
    ForbiddenOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its pickletools name, when known.
        name: &'static str,
        /// Where.
        offset: usize,
    },
    /// A global outside the whitelist.
    #[error("pickle refers to the global `{module}.{name}`, which a state dict does not need; refusing (nothing is executed)")]
    ForbiddenGlobal {
        /// Module.
        module: String,
        /// Name.
        name: String,
    },
    /// A protocol outside 2..=5.
    #[error("pickle protocol {protocol} is not supported (2 to 5)")]
    UnsupportedProtocol {
        /// The protocol byte.
        protocol: u8,
    },
    /// An opcode needed more stack items than there were.
    #[error("pickle stack underflow at offset {offset}")]
    StackUnderflow {
        /// Where.
        offset: usize,
    },
    /// POP_MARK or a container builder with no MARK.
    #[error("pickle has no MARK for the opcode at offset {offset}")]
    NoMark {
        /// Where.
        offset: usize,
    },
    /// A memo get of an index never put.
    #[error("pickle memo index {index} is read at offset {offset} but was never written")]
    MemoMissing {
        /// The index.
        index: u64,
        /// Where.
        offset: usize,
    },
    /// A string that is not UTF-8.
    #[error("pickle string at offset {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Where.
        offset: usize,
    },
    /// A LONG1 wider than 8 bytes.
    #[error("pickle integer at offset {offset} is wider than 64 bits")]
    IntTooLarge {
        /// Where.
        offset: usize,
    },
    /// An operand of the wrong kind.
    #[error("pickle opcode at offset {offset}: expected {expected}, found {found}")]
    Unexpected {
        /// Where.
        offset: usize,
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: &'static str,
    },
    /// A call of a whitelisted global with the wrong arguments.
    #[error("`{function}` called with bad arguments at offset {offset}: {reason}")]
    BadCall {
        /// The callable.
        function: &'static str,
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A persistent id that is not `('storage', type, key, location, numel)`.
    #[error("persistent id at offset {offset} is not ('storage', storage_type, key, location, numel): {reason}")]
    BadPersistentId {
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// One storage key used with two different types or sizes.
    #[error("storage `{key}` is referenced as {first} and as {second}")]
    StorageConflict {
        /// The key.
        key: String,
        /// First use.
        first: String,
        /// Conflicting use.
        second: String,
    },
    /// A dict key that is not a string or an integer.
    #[error("dict key at offset {offset} is {found}; state-dict keys must be strings or integers")]
    BadKey {
        /// Where.
        offset: usize,
        /// What it is.
        found: &'static str,
    },
    /// A key set twice in one dict.
    #[error("dict key `{key}` is set twice")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// Data after STOP.
    #[error("{extra} bytes follow the pickle's STOP opcode")]
    TrailingData {
        /// Bytes left.
        extra: usize,
    },
    /// STOP with anything but exactly one object on the stack, or an open MARK.
    #[error("pickle ends with {stack} stack items and {marks} open marks (expected one object)")]
    BadStop {
        /// Stack depth.
        stack: usize,
        /// Open marks.
        marks: usize,
    },
    /// The top-level object is not a dict.
    #[error("the pickled object is {found}, not a dict of tensors")]
    NotADict {
        /// What it is.
        found: &'static str,
    },
    /// A value that is neither a tensor, a container, nor a plain scalar.
    #[error("`{name}` is {found}, which is neither a tensor, a container nor a plain value")]
    BadLeaf {
        /// Dotted path.
        name: String,
        /// What it is.
        found: &'static str,
    },
    /// Containers nested more than [`MAX_DEPTH`] deep.
    #[error("`{name}`: containers nested more than {MAX_DEPTH} deep")]
    TooDeep {
        /// Dotted path where the limit was hit.
        name: String,
    },
    /// A container reached twice (shared or cyclic).
    #[error("`{name}`: this container was already reached through another key (shared or cyclic structure)")]
    SharedContainer {
        /// Dotted path.
        name: String,
    },
    /// Two leaves flatten to the same dotted name.
    #[error("two entries flatten to the same name `{name}`")]
    DuplicateName {
        /// The name.
        name: String,
    },
}

/// A storage a state dict refers to through a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The key: the storage is the archive entry `<archive>/data/<key>`.
    pub key: String,
    /// Element type of a typed storage; `None` for `UntypedStorage` (bytes).
    pub dtype: Option<Dtype>,
    /// Device it was saved from (`"cpu"`, `"cuda:0"`).
    pub location: String,
    /// Size in elements of `dtype` (in bytes for an untyped storage).
    pub numel: usize,
}

impl StorageRef {
    fn describe(&self) -> String {
        match self.dtype {
            Some(d) => format!("{d} × {}", self.numel),
            None => format!("untyped × {} bytes", self.numel),
        }
    }
}

/// A tensor as `_rebuild_tensor_v2/v3` describes it: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickledTensor {
    /// Dotted state-dict name.
    pub name: String,
    /// Index into [`StateDict::storages`].
    pub storage: usize,
    /// Element type.
    pub dtype: Dtype,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Size.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// What a state-dict pickle holds, flattened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StateDict {
    /// Tensors in pickle order.
    pub tensors: Vec<PickledTensor>,
    /// Non-tensor leaves (ints, floats, bools, strings, None), by dotted name.
    pub scalars: Vec<(String, MetaValue)>,
    /// Storages, each key once, in order of first reference.
    pub storages: Vec<StorageRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    OrderedDict,
    /// A storage class: typed (`Some`) or `UntypedStorage` (`None`).
    StorageType(Option<Dtype>),
    /// A `torch.<dtype>` object.
    DtypeObj(Dtype),
}

impl Global {
    fn name(self) -> &'static str {
        match self {
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::OrderedDict => "collections.OrderedDict",
            Global::StorageType(_) => "a torch storage class",
            Global::DtypeObj(_) => "a torch dtype",
        }
    }
}

fn resolve_global(module: &str, name: &str) -> Result<Global, PickleError> {
    let g = match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch.storage" | "torch", "UntypedStorage") => Some(Global::StorageType(None)),
        ("torch", n) => storage_dtype(n)
            .map(|d| Global::StorageType(Some(d)))
            .or_else(|| torch_dtype(n).map(Global::DtypeObj)),
        _ => None,
    };
    g.ok_or_else(|| PickleError::ForbiddenGlobal {
        module: module.to_owned(),
        name: name.to_owned(),
    })
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        "ComplexFloatStorage" => Dtype::C64,
        _ => return None,
    })
}

fn torch_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "float32" | "float" => Dtype::F32,
        "float16" | "half" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float64" | "double" => Dtype::F64,
        "int64" | "long" => Dtype::I64,
        "int32" | "int" => Dtype::I32,
        "int16" | "short" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        "complex64" | "cfloat" => Dtype::C64,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "float8_e4m3fnuz" => Dtype::F8_E4M3FNUZ,
        "float8_e5m2fnuz" => Dtype::F8_E5M2FNUZ,
        "float8_e8m0fnu" => Dtype::F8_E8M0,
        _ => return None,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Obj(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Str(Rc<str>),
    Int(i64),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Str(s) => s.to_string(),
            Key::Int(i) => i.to_string(),
        }
    }
}

#[derive(Debug)]
enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict {
        entries: Vec<(Key, Value)>,
        index: HashMap<Key, usize>,
        ordered: bool,
    },
    Global(Global),
    Storage(usize),
    Tensor(Tensor),
}

#[derive(Debug, Clone)]
struct Tensor {
    storage: usize,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn describe(v: &Value, arena: &[Obj]) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Obj(i) => match arena.get(*i) {
            Some(Obj::List(_)) => "a list",
            Some(Obj::Tuple(_)) => "a tuple",
            Some(Obj::Dict { .. }) => "a dict",
            Some(Obj::Global(_)) => "a global",
            Some(Obj::Storage(_)) => "a storage",
            Some(Obj::Tensor(_)) => "a tensor",
            None => "a dangling object",
        },
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed.
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    arena: Vec<Obj>,
    storages: Vec<StorageRef>,
    storage_index: HashMap<String, usize>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated {
                what,
                offset: self.at,
            })?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize, what: &'static str) -> Result<u64, PickleError> {
        let b = self.take(n, what)?;
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(b);
        Ok(u64::from_le_bytes(buf))
    }

    fn str_arg(&mut self, len: u64) -> Result<Rc<str>, PickleError> {
        let n = usize::try_from(len).map_err(|_| PickleError::Truncated {
            what: "a string",
            offset: self.at,
        })?;
        let b = self.take(n, "a string")?;
        let s = std::str::from_utf8(b).map_err(|_| PickleError::NotUtf8 { offset: self.at })?;
        Ok(Rc::from(s))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated {
                what: "a GLOBAL line",
                offset: self.at,
            })?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::NotUtf8 { offset: self.at })
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or(PickleError::StackUnderflow { offset: self.at })
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.stack
            .last_mut()
            .ok_or(PickleError::StackUnderflow { offset: self.at })
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or(PickleError::NoMark { offset: self.at })?;
        if mark > self.stack.len() {
            return Err(PickleError::StackUnderflow { offset: self.at });
        }
        Ok(self.stack.split_off(mark))
    }

    fn alloc(&mut self, obj: Obj) -> Value {
        self.arena.push(obj);
        Value::Obj(self.arena.len() - 1)
    }

    fn unexpected(&self, expected: &'static str, found: &Value) -> PickleError {
        PickleError::Unexpected {
            offset: self.at,
            expected,
            found: describe(found, &self.arena),
        }
    }

    fn key(&self, v: Value) -> Result<Key, PickleError> {
        match v {
            Value::Str(s) => Ok(Key::Str(s)),
            Value::Int(i) => Ok(Key::Int(i)),
            other => Err(PickleError::BadKey {
                offset: self.at,
                found: describe(&other, &self.arena),
            }),
        }
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(PickleError::StackUnderflow { offset: self.at });
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((self.key(k)?, v));
        }
        let err = self.unexpected("a dict", target);
        let Value::Obj(i) = *target else {
            return Err(err);
        };
        let Some(Obj::Dict { entries, index, .. }) = self.arena.get_mut(i) else {
            return Err(err);
        };
        for (k, v) in pairs {
            if index.contains_key(&k) {
                return Err(PickleError::DuplicateKey { key: k.text() });
            }
            index.insert(k.clone(), entries.len());
            entries.push((k, v));
        }
        Ok(())
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> Result<(), PickleError> {
        let err = self.unexpected("a list", target);
        let Value::Obj(i) = *target else {
            return Err(err);
        };
        match self.arena.get_mut(i) {
            Some(Obj::List(v)) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(err),
        }
    }

    fn tuple(&self, v: &Value) -> Option<&[Value]> {
        match v {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Tuple(t)) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn dict_len(&self, v: &Value) -> Option<usize> {
        match v {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Dict { entries, .. }) => Some(entries.len()),
                _ => None,
            },
            _ => None,
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.at = self.pos;
            let op = self.take(1, "an opcode")?[0];
            match op {
                0x80 => {
                    let protocol = self.take(1, "PROTO")?[0];
                    if !(2..=5).contains(&protocol) {
                        return Err(PickleError::UnsupportedProtocol { protocol });
                    }
                }
                0x95 => {
                    let len = self.uint(8, "FRAME")?;
                    if len > (self.data.len() - self.pos) as u64 {
                        return Err(PickleError::Truncated {
                            what: "a FRAME",
                            offset: self.at,
                        });
                    }
                }
                b'.' => {
                    if self.stack.len() != 1 || !self.marks.is_empty() {
                        return Err(PickleError::BadStop {
                            stack: self.stack.len(),
                            marks: self.marks.len(),
                        });
                    }
                    if self.pos != self.data.len() {
                        return Err(PickleError::TrailingData {
                            extra: self.data.len() - self.pos,
                        });
                    }
                    return self.pop();
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'q' | b'r' | 0x94 => {
                    let index = match op {
                        b'q' => self.uint(1, "BINPUT")?,
                        b'r' => self.uint(4, "LONG_BINPUT")?,
                        _ => self.memo.len() as u64,
                    };
                    let v = self.top()?.clone();
                    self.memo.insert(index, v);
                }
                b'h' | b'j' => {
                    let index = if op == b'h' {
                        self.uint(1, "BINGET")?
                    } else {
                        self.uint(4, "LONG_BINGET")?
                    };
                    let v = self
                        .memo
                        .get(&index)
                        .cloned()
                        .ok_or(PickleError::MemoMissing {
                            index,
                            offset: self.at,
                        })?;
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.uint(4, "BININT")? as u32 as i32;
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.uint(1, "BININT1")?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2, "BININT2")?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = usize::from(self.take(1, "LONG1")?[0]);
                    if n > 8 {
                        return Err(PickleError::IntTooLarge { offset: self.at });
                    }
                    let b = self.take(n, "LONG1")?;
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    let mut buf = [0u8; 8];
                    buf.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(buf)));
                }
                b'X' | 0x8c | 0x8d => {
                    let len = match op {
                        b'X' => self.uint(4, "BINUNICODE")?,
                        0x8c => self.uint(1, "SHORT_BINUNICODE")?,
                        _ => self.uint(8, "BINUNICODE8")?,
                    };
                    let s = self.str_arg(len)?;
                    self.stack.push(Value::Str(s));
                }
                b')' => {
                    let v = self.alloc(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(PickleError::StackUnderflow { offset: self.at });
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.alloc(Obj::Tuple(items));
                    self.stack.push(v);
                }
                b']' => {
                    let v = self.alloc(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.alloc(Obj::List(items));
                    self.stack.push(v);
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b'}' | b'd' => {
                    let items = if op == b'd' {
                        self.pop_mark()?
                    } else {
                        Vec::new()
                    };
                    let v = self.alloc(Obj::Dict {
                        entries: Vec::new(),
                        index: HashMap::new(),
                        ordered: false,
                    });
                    self.set_items(&v, items)?;
                    self.stack.push(v);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    let v = self.alloc(Obj::Global(g));
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return Err(self.unexpected("two strings for STACK_GLOBAL", &module));
                    };
                    let g = resolve_global(module, name)?;
                    let v = self.alloc(Obj::Global(g));
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(&pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(&func, &args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    let ordered_dict = matches!(target, Value::Obj(i)
                        if matches!(self.arena.get(i), Some(Obj::Dict { ordered: true, .. })));
                    if !ordered_dict {
                        return Err(self.unexpected("an OrderedDict for BUILD", &target));
                    }
                    // The state of a state dict's OrderedDict is `{'_metadata': …}`
                    // (per-module versions); it carries no tensors and is ignored.
                    if self.dict_len(&state).is_none() && state != Value::None {
                        return Err(self.unexpected("a dict as BUILD state", &state));
                    }
                }
                other => {
                    return Err(PickleError::ForbiddenOpcode {
                        opcode: other,
                        name: opcode_name(other),
                        offset: self.at,
                    })
                }
            }
        }
    }

    fn persistent(&mut self, pid: &Value) -> Result<Value, PickleError> {
        let bad = |reason: String| PickleError::BadPersistentId {
            offset: self.at,
            reason,
        };
        let items = self
            .tuple(pid)
            .ok_or_else(|| bad(format!("it is {}", describe(pid, &self.arena))))?;
        let [tag, ty, key, location, numel] = items else {
            return Err(bad(format!("it has {} items", items.len())));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return Err(bad("the first item is not 'storage'".into()));
        }
        let dtype = match ty {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Global(Global::StorageType(d))) => *d,
                _ => return Err(bad("the second item is not a storage class".into())),
            },
            _ => return Err(bad("the second item is not a storage class".into())),
        };
        let (Value::Str(key), Value::Str(location)) = (key, location) else {
            return Err(bad("key and location must be strings".into()));
        };
        let numel = match numel {
            Value::Int(n) => {
                usize::try_from(*n).map_err(|_| bad(format!("numel {n} is negative")))?
            }
            _ => return Err(bad("numel is not an int".into())),
        };
        let storage = StorageRef {
            key: key.to_string(),
            dtype,
            location: location.to_string(),
            numel,
        };
        let index = match self.storage_index.get(&storage.key) {
            Some(&i) => {
                let first = &self.storages[i];
                if first.dtype != storage.dtype || first.numel != storage.numel {
                    return Err(PickleError::StorageConflict {
                        first: first.describe(),
                        second: storage.describe(),
                        key: storage.key,
                    });
                }
                i
            }
            None => {
                self.storage_index
                    .insert(storage.key.clone(), self.storages.len());
                self.storages.push(storage);
                self.storages.len() - 1
            }
        };
        Ok(self.alloc(Obj::Storage(index)))
    }

    fn reduce(&mut self, func: &Value, args: &Value) -> Result<Value, PickleError> {
        let g = match func {
            Value::Obj(i) => match self.arena.get(*i) {
                Some(Obj::Global(g)) => *g,
                _ => return Err(self.unexpected("a global to call", func)),
            },
            _ => return Err(self.unexpected("a global to call", func)),
        };
        let args: Vec<Value> = self
            .tuple(args)
            .ok_or_else(|| self.unexpected("an argument tuple", args))?
            .to_vec();
        let function = g.name();
        let bad = |reason: String| PickleError::BadCall {
            function,
            offset: self.at,
            reason,
        };
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(bad(format!("{} arguments, expected none", args.len())));
                }
                Ok(self.alloc(Obj::Dict {
                    entries: Vec::new(),
                    index: HashMap::new(),
                    ordered: true,
                }))
            }
            Global::RebuildTensorV2 | Global::RebuildTensorV3 => {
                let v3 = g == Global::RebuildTensorV3;
                let (min, max) = if v3 { (7, 8) } else { (6, 7) };
                if args.len() < min || args.len() > max {
                    return Err(bad(format!(
                        "{} arguments, expected {min} or {max}",
                        args.len()
                    )));
                }
                let storage = match &args[0] {
                    Value::Obj(i) => match self.arena.get(*i) {
                        Some(Obj::Storage(s)) => *s,
                        _ => return Err(bad("the first argument is not a storage".into())),
                    },
                    _ => return Err(bad("the first argument is not a storage".into())),
                };
                let dtype = if v3 {
                    match &args[6] {
                        Value::Obj(i) => match self.arena.get(*i) {
                            Some(Obj::Global(Global::DtypeObj(d))) => *d,
                            _ => return Err(bad("the dtype argument is not a torch dtype".into())),
                        },
                        _ => return Err(bad("the dtype argument is not a torch dtype".into())),
                    }
                } else {
                    self.storages[storage].dtype.ok_or_else(|| {
                        bad("an untyped storage needs _rebuild_tensor_v3 and a dtype".into())
                    })?
                };
                let offset = self
                    .index_arg(&args[1])
                    .ok_or_else(|| bad("the storage offset is not a non-negative int".into()))?;
                let shape = self
                    .ints(&args[2])
                    .ok_or_else(|| bad("the size is not a tuple of non-negative ints".into()))?;
                let stride = self
                    .ints(&args[3])
                    .ok_or_else(|| bad("the stride is not a tuple of non-negative ints".into()))?;
                if shape.len() != stride.len() {
                    return Err(bad(format!(
                        "size {shape:?} and stride {stride:?} differ in length"
                    )));
                }
                if !matches!(args[4], Value::Bool(_)) {
                    return Err(bad("requires_grad is not a bool".into()));
                }
                if self.dict_len(&args[5]).is_some_and(|n| n > 0) {
                    return Err(bad("backward hooks are not empty".into()));
                }
                Ok(self.alloc(Obj::Tensor(Tensor {
                    storage,
                    dtype,
                    offset,
                    shape,
                    stride,
                })))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let n = if g == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != n {
                    return Err(bad(format!("{} arguments, expected {n}", args.len())));
                }
                match &args[0] {
                    v @ Value::Obj(i) if matches!(self.arena.get(*i), Some(Obj::Tensor(_))) => {
                        Ok(v.clone())
                    }
                    _ => Err(bad("the first argument is not a tensor".into())),
                }
            }
            Global::StorageType(_) | Global::DtypeObj(_) => {
                Err(bad("it is not callable in a state dict".into()))
            }
        }
    }

    fn index_arg(&self, v: &Value) -> Option<usize> {
        match v {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    fn ints(&self, v: &Value) -> Option<Vec<usize>> {
        self.tuple(v)?.iter().map(|x| self.index_arg(x)).collect()
    }
}

/// Runs a state-dict pickle (the bytes of `data.pkl`) and flattens what it builds.
///
/// The top level must be a dict; nested dicts (`{"model": {...}}`), lists and tuples are
/// flattened with `.` (list items by index). Tensors become [`PickledTensor`]s, plain
/// values (int, float, bool, str, None) become scalars.
pub fn load_state_dict(data: &[u8]) -> Result<StateDict, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena: Vec::new(),
        storages: Vec::new(),
        storage_index: HashMap::new(),
    };
    let root = m.run()?;
    let Value::Obj(root_index) = root else {
        return Err(PickleError::NotADict {
            found: describe(&root, &m.arena),
        });
    };
    if !matches!(m.arena.get(root_index), Some(Obj::Dict { .. })) {
        return Err(PickleError::NotADict {
            found: describe(&root, &m.arena),
        });
    }
    let mut out = StateDict {
        storages: std::mem::take(&mut m.storages),
        ..StateDict::default()
    };
    let mut flat = Flattener {
        arena: &m.arena,
        visited: vec![false; m.arena.len()],
        names: HashMap::new(),
        out: &mut out,
    };
    flat.visit(&root, String::new(), 0)?;
    Ok(out)
}

struct Flattener<'a> {
    arena: &'a [Obj],
    visited: Vec<bool>,
    names: HashMap<String, ()>,
    out: &'a mut StateDict,
}

impl Flattener<'_> {
    fn claim(&mut self, name: &str) -> Result<(), PickleError> {
        if self.names.insert(name.to_owned(), ()).is_some() {
            return Err(PickleError::DuplicateName {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn visit(&mut self, v: &Value, name: String, depth: usize) -> Result<(), PickleError> {
        let scalar = match v {
            Value::None => Some(MetaValue::None),
            Value::Bool(b) => Some(MetaValue::Bool(*b)),
            Value::Int(i) => Some(MetaValue::I64(*i)),
            Value::Float(f) => Some(MetaValue::F64(*f)),
            Value::Str(s) => Some(MetaValue::Str(s.to_string())),
            Value::Obj(_) => None,
        };
        if let Some(s) = scalar {
            self.claim(&name)?;
            self.out.scalars.push((name, s));
            return Ok(());
        }
        let Value::Obj(i) = *v else { return Ok(()) };
        let arena = self.arena;
        match arena.get(i) {
            Some(Obj::Tensor(t)) => {
                self.claim(&name)?;
                self.out.tensors.push(PickledTensor {
                    name,
                    storage: t.storage,
                    dtype: t.dtype,
                    offset: t.offset,
                    shape: t.shape.clone(),
                    stride: t.stride.clone(),
                });
                Ok(())
            }
            Some(obj @ (Obj::Dict { .. } | Obj::List(_) | Obj::Tuple(_))) => {
                if depth >= MAX_DEPTH {
                    return Err(PickleError::TooDeep { name });
                }
                if std::mem::replace(&mut self.visited[i], true) {
                    return Err(PickleError::SharedContainer { name });
                }
                match obj {
                    Obj::Dict { entries, .. } => {
                        for (k, child) in entries {
                            self.visit(child, join_name(&name, &k.text()), depth + 1)?;
                        }
                    }
                    Obj::List(items) | Obj::Tuple(items) => {
                        for (k, child) in items.iter().enumerate() {
                            self.visit(child, join_name(&name, &k.to_string()), depth + 1)?;
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            _ => Err(PickleError::BadLeaf {
                name,
                found: describe(v, arena),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// A tiny pickle assembler for tests (protocol 2 opcodes, as torch writes them).
    #[derive(Default)]
    pub(crate) struct P(pub Vec<u8>);

    impl P {
        pub fn new() -> P {
            P(vec![0x80, 2])
        }
        pub fn op(mut self, b: &[u8]) -> P {
            self.0.extend(b);
            self
        }
        pub fn s(mut self, v: &str) -> P {
            self.0.push(b'X');
            self.0.extend((v.len() as u32).to_le_bytes());
            self.0.extend(v.as_bytes());
            self
        }
        pub fn int(mut self, v: u8) -> P {
            self.0.extend([b'K', v]);
            self
        }
        pub fn global(mut self, module: &str, name: &str) -> P {
            self.0.push(b'c');
            self.0.extend(module.as_bytes());
            self.0.push(b'\n');
            self.0.extend(name.as_bytes());
            self.0.push(b'\n');
            self
        }
        pub fn ints(mut self, v: &[u8]) -> P {
            self.0.push(b'(');
            for &x in v {
                self.0.extend([b'K', x]);
            }
            self.0.push(b't');
            self
        }
        /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`
        pub fn tensor(
            self,
            ty: &str,
            key: &str,
            numel: u8,
            offset: u8,
            size: &[u8],
            stride: &[u8],
        ) -> P {
            self.global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .global("torch", ty)
                .s(key)
                .s("cpu")
                .int(numel)
                .op(b"tQ")
                .int(offset)
                .ints(size)
                .ints(stride)
                .op(&[0x89])
                .global("collections", "OrderedDict")
                .op(b")Rt")
                .op(b"R")
        }
        pub fn stop(mut self) -> Vec<u8> {
            self.0.push(b'.');
            self.0
        }
    }

    /// `{'a': f32 [2, 3], 'b': f32 view [2] at offset 4 of the same storage}`
    pub(crate) fn two_tensors() -> Vec<u8> {
        P::new()
            .op(b"}(")
            .s("a")
            .tensor("FloatStorage", "0", 6, 0, &[2, 3], &[3, 1])
            .s("b")
            .tensor("FloatStorage", "0", 6, 4, &[2], &[1])
            .op(b"u")
            .stop()
    }

    #[test]
    fn plain_state_dict() {
        let sd = load_state_dict(&two_tensors()).unwrap();
        assert_eq!(sd.storages.len(), 1, "one key, one storage");
        assert_eq!(sd.storages[0].dtype, Some(Dtype::F32));
        assert_eq!(sd.storages[0].numel, 6);
        assert_eq!(sd.tensors.len(), 2);
        assert_eq!(sd.tensors[0].name, "a");
        assert_eq!(sd.tensors[0].shape, [2, 3]);
        assert_eq!(sd.tensors[0].stride, [3, 1]);
        assert_eq!(sd.tensors[1].offset, 4);
    }

    #[test]
    fn ordered_dict_with_metadata_and_nesting() {
        // OrderedDict() then {'model': {'w': tensor}, 'epoch': 3, 'lr': 0.5, 'tag': 'x',
        // 'none': None, 'layers': [tensor]} then BUILD with {'_metadata': {...}}.
        let p = P::new()
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"(")
            .s("model")
            .op(b"}")
            .s("w")
            .tensor("HalfStorage", "0", 4, 0, &[4], &[1])
            .op(b"s")
            .s("epoch")
            .int(3)
            .s("lr")
            .op(b"G\x3f\xe0\0\0\0\0\0\0")
            .s("tag")
            .s("x")
            .s("none")
            .op(b"N")
            .s("layers")
            .op(b"]")
            .tensor("LongStorage", "1", 2, 0, &[2], &[1])
            .op(b"a")
            .op(b"u")
            .op(b"}")
            .s("_metadata")
            .op(b"}s")
            .op(b"b");
        let sd = load_state_dict(&p.stop()).unwrap();
        let names: Vec<_> = sd.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["model.w", "layers.0"]);
        assert_eq!(sd.tensors[0].dtype, Dtype::F16);
        assert_eq!(sd.tensors[1].dtype, Dtype::I64);
        assert_eq!(
            sd.scalars,
            vec![
                ("epoch".into(), MetaValue::I64(3)),
                ("lr".into(), MetaValue::F64(0.5)),
                ("tag".into(), MetaValue::Str("x".into())),
                ("none".into(), MetaValue::None),
            ]
        );
    }

    #[test]
    fn protocol_4_with_memoize_and_stack_global() {
        let mut b = vec![0x80, 4, 0x95];
        b.extend(0u64.to_le_bytes()); // frame length is only checked against the rest
        b.extend(b"}\x94");
        b.extend([0x8c, 1, b'x', 0x94]);
        b.extend([0x8c, 12]);
        b.extend(b"torch._utils");
        b.extend([0x8c, 18]);
        b.extend(b"_rebuild_tensor_v2");
        b.extend([0x93, 0x94]);
        b.extend(b"((");
        b.extend([0x8c, 7]);
        b.extend(b"storage");
        b.extend([0x8c, 5]);
        b.extend(b"torch");
        b.extend([0x8c, 12]);
        b.extend(b"FloatStorage");
        b.extend([0x93]);
        b.extend([0x8c, 1, b'0', 0x8c, 3]);
        b.extend(b"cpu");
        b.extend(b"K\x02tQK\x00K\x02\x85K\x01\x85\x89");
        b.extend([0x8c, 11]);
        b.extend(b"collections");
        b.extend([0x8c, 11]);
        b.extend(b"OrderedDict");
        b.extend([0x93]);
        b.extend(b")Rt\x94R\x94s.");
        let sd = load_state_dict(&b).unwrap();
        assert_eq!(sd.tensors[0].name, "x");
        assert_eq!(sd.tensors[0].shape, [2]);
    }

    #[test]
    fn rebuild_tensor_v3_and_parameters() {
        let p = P::new()
            .op(b"}(")
            .s("f8")
            .global("torch._utils", "_rebuild_tensor_v3")
            .op(b"((")
            .s("storage")
            .global("torch.storage", "UntypedStorage")
            .s("0")
            .s("cpu")
            .int(2)
            .op(b"tQ")
            .int(0)
            .ints(&[2])
            .ints(&[1])
            .op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .global("torch", "float8_e4m3fn")
            .op(b"tR")
            .s("p")
            .global("torch._utils", "_rebuild_parameter")
            .op(b"(")
            .tensor("BFloat16Storage", "1", 2, 0, &[2], &[1])
            .op(&[0x88])
            .global("collections", "OrderedDict")
            .op(b")RtR")
            .op(b"u");
        let sd = load_state_dict(&p.stop()).unwrap();
        assert_eq!(sd.tensors[0].dtype, Dtype::F8_E4M3);
        assert_eq!(sd.storages[0].dtype, None);
        assert_eq!(sd.tensors[1].name, "p");
        assert_eq!(sd.tensors[1].dtype, Dtype::BF16);
    }

    #[test]
    fn forbidden_globals() {
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("posix", "system"),
            ("torch", "load"),
            ("torch", "QInt8Storage"),
            ("torch._utils", "_rebuild_qtensor"),
            ("collections", "defaultdict"),
        ] {
            let b = P::new().global(module, name).op(b")R").stop();
            let e = load_state_dict(&b).unwrap_err();
            assert_eq!(
                e,
                PickleError::ForbiddenGlobal {
                    module: module.into(),
                    name: name.into()
                }
            );
            assert!(e.to_string().contains(&format!("{module}.{name}")));
        }
        // Through STACK_GLOBAL too.
        let mut b = vec![0x80, 4, 0x8c, 8];
        b.extend(b"builtins");
        b.extend([0x8c, 4]);
        b.extend(b"exec");
        b.extend([0x93, b'.']);
        assert!(matches!(
            load_state_dict(&b),
            Err(PickleError::ForbiddenGlobal { .. })
        ));
    }

    #[test]
    fn forbidden_opcodes() {
        for op in [
            b'i', b'o', 0x81, 0x82, b'B', b'C', 0x8f, 0x97, b'S', b'V', b'I', b'P', b'g', 0x8b,
            0xff,
        ] {
            let mut b = vec![0x80, 2, b'N', b'(', op];
            b.extend([0; 16]);
            let e = load_state_dict(&b).unwrap_err();
            assert!(
                matches!(e, PickleError::ForbiddenOpcode { opcode, offset: 4, .. } if opcode == op),
                "{op:#x}: {e}"
            );
        }
        assert!(matches!(
            load_state_dict(&[0x80, 0]),
            Err(PickleError::UnsupportedProtocol { protocol: 0 })
        ));
    }

    #[test]
    fn stack_and_memo_abuse() {
        type Check = fn(&PickleError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (P::new().op(b"s").stop(), |e| {
                matches!(e, PickleError::StackUnderflow { .. })
            }),
            (P::new().op(b"R").stop(), |e| {
                matches!(e, PickleError::StackUnderflow { .. })
            }),
            (P::new().op(b"t").stop(), |e| {
                matches!(e, PickleError::NoMark { .. })
            }),
            (P::new().op(&[0x87]).stop(), |e| {
                matches!(e, PickleError::StackUnderflow { .. })
            }),
            (P::new().op(b"h\x05").stop(), |e| {
                matches!(e, PickleError::MemoMissing { index: 5, .. })
            }),
            (P::new().op(b"q\x00").stop(), |e| {
                matches!(e, PickleError::StackUnderflow { .. })
            }),
            (P::new().op(b"}N").stop(), |e| {
                matches!(e, PickleError::BadStop { stack: 2, .. })
            }),
            (P::new().op(b"}(").stop(), |e| {
                matches!(e, PickleError::BadStop { marks: 1, .. })
            }),
            (
                P::new().op(b"}").stop().into_iter().chain([0]).collect(),
                |e| matches!(e, PickleError::TrailingData { extra: 1 }),
            ),
            (P::new().op(b"}").0, |e| {
                matches!(e, PickleError::Truncated { .. })
            }),
            (P::new().op(b"X\xff\xff\xff\xff").stop(), |e| {
                matches!(e, PickleError::Truncated { .. })
            }),
            (
                P::new().op(b"\x95\xff\xff\xff\xff\xff\xff\xff\xff").stop(),
                |e| matches!(e, PickleError::Truncated { .. }),
            ),
            (P::new().op(b"\x8a\x09").stop(), |e| {
                matches!(e, PickleError::IntTooLarge { .. })
            }),
            (P::new().op(b"X\x02\0\0\0\xc3\x28").stop(), |e| {
                matches!(e, PickleError::NotUtf8 { .. })
            }),
            (P::new().op(b"]").stop(), |e| {
                matches!(e, PickleError::NotADict { found: "a list" })
            }),
            (P::new().op(b"N").stop(), |e| {
                matches!(e, PickleError::NotADict { found: "None" })
            }),
            (P::new().op(b"}NNs").stop(), |e| {
                matches!(e, PickleError::BadKey { found: "None", .. })
            }),
            (
                P::new()
                    .op(b"}")
                    .s("k")
                    .int(1)
                    .op(b"s")
                    .s("k")
                    .int(2)
                    .op(b"s")
                    .stop(),
                |e| matches!(e, PickleError::DuplicateKey { .. }),
            ),
            (P::new().op(b"NNa").stop(), |e| {
                matches!(
                    e,
                    PickleError::Unexpected {
                        expected: "a list",
                        ..
                    }
                )
            }),
            (P::new().op(b"}N}b").stop(), |e| {
                matches!(e, PickleError::Unexpected { .. })
            }),
            (P::new().op(b"})").op(b"R").stop(), |e| {
                matches!(
                    e,
                    PickleError::Unexpected {
                        expected: "a global to call",
                        ..
                    }
                )
            }),
        ];
        for (i, (b, check)) in cases.into_iter().enumerate() {
            let e = load_state_dict(&b).unwrap_err();
            assert!(check(&e), "case {i}: {e}");
        }
    }

    #[test]
    fn bad_tensor_calls() {
        let bad = [
            // storage offset negative (BININT -1)
            P::new()
                .op(b"}")
                .s("t")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .global("torch", "FloatStorage")
                .s("0")
                .s("cpu")
                .int(1)
                .op(b"tQJ\xff\xff\xff\xff")
                .ints(&[1])
                .ints(&[1])
                .op(&[0x89])
                .op(b"}tRs")
                .stop(),
            // size and stride of different lengths
            P::new()
                .op(b"}")
                .s("t")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .global("torch", "FloatStorage")
                .s("0")
                .s("cpu")
                .int(1)
                .op(b"tQ")
                .int(0)
                .ints(&[1, 1])
                .ints(&[1])
                .op(&[0x89])
                .op(b"}tRs")
                .stop(),
            // too few arguments
            P::new()
                .op(b"}")
                .s("t")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"(")
                .int(0)
                .op(b"tRs")
                .stop(),
            // not a storage
            P::new()
                .op(b"}")
                .s("t")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"(")
                .int(0)
                .int(0)
                .ints(&[1])
                .ints(&[1])
                .op(&[0x89])
                .op(b"}tRs")
                .stop(),
            // untyped storage through v2
            P::new()
                .op(b"}")
                .s("t")
                .global("torch._utils", "_rebuild_tensor_v2")
                .op(b"((")
                .s("storage")
                .global("torch.storage", "UntypedStorage")
                .s("0")
                .s("cpu")
                .int(4)
                .op(b"tQ")
                .int(0)
                .ints(&[1])
                .ints(&[1])
                .op(&[0x89])
                .op(b"}tRs")
                .stop(),
            // a dtype called
            P::new()
                .op(b"}")
                .s("t")
                .global("torch", "float32")
                .op(b")Rs")
                .stop(),
            // OrderedDict with arguments
            P::new()
                .op(b"}")
                .s("t")
                .global("collections", "OrderedDict")
                .op(b"(NtRs")
                .stop(),
        ];
        for (i, b) in bad.into_iter().enumerate() {
            let e = load_state_dict(&b).unwrap_err();
            assert!(matches!(e, PickleError::BadCall { .. }), "case {i}: {e}");
        }
    }

    #[test]
    fn bad_persistent_ids() {
        for pid in [
            P::new().op(b"N"),
            P::new().op(b"(").s("storage").op(b"t"),
            P::new()
                .op(b"(")
                .s("nope")
                .global("torch", "FloatStorage")
                .s("0")
                .s("cpu")
                .int(1)
                .op(b"t"),
            P::new()
                .op(b"(")
                .s("storage")
                .int(1)
                .s("0")
                .s("cpu")
                .int(1)
                .op(b"t"),
            P::new()
                .op(b"(")
                .s("storage")
                .global("torch", "FloatStorage")
                .s("0")
                .s("cpu")
                .op(b"J\xff\xff\xff\xfft"),
        ] {
            let b = pid.op(b"Q").stop();
            assert!(matches!(
                load_state_dict(&b),
                Err(PickleError::BadPersistentId { .. })
            ));
        }
        // Same key, two types.
        let b = P::new()
            .op(b"}(")
            .s("a")
            .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
            .s("b")
            .tensor("HalfStorage", "0", 4, 0, &[4], &[1])
            .op(b"u")
            .stop();
        assert!(matches!(
            load_state_dict(&b),
            Err(PickleError::StorageConflict { .. })
        ));
    }

    #[test]
    fn deep_shared_and_cyclic_structures() {
        // 100 nested dicts.
        let mut p = P::new();
        for _ in 0..100 {
            p = p.op(b"}").s("k");
        }
        p = p.op(b"}");
        for _ in 0..100 {
            p = p.op(b"s");
        }
        assert!(matches!(
            load_state_dict(&p.stop()),
            Err(PickleError::TooDeep { .. })
        ));
        // A dict containing itself.
        let b = P::new().op(b"}q\x00").s("me").op(b"h\x00s").stop();
        assert!(
            matches!(load_state_dict(&b), Err(PickleError::SharedContainer { name }) if name == "me")
        );
        // A list reached twice (a DAG that would otherwise double at every level).
        let b = P::new()
            .op(b"}")
            .s("a")
            .op(b"]q\x01s")
            .s("b")
            .op(b"h\x01s")
            .stop();
        assert!(matches!(
            load_state_dict(&b),
            Err(PickleError::SharedContainer { .. })
        ));
        // Flattened names that collide.
        let b = P::new()
            .op(b"}")
            .s("a.b")
            .int(1)
            .op(b"s")
            .s("a")
            .op(b"}")
            .s("b")
            .int(2)
            .op(b"ss")
            .stop();
        assert!(
            matches!(load_state_dict(&b), Err(PickleError::DuplicateName { name }) if name == "a.b")
        );
        // A storage as a value.
        let b = P::new()
            .op(b"}")
            .s("s")
            .op(b"(")
            .s("storage")
            .global("torch", "FloatStorage")
            .s("0")
            .s("cpu")
            .int(1)
            .op(b"tQs")
            .stop();
        assert!(matches!(
            load_state_dict(&b),
            Err(PickleError::BadLeaf {
                found: "a storage",
                ..
            })
        ));
    }

    #[test]
    fn memo_gets_share_instead_of_copying() {
        // A 1000-char string read back 10 000 times costs 10 000 pointers, not 10 MB.
        let big = "x".repeat(1000);
        let mut p = P::new().op(b"}").s("k").op(b"(").s(&big).op(b"q\x00");
        for _ in 0..10_000 {
            p = p.op(b"h\x00");
        }
        let b = p.op(b"ls").stop();
        let sd = load_state_dict(&b).unwrap();
        assert_eq!(sd.scalars.len(), 10_001);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = load_state_dict(&bytes);
                let mut b = vec![0x80, 2];
                b.extend(&bytes);
                let _ = load_state_dict(&b);
            }

            #[test]
            fn mutated_pickles_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5),
            ) {
                let mut b = two_tensors();
                for (at, byte) in edits {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
                let _ = load_state_dict(&b);
            }
        }
    }
}
