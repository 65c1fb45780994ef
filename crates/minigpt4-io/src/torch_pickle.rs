//! PyTorch checkpoints (`torch.save` state dicts, `.pth`/`.pt`/`.bin`) read by a restricted
//! pickle machine of our own, in both of torch's layouts, without executing anything.
//!
//! - **Zip** (torch ≥ 1.6, torch/serialization.py `_save`): a zip holding `<name>/data.pkl`, the
//!   pickled state dict, and one entry `<name>/data/<key>` per storage with its raw
//!   little-endian bytes. Tensors are read from the zip only when asked for, so a 2 GB EVA
//!   checkpoint is never held twice.
//! - **Legacy** (pre-1.6, `_legacy_save`): five things back to back: a pickled magic number, a
//!   pickled protocol version, a pickled sys-info dict, the pickled object, a pickled list of
//!   storage keys, and then, for each key in that order, an int64 element count and the
//!   storage's raw bytes.
//!
//! In both, tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)` calls
//! and storages are persistent ids `('storage', torch.FloatStorage, key, location, numel)`.
//!
//! Why not candle's `pickle.rs`: it panics on short argument tuples, recurses without bound (a
//! 1 KB file of nested tuples overflowed the stack), copies memo entries (a 416-byte "billion
//! laughs" file doubled memory 40 times), inflates zip entries without a bound, and silently
//! drops objects it does not understand. This machine is restricted the way
//! `torch.load(weights_only=True)` is: `GLOBAL` may name only the few constructors a state dict
//! needs, and anything else (`os.system`, `builtins.eval`, …) is refused before it could be
//! called. Every size read from the file is checked against the bytes that are there before
//! anything is allocated; the stack, memo (shared, never copied) and nesting are bounded; a zip
//! entry is never inflated past the size its tensor needs. A hostile file is an error, never a
//! crash or an allocation bomb.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The first pickle of every legacy file: torch's `MAGIC_NUMBER`.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const MAX_STACK: usize = 1 << 16;
const MAX_MEMO: usize = 1 << 20;
const MAX_DEPTH: usize = 64;
const MAX_OBJECTS: usize = 1 << 22;

/// The callables a state dict is built from; `GLOBAL` refuses every other name.
const ALLOWED: [(&str, &str); 4] = [
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
];

/// Whether `bytes` start like a legacy torch file (a protocol-2 pickle of a long), not a zip.
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x80, 0x02, 0x8a])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum StorageType {
    F32,
    F64,
    F16,
    BF16,
    I64,
}

impl StorageType {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => 2,
            Self::F32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }
}

#[derive(Clone, Debug)]
struct TensorRef {
    key: String,
    kind: StorageType,
    /// Elements of the whole storage, as its persistent id says.
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Clone, Debug)]
enum Value {
    None,
    /// A bool or float: state dicts carry them (`requires_grad`) but never need their value.
    Scalar,
    Int(i128),
    Str(String),
    Tuple(Rc<Vec<Value>>, usize),
    List(Rc<Container<Value>>),
    Dict(Rc<Container<(Value, Value)>>),
    Global(&'static str, &'static str),
    StorageClass(StorageType),
    Storage {
        key: String,
        kind: StorageType,
        numel: usize,
    },
    Tensor(TensorRef),
    Mark,
}

/// A list or dict. Its nesting depth is kept up to date as items arrive, and it is sealed once it
/// has been put inside another container (pickle fills a container before nesting it), so the
/// depth of every value is known in O(1) and bounded: no recursion, not even a drop, goes deep.
#[derive(Debug)]
struct Container<T> {
    items: RefCell<Vec<T>>,
    depth: Cell<usize>,
    sealed: Cell<bool>,
}

impl<T> Default for Container<T> {
    fn default() -> Self {
        Self { items: RefCell::new(Vec::new()), depth: Cell::new(1), sealed: Cell::new(false) }
    }
}

impl Value {
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(_, d) => *d,
            Value::List(c) => c.depth.get(),
            Value::Dict(c) => c.depth.get(),
            _ => 0,
        }
    }

    /// Called when `self` goes inside another container.
    fn seal(&self) {
        match self {
            Value::List(c) => c.sealed.set(true),
            Value::Dict(c) => c.sealed.set(true),
            _ => {}
        }
    }

    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            _ => None,
        }
    }

    fn as_usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(t, _) => t.iter().map(Value::as_usize).collect(),
            _ => None,
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
    /// Which pickle this is, for messages: "legacy torch file" or "data.pkl".
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn bad(&self, msg: impl Into<String>) -> Error {
        Error::BadCheckpoint {
            file: self.file.to_string(),
            msg: format!("{}, byte {}: {}", self.what, self.pos, msg.into()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(
                self.bad(format!("wants {n} bytes but the file ends {} bytes later", self.data.len() - self.pos))
            );
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.bad("unterminated text line"))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| self.bad("text line is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad("string is not UTF-8"))
    }

    /// Runs one pickle to its STOP and returns the object it built.
    fn pickle(&mut self) -> Result<Value> {
        let mut stack: Vec<Value> = Vec::new();
        let mut memo: HashMap<u32, Value> = HashMap::new();
        let mut objects = 0usize;
        loop {
            objects += 1;
            if objects > MAX_OBJECTS || stack.len() > MAX_STACK || memo.len() > MAX_MEMO {
                return Err(self.bad("pickle is larger than any state dict this reader accepts"));
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.bad(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return pop(self, &mut stack), // STOP
                b'(' => stack.push(Value::Mark),
                b'N' => stack.push(Value::None),
                0x88 | 0x89 => stack.push(Value::Scalar),
                b'J' => stack.push(Value::Int(i32::from_le_bytes(self.take(4)?.try_into().expect("4")) as i128)),
                b'K' => stack.push(Value::Int(self.u8()? as i128)),
                b'M' => stack.push(Value::Int(self.u16()? as i128)),
                0x8a => {
                    // LONG1: little-endian two's complement, at most 16 bytes here.
                    let n = self.u8()? as usize;
                    if n > 16 {
                        return Err(self.bad(format!("{n}-byte integer")));
                    }
                    let b = self.take(n)?;
                    let mut v: i128 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i128) << (8 * i);
                    }
                    if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    stack.push(Value::Int(v));
                }
                b'G' => {
                    self.take(8)?;
                    stack.push(Value::Scalar);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s));
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s));
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    stack.push(Value::Str(s));
                }
                b')' => stack.push(Value::Tuple(Rc::new(Vec::new()), 1)),
                b']' => stack.push(Value::List(Rc::default())),
                b'}' => stack.push(Value::Dict(Rc::default())),
                b't' => {
                    let items = pop_mark(self, &mut stack)?;
                    stack.push(tuple(self, items)?);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if stack.len() < n {
                        return Err(self.bad("tuple of more items than the stack holds"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    if items.iter().any(|v| matches!(v, Value::Mark)) {
                        return Err(self.bad("tuple over a mark"));
                    }
                    stack.push(tuple(self, items)?);
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    memo.insert(k, top(self, &stack)?.clone());
                }
                b'r' => {
                    let k = self.u32()?;
                    memo.insert(k, top(self, &stack)?.clone());
                }
                0x94 => {
                    let k = memo.len() as u32;
                    memo.insert(k, top(self, &stack)?.clone());
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    stack.push(memo.get(&k).cloned().ok_or_else(|| self.bad(format!("memo {k} was never stored")))?);
                }
                b'j' => {
                    let k = self.u32()?;
                    stack.push(memo.get(&k).cloned().ok_or_else(|| self.bad(format!("memo {k} was never stored")))?);
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    stack.push(global(self, &module, &name)?);
                }
                b'Q' => {
                    let pid = pop(self, &mut stack)?;
                    stack.push(storage(self, pid)?);
                }
                b'R' => {
                    let args = pop(self, &mut stack)?;
                    let callable = pop(self, &mut stack)?;
                    stack.push(reduce(self, callable, args)?);
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (its `_metadata`) or of a rebuilt
                    // tensor; neither changes the weights.
                    pop(self, &mut stack)?;
                    top(self, &stack)?;
                }
                b's' => {
                    let v = pop(self, &mut stack)?;
                    let k = pop(self, &mut stack)?;
                    dict_insert(self, top(self, &stack)?, vec![k, v])?;
                }
                b'u' => {
                    let items = pop_mark(self, &mut stack)?;
                    if items.len() % 2 != 0 {
                        return Err(self.bad("SETITEMS with an odd number of items"));
                    }
                    dict_insert(self, top(self, &stack)?, items)?;
                }
                b'a' => {
                    let v = pop(self, &mut stack)?;
                    list_extend(self, top(self, &stack)?, vec![v])?;
                }
                b'e' => {
                    let items = pop_mark(self, &mut stack)?;
                    list_extend(self, top(self, &stack)?, items)?;
                }
                b'0' => {
                    pop(self, &mut stack)?;
                }
                other => return Err(self.bad(format!("pickle opcode 0x{other:02x} is not used by state dicts"))),
            }
        }
    }
}

fn top<'s>(r: &Reader, stack: &'s [Value]) -> Result<&'s Value> {
    stack.last().ok_or_else(|| r.bad("pickle stack underflow"))
}

fn pop(r: &Reader, stack: &mut Vec<Value>) -> Result<Value> {
    match stack.pop() {
        Some(Value::Mark) | None => Err(r.bad("pickle stack underflow")),
        Some(v) => Ok(v),
    }
}

fn pop_mark(r: &Reader, stack: &mut Vec<Value>) -> Result<Vec<Value>> {
    let mark =
        stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| r.bad("no mark on the pickle stack"))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

/// A nesting depth for a container holding `items`, refused past [`MAX_DEPTH`].
fn nested_depth<'v>(r: &Reader, current: usize, items: impl Iterator<Item = &'v Value>) -> Result<usize> {
    let mut depth = current;
    for v in items {
        v.seal();
        depth = depth.max(1 + v.depth());
    }
    if depth > MAX_DEPTH {
        return Err(r.bad(format!("containers nested deeper than {MAX_DEPTH}")));
    }
    Ok(depth)
}

fn tuple(r: &Reader, items: Vec<Value>) -> Result<Value> {
    let depth = nested_depth(r, 1, items.iter())?;
    Ok(Value::Tuple(Rc::new(items), depth))
}

fn global(r: &Reader, module: &str, name: &str) -> Result<Value> {
    if module == "torch" {
        if let Some(kind) = StorageType::from_name(name) {
            return Ok(Value::StorageClass(kind));
        }
    }
    ALLOWED.iter().find(|(m, n)| *m == module && *n == name).map(|(m, n)| Value::Global(m, n)).ok_or_else(|| {
        r.bad(format!(
            "refuses to load `{module}.{name}`: a state dict needs only tensors (this file may try to run code)"
        ))
    })
}

fn storage(r: &Reader, pid: Value) -> Result<Value> {
    let Value::Tuple(t, _) = pid else { return Err(r.bad("persistent id is not a tuple")) };
    match t.as_slice() {
        [Value::Str(tag), Value::StorageClass(kind), Value::Str(key), _location, numel, ..] if tag == "storage" => {
            let numel = numel.as_usize().ok_or_else(|| r.bad("storage with a malformed element count"))?;
            Ok(Value::Storage { key: key.clone(), kind: *kind, numel })
        }
        _ => Err(r.bad("persistent id is not a ('storage', type, key, location, size) record")),
    }
}

fn reduce(r: &Reader, callable: Value, args: Value) -> Result<Value> {
    let Value::Global(module, name) = callable else { return Err(r.bad("REDUCE on something that is not a callable")) };
    let Value::Tuple(args, _) = args else { return Err(r.bad("REDUCE arguments are not a tuple")) };
    match (module, name) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Rc::default())),
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => match args.as_slice() {
            [Value::Storage { key, kind, numel }, offset, size, stride, ..] => {
                let bad = || r.bad("tensor record with a malformed offset, size or stride");
                let (size, stride) = (size.as_usizes().ok_or_else(bad)?, stride.as_usizes().ok_or_else(bad)?);
                if size.len() != stride.len() {
                    return Err(bad());
                }
                let offset = offset.as_usize().ok_or_else(bad)?;
                Ok(Value::Tensor(TensorRef { key: key.clone(), kind: *kind, numel: *numel, offset, size, stride }))
            }
            _ => Err(r.bad("tensor record without a storage")),
        },
        ("torch._utils", "_rebuild_parameter") => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err(r.bad("parameter record without a tensor")),
        },
        _ => Err(r.bad(format!("refuses to call `{module}.{name}` with these arguments"))),
    }
}

fn dict_insert(r: &Reader, target: &Value, items: Vec<Value>) -> Result<()> {
    let Value::Dict(d) = target else { return Err(r.bad("SETITEM on something that is not a dict")) };
    if d.sealed.get() {
        return Err(r.bad("a dict is changed after it was nested"));
    }
    d.depth.set(nested_depth(r, d.depth.get().max(1), items.iter())?);
    let mut it = items.into_iter();
    let mut out = d.items.borrow_mut();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(())
}

fn list_extend(r: &Reader, target: &Value, items: Vec<Value>) -> Result<()> {
    let Value::List(l) = target else { return Err(r.bad("APPEND on something that is not a list")) };
    if l.sealed.get() {
        return Err(r.bad("a list is changed after it was nested"));
    }
    l.depth.set(nested_depth(r, l.depth.get().max(1), items.iter())?);
    l.items.borrow_mut().extend(items);
    Ok(())
}

/// Every tensor of a legacy `torch.save` state dict (`{"model": …}` and `{"state_dict": …}`
/// wrappers are looked through), as `dtype` on `device`.
pub fn read(path: &Path, device: &Device, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = path.display().to_string();
    read_bytes(&data, &file, device, dtype)
}

pub fn read_bytes(data: &[u8], file: &str, device: &Device, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut r = Reader { data, pos: 0, file, what: "legacy torch file" };
    if !matches!(r.pickle()?, Value::Int(MAGIC)) {
        return Err(r.bad("not a legacy torch file (wrong magic number)"));
    }
    if !matches!(r.pickle()?, Value::Int(1001)) {
        return Err(r.bad("unknown legacy protocol version (expected 1001)"));
    }
    r.pickle()?; // sys info: endianness and C type sizes; torch has written little-endian since 2017
    let root = r.pickle()?;
    let Value::List(keys) = r.pickle()? else { return Err(r.bad("the storage key list is not a list")) };

    let mut storages: HashMap<String, (usize, usize)> = HashMap::new(); // key → (byte start, count)
    let mut kinds: HashMap<String, StorageType> = HashMap::new();
    let tensors = state_dict(&r, &root)?;
    for (_, t) in &tensors {
        kinds.insert(t.key.clone(), t.kind);
    }
    for key in keys.items.borrow().iter() {
        let Value::Str(key) = key else { return Err(r.bad("a storage key is not a string")) };
        let count = usize::try_from(r.u64()?).map_err(|_| r.bad("storage size overflows"))?;
        let kind = kinds.get(key).copied().unwrap_or(StorageType::F32);
        let bytes = count.checked_mul(kind.size()).ok_or_else(|| r.bad("storage size overflows"))?;
        let start = r.pos;
        r.take(bytes)?;
        storages.insert(key.clone(), (start, count));
    }
    if r.pos != data.len() {
        return Err(r.bad(format!("{} unexpected bytes after the last storage", data.len() - r.pos)));
    }

    let mut out = HashMap::with_capacity(tensors.len());
    for (name, t) in tensors {
        let &(start, count) =
            storages.get(&t.key).ok_or_else(|| r.bad(format!("`{name}`: storage {} is missing", t.key)))?;
        if t.numel != count {
            return Err(
                r.bad(format!("`{name}`: storage {} holds {count} elements, its record says {}", t.key, t.numel))
            );
        }
        let tensor = to_tensor(&data[start..start + count * t.kind.size()], &t, &name, file, device, dtype)?;
        out.insert(name, tensor);
    }
    Ok(out)
}

/// The tensor `t` describes, read from its storage's bytes.
fn to_tensor(storage: &[u8], t: &TensorRef, name: &str, file: &str, device: &Device, dtype: DType) -> Result<Tensor> {
    let values = gather(storage, t).ok_or_else(|| Error::BadCheckpoint {
        file: file.to_string(),
        msg: format!(
            "`{name}`: shape {:?} with stride {:?} at offset {} reaches past its storage of {} elements",
            t.size,
            t.stride,
            t.offset,
            storage.len() / t.kind.size()
        ),
    })?;
    Ok(Tensor::from_vec(values, t.size.as_slice(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?)
}

/// The most bytes of `data.pkl` read: a state dict's pickle is kilobytes to a few megabytes
/// (the tensors are in other entries).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// torch stores its entries uncompressed. One deflated by another tool may inflate to at most
/// this many times its compressed size: float weights never compress that well, a zip bomb
/// (4 MB inflating to 4 GB) does.
const MAX_INFLATE_RATIO: u64 = 32;

/// Whether `bytes` start like a zip archive (torch ≥ 1.6 checkpoints).
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// A zip-layout torch checkpoint: its state dict parsed at open, each tensor read on request.
pub struct TorchZip {
    archive: Mutex<zip::ZipArchive<std::fs::File>>,
    /// `<name>/`, the folder every entry is in.
    prefix: String,
    tensors: HashMap<String, TensorRef>,
    file: String,
    file_len: u64,
}

impl TorchZip {
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        let bad = |msg: String| Error::BadCheckpoint { file: file.clone(), msg };
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut archive = crate::error::guard_reader(&file, || {
            zip::ZipArchive::new(f).map_err(|e| bad(format!("not a readable zip archive: {e}")))
        })?;
        let pkl = archive
            .file_names()
            .filter_map(Result::ok)
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .min()
            .map(|n| n.into_owned())
            .ok_or_else(|| bad("no <name>/data.pkl entry: not a torch.save checkpoint".into()))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let data = read_entry(&mut archive, &pkl, MAX_PICKLE_BYTES, &file, file_len)?;
        let mut r = Reader { data: &data, pos: 0, file: &file, what: "data.pkl" };
        let root = r.pickle()?;
        if r.pos != data.len() {
            return Err(r.bad(format!("{} unexpected bytes after the pickle", data.len() - r.pos)));
        }
        let tensors = state_dict(&r, &root)?.into_iter().collect();
        Ok(Self { archive: Mutex::new(archive), prefix, tensors, file, file_len })
    }

    /// Names of the state dict's tensors.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The shape of `name`, read from the pickle (no data is read).
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.size.as_slice())
    }

    /// The tensor `name` (f32 on the CPU), or `None` when the state dict has no such name.
    pub fn get(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(t) = self.tensors.get(name) else { return Ok(None) };
        let bad = |msg: String| Error::BadCheckpoint { file: self.file.clone(), msg: format!("`{name}`: {msg}") };
        let want = t.numel.checked_mul(t.kind.size()).ok_or_else(|| bad("storage size overflows".into()))?;
        let entry = format!("{}data/{}", self.prefix, t.key);
        let bytes = {
            let mut archive = self.archive.lock().map_err(|_| bad("archive lock poisoned".into()))?;
            read_entry(&mut archive, &entry, want as u64, &self.file, self.file_len)?
        };
        if bytes.len() != want {
            return Err(bad(format!(
                "storage {} holds {} bytes, its record says {} elements of {} bytes",
                t.key,
                bytes.len(),
                t.numel,
                t.kind.size()
            )));
        }
        to_tensor(&bytes, t, name, &self.file, &Device::Cpu, DType::F32).map(Some)
    }
}

/// The entry's bytes, at most `limit`; never inflated past its declared size, and a declared
/// size out of proportion to the compressed bytes (a zip bomb) is refused before reading.
fn read_entry(
    archive: &mut zip::ZipArchive<std::fs::File>,
    name: &str,
    limit: u64,
    file: &str,
    file_len: u64,
) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::BadCheckpoint { file: file.to_string(), msg: format!("zip entry `{name}`: {msg}") };
    let entry = archive.by_name(name).map_err(|e| bad(e.to_string()))?;
    let (size, packed) = (entry.size(), entry.compressed_size());
    if size > limit {
        return Err(bad(format!("{size} bytes, more than the {limit} it may hold")));
    }
    if packed > file_len {
        return Err(bad(format!("claims {packed} compressed bytes in a file of {file_len}")));
    }
    if entry.compression() != zip::CompressionMethod::Stored
        && size > packed.saturating_mul(MAX_INFLATE_RATIO).max(4096)
    {
        return Err(bad(format!("{packed} compressed bytes inflate to {size}: refused as a zip bomb")));
    }
    let mut out = Vec::with_capacity(size as usize);
    entry.take(size + 1).read_to_end(&mut out).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!("inflates to {} bytes, not the {size} its header declares", out.len())));
    }
    Ok(out)
}

/// The name → tensor pairs of the pickled root object.
fn state_dict(r: &Reader, root: &Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(d) = root else { return Err(r.bad("the saved object is not a dict")) };
    let d = d.items.borrow();
    let is_key = |k: &Value, name: &str| matches!(k, Value::Str(s) if s == name);
    for wrapper in ["model", "state_dict"] {
        if let Some((_, inner @ Value::Dict(_))) = d.iter().find(|(k, _)| is_key(k, wrapper)) {
            return state_dict(r, inner);
        }
    }
    let mut out = Vec::new();
    for (k, v) in d.iter() {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => out.push((name.clone(), t.clone())),
            (Value::Str(name), _) => return Err(r.bad(format!("`{name}` is not a tensor"))),
            _ => return Err(r.bad("a state dict key is not a string")),
        }
    }
    if out.is_empty() {
        return Err(r.bad("no tensors found (not a state dict?)"));
    }
    Ok(out)
}

/// The tensor's elements in row-major order, read through its strides as f64-exact f32 (or
/// `None` when a stride reaches past the storage).
fn gather(bytes: &[u8], t: &TensorRef) -> Option<Vec<f32>> {
    let count = bytes.len() / t.kind.size();
    let n: usize = t.size.iter().try_fold(1usize, |a, &s| a.checked_mul(s))?;
    if n > 0 {
        let last =
            t.size.iter().zip(&t.stride).try_fold(t.offset, |a, (&s, &st)| a.checked_add((s - 1).checked_mul(st)?))?;
        if last >= count {
            return None;
        }
    }
    let read = |i: usize| -> f32 {
        let b = &bytes[i * t.kind.size()..(i + 1) * t.kind.size()];
        match t.kind {
            StorageType::F32 => f32::from_le_bytes(b.try_into().expect("4")),
            StorageType::F64 => f64::from_le_bytes(b.try_into().expect("8")) as f32,
            StorageType::F16 => half::f16::from_le_bytes(b.try_into().expect("2")).to_f32(),
            StorageType::BF16 => half::bf16::from_le_bytes(b.try_into().expect("2")).to_f32(),
            StorageType::I64 => i64::from_le_bytes(b.try_into().expect("8")) as f32,
        }
    };
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..n {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(read(at));
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(out)
}
