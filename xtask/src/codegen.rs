//! Generates `crates/pier-wire/src/generated.rs` from the AMQP 0-9-1 JSON spec.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

const OUTPUT: &str = "crates/pier-wire/src/generated.rs";

/// The `basic` content properties `pier_wire::BasicProperties` is written for (by hand, with
/// `type` -> `kind`). Codegen fails if the spec disagrees, so the two cannot drift apart.
const EXPECTED_BASIC_PROPERTIES: &[(&str, &str)] = &[
    ("content-type", "shortstr"),
    ("content-encoding", "shortstr"),
    ("headers", "table"),
    ("delivery-mode", "octet"),
    ("priority", "octet"),
    ("correlation-id", "shortstr"),
    ("reply-to", "shortstr"),
    ("expiration", "shortstr"),
    ("message-id", "shortstr"),
    ("timestamp", "timestamp"),
    ("type", "shortstr"),
    ("user-id", "shortstr"),
    ("app-id", "shortstr"),
    ("cluster-id", "shortstr"),
];

pub fn run(root: &Path, spec_path: &Path, check: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(spec_path)
        .map_err(|e| format!("cannot read spec {}: {e}", spec_path.display()))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("spec is not valid JSON: {e}"))?;
    let spec = Spec::parse(&json)?;
    let source_name = spec_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = generate(&spec, &source_name);
    let formatted = rustfmt(root, &raw)?;
    let out_path = root.join(OUTPUT);
    if check {
        let current = std::fs::read_to_string(&out_path)
            .map_err(|e| format!("cannot read {}: {e}", out_path.display()))?;
        if current != formatted {
            return Err(format!(
                "{OUTPUT} is out of date: run `cargo run -p xtask -- codegen`"
            ));
        }
        println!("{OUTPUT} is up to date");
    } else {
        std::fs::write(&out_path, formatted)
            .map_err(|e| format!("cannot write {}: {e}", out_path.display()))?;
        println!(
            "wrote {OUTPUT} ({} classes, {} methods)",
            spec.classes.len(),
            spec.classes.iter().map(|c| c.methods.len()).sum::<usize>()
        );
    }
    Ok(())
}

fn rustfmt(root: &Path, src: &str) -> Result<String, String> {
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    {
        let mut stdin = child.stdin.take().ok_or("rustfmt: no stdin")?;
        stdin
            .write_all(src.as_bytes())
            .map_err(|e| format!("rustfmt: cannot write: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("rustfmt failed: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustfmt rejected the generated code:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("rustfmt output is not UTF-8: {e}"))
}

// ---- spec model ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Octet,
    Short,
    Long,
    LongLong,
    Timestamp,
    Bit,
    ShortStr,
    LongStr,
    Table,
}

impl Ty {
    fn parse(s: &str) -> Result<Ty, String> {
        Ok(match s {
            "octet" => Ty::Octet,
            "short" => Ty::Short,
            "long" => Ty::Long,
            "longlong" => Ty::LongLong,
            "timestamp" => Ty::Timestamp,
            "bit" => Ty::Bit,
            "shortstr" => Ty::ShortStr,
            "longstr" => Ty::LongStr,
            "table" => Ty::Table,
            other => return Err(format!("unsupported AMQP type {other:?}")),
        })
    }

    fn rust(self) -> &'static str {
        match self {
            Ty::Octet => "u8",
            Ty::Short => "u16",
            Ty::Long => "u32",
            Ty::LongLong | Ty::Timestamp => "u64",
            Ty::Bit => "bool",
            Ty::ShortStr => "ShortString",
            Ty::LongStr => "LongString",
            Ty::Table => "FieldTable",
        }
    }

    fn amqp(self) -> &'static str {
        match self {
            Ty::Octet => "octet",
            Ty::Short => "short",
            Ty::Long => "long",
            Ty::LongLong => "longlong",
            Ty::Timestamp => "timestamp",
            Ty::Bit => "bit",
            Ty::ShortStr => "shortstr",
            Ty::LongStr => "longstr",
            Ty::Table => "table",
        }
    }
}

#[derive(Debug)]
struct Arg {
    spec_name: String,
    field: String,
    domain: Option<String>,
    ty: Ty,
    default: Option<Value>,
}

#[derive(Debug)]
struct MethodDef {
    class_name: String,
    class_id: u16,
    name: String,
    id: u16,
    synchronous: bool,
    content: bool,
    args: Vec<Arg>,
}

impl MethodDef {
    fn full_name(&self) -> String {
        format!("{}.{}", self.class_name, self.name)
    }
    fn ident(&self) -> String {
        format!("{}{}", camel(&self.class_name), camel(&self.name))
    }
    fn has_nowait(&self) -> bool {
        self.args
            .iter()
            .any(|a| a.field == "nowait" && a.ty == Ty::Bit)
    }
}

#[derive(Debug)]
struct ClassDef {
    name: String,
    id: u16,
    methods: Vec<MethodDef>,
}

#[derive(Debug)]
struct Constant {
    name: String,
    value: u64,
    class: Option<String>,
}

impl Constant {
    /// Frame types, `FRAME-MIN-SIZE` and `FRAME-END` (but not the `FRAME-ERROR` reply code,
    /// which has an error class).
    fn is_frame_constant(&self) -> bool {
        self.name.starts_with("FRAME-") && self.class.is_none()
    }
}

#[derive(Debug)]
struct Spec {
    major: u64,
    minor: u64,
    revision: u64,
    port: u64,
    constants: Vec<Constant>,
    classes: Vec<ClassDef>,
}

fn str_field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, String> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{what}: missing string {key:?}"))
}

fn u64_field(v: &Value, key: &str, what: &str) -> Result<u64, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{what}: missing integer {key:?}"))
}

fn u16_field(v: &Value, key: &str, what: &str) -> Result<u16, String> {
    let n = u64_field(v, key, what)?;
    u16::try_from(n).map_err(|_| format!("{what}: {key} {n} out of range"))
}

fn array<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a Vec<Value>, String> {
    v.get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{what}: missing array {key:?}"))
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn field_ident(spec_name: &str) -> Result<String, String> {
    let snake = spec_name.replace(['-', ' '], "_");
    if snake == "type" {
        return Ok("kind".to_string());
    }
    if RUST_KEYWORDS.contains(&snake.as_str()) {
        return Err(format!("argument name {spec_name:?} is a Rust keyword"));
    }
    if !snake
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "unexpected characters in argument name {spec_name:?}"
        ));
    }
    Ok(snake)
}

fn camel(s: &str) -> String {
    s.split(['-', ' ', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut cs = p.chars();
            match cs.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + cs.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn const_ident(s: &str) -> String {
    s.replace(['-', ' ', '.'], "_").to_ascii_uppercase()
}

impl Spec {
    fn parse(json: &Value) -> Result<Spec, String> {
        let domains: BTreeMap<String, String> = array(json, "domains", "spec")?
            .iter()
            .map(|d| {
                let pair = d.as_array().ok_or("domain entry is not an array")?;
                match (
                    pair.first().and_then(Value::as_str),
                    pair.get(1).and_then(Value::as_str),
                ) {
                    (Some(name), Some(ty)) => Ok((name.to_string(), ty.to_string())),
                    _ => Err(format!("bad domain entry {d}")),
                }
            })
            .collect::<Result<_, String>>()?;
        let resolve = |domain: &str| -> Result<Ty, String> {
            // Domains may name other domains; follow them to a primitive type.
            let mut cur = domain.to_string();
            for _ in 0..8 {
                if let Ok(t) = Ty::parse(&cur) {
                    return Ok(t);
                }
                cur = domains
                    .get(&cur)
                    .ok_or_else(|| format!("unknown domain {cur:?}"))?
                    .clone();
                if let Ok(t) = Ty::parse(&cur) {
                    return Ok(t);
                }
            }
            Err(format!("domain {domain:?} does not resolve"))
        };

        let constants = array(json, "constants", "spec")?
            .iter()
            .map(|c| {
                Ok(Constant {
                    name: str_field(c, "name", "constant")?.to_string(),
                    value: u64_field(c, "value", "constant")?,
                    class: c.get("class").and_then(Value::as_str).map(str::to_string),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;

        let mut classes = Vec::new();
        for c in array(json, "classes", "spec")? {
            let class_name = str_field(c, "name", "class")?.to_string();
            let class_id = u16_field(c, "id", &class_name)?;
            if class_name == "basic" {
                check_basic_properties(c)?;
            }
            let mut methods = Vec::new();
            for m in array(c, "methods", &class_name)? {
                let name = str_field(m, "name", &class_name)?.to_string();
                let what = format!("{class_name}.{name}");
                let mut args = Vec::new();
                for a in array(m, "arguments", &what)? {
                    let spec_name = str_field(a, "name", &what)?.to_string();
                    let (domain, ty) = match (
                        a.get("type").and_then(Value::as_str),
                        a.get("domain").and_then(Value::as_str),
                    ) {
                        (Some(t), _) => (None, Ty::parse(t)?),
                        (None, Some(d)) => (Some(d.to_string()), resolve(d)?),
                        (None, None) => {
                            return Err(format!("{what}.{spec_name}: no type or domain"))
                        }
                    };
                    args.push(Arg {
                        field: field_ident(&spec_name)?,
                        spec_name,
                        domain,
                        ty,
                        default: a.get("default-value").cloned(),
                    });
                }
                methods.push(MethodDef {
                    id: u16_field(m, "id", &what)?,
                    synchronous: m.get("synchronous").and_then(Value::as_bool) == Some(true),
                    content: m.get("content").and_then(Value::as_bool) == Some(true),
                    class_name: class_name.clone(),
                    class_id,
                    name,
                    args,
                });
            }
            classes.push(ClassDef {
                name: class_name,
                id: class_id,
                methods,
            });
        }

        let spec = Spec {
            major: u64_field(json, "major-version", "spec")?,
            minor: u64_field(json, "minor-version", "spec")?,
            revision: u64_field(json, "revision", "spec")?,
            port: u64_field(json, "port", "spec")?,
            constants,
            classes,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for c in &self.classes {
            for m in &c.methods {
                if let Some(prev) = seen.insert((m.class_id, m.id), m.full_name()) {
                    return Err(format!(
                        "duplicate method id {}/{}: {prev} and {}",
                        m.class_id,
                        m.id,
                        m.full_name()
                    ));
                }
            }
        }
        for k in &self.constants {
            let ok = if k.is_frame_constant() {
                k.value <= u64::from(u32::MAX)
            } else {
                k.value <= u64::from(u16::MAX)
            };
            if !ok {
                return Err(format!("constant {} = {} out of range", k.name, k.value));
            }
        }
        Ok(())
    }

    fn methods(&self) -> impl Iterator<Item = &MethodDef> {
        self.classes.iter().flat_map(|c| c.methods.iter())
    }
}

fn check_basic_properties(class: &Value) -> Result<(), String> {
    let props = array(class, "properties", "basic")?;
    let got: Vec<(String, String)> = props
        .iter()
        .map(|p| {
            Ok((
                str_field(p, "name", "basic property")?.to_string(),
                str_field(p, "type", "basic property")?.to_string(),
            ))
        })
        .collect::<Result<_, String>>()?;
    let want: Vec<(String, String)> = EXPECTED_BASIC_PROPERTIES
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    if got != want {
        return Err(format!(
            "the spec's basic properties {got:?} differ from the ones BasicProperties \
             (crates/pier-wire/src/properties.rs) implements: update both"
        ));
    }
    Ok(())
}

// ---- code generation ----------------------------------------------------------------------

/// Arguments as laid out on the wire: consecutive bits share octets (up to 8 per octet,
/// first bit in the least significant position), everything else stands alone.
enum Item<'a> {
    Field(&'a Arg),
    Bits(Vec<&'a Arg>),
}

fn layout(args: &[Arg]) -> Vec<Item<'_>> {
    let mut items: Vec<Item<'_>> = Vec::new();
    for a in args {
        if a.ty == Ty::Bit {
            if let Some(Item::Bits(bits)) = items.last_mut() {
                if bits.len() < 8 {
                    bits.push(a);
                    continue;
                }
            }
            items.push(Item::Bits(vec![a]));
        } else {
            items.push(Item::Field(a));
        }
    }
    items
}

struct Out(String);

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        self.0.push_str(s.as_ref());
        self.0.push('\n');
    }
}

fn default_doc(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(o) if o.is_empty() => "empty table".to_string(),
        other => other.to_string(),
    }
}

fn generate(spec: &Spec, source_name: &str) -> String {
    let mut o = Out(String::new());
    o.line(format!(
        "// @generated by `cargo run -p xtask -- codegen` from {source_name}. Do not edit by hand."
    ));
    o.line("");
    o.line(format!(
        "//! AMQP {}-{}-{} constants, reply codes and methods, generated from RabbitMQ's \
         machine-readable spec.",
        spec.major, spec.minor, spec.revision
    ));
    o.line("");
    o.line("use bytes::{BufMut, Bytes, BytesMut};");
    o.line("");
    o.line("use crate::codec::{self, Reader};");
    o.line("use crate::error::WireError;");
    o.line("use crate::strings::{LongString, ShortString};");
    o.line("use crate::table::FieldTable;");
    o.line("");
    gen_constants(&mut o, spec);
    gen_classes(&mut o, spec);
    gen_reply_codes(&mut o, spec);
    for m in spec.methods() {
        gen_method_struct(&mut o, m);
    }
    gen_method_enum(&mut o, spec);
    gen_tests(&mut o, spec);
    o.0
}

fn gen_constants(o: &mut Out, spec: &Spec) {
    o.line(format!(
        "/// The protocol header a client sends first: `AMQP` 0 {} {} {}.",
        spec.major, spec.minor, spec.revision
    ));
    o.line(format!(
        "pub const PROTOCOL_HEADER: [u8; 8] = *b\"AMQP\\x00\\x{:02x}\\x{:02x}\\x{:02x}\";",
        spec.major, spec.minor, spec.revision
    ));
    o.line("/// The IANA-assigned AMQP port.");
    o.line(format!("pub const DEFAULT_PORT: u16 = {};", spec.port));
    for k in spec.constants.iter().filter(|k| k.is_frame_constant()) {
        let (ty, doc) = match k.name.as_str() {
            "FRAME-MIN-SIZE" => ("u32", "Smallest `frame_max` a peer may negotiate."),
            "FRAME-END" => ("u8", "The octet that ends every frame."),
            _ => ("u8", "Frame type octet."),
        };
        o.line(format!("/// {doc}"));
        let value = if ty == "u8" && k.name == "FRAME-END" {
            format!("0x{:02X}", k.value)
        } else {
            k.value.to_string()
        };
        o.line(format!(
            "pub const {}: {ty} = {value};",
            const_ident(&k.name)
        ));
    }
    o.line("");
}

fn gen_classes(o: &mut Out, spec: &Spec) {
    o.line("/// Class ids.");
    o.line("pub mod class_id {");
    for c in &spec.classes {
        o.line(format!("    /// `{}`", c.name));
        o.line(format!(
            "    pub const {}: u16 = {};",
            const_ident(&c.name),
            c.id
        ));
    }
    o.line("}");
    o.line("");
    o.line("/// The name of a class (`\"basic\"`), if the id is known.");
    o.line("pub fn class_name(class_id: u16) -> Option<&'static str> {");
    o.line("    match class_id {");
    for c in &spec.classes {
        o.line(format!("        {} => Some({:?}),", c.id, c.name));
    }
    o.line("        _ => None,");
    o.line("    }");
    o.line("}");
    o.line("");
    o.line("/// The name of a method (`\"basic.publish\"`), if the ids are known.");
    o.line("pub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {");
    o.line("    match (class_id, method_id) {");
    for m in spec.methods() {
        o.line(format!(
            "        ({}, {}) => Some({:?}),",
            m.class_id,
            m.id,
            m.full_name()
        ));
    }
    o.line("        _ => None,");
    o.line("    }");
    o.line("}");
    o.line("");
    o.line("/// `(class id, method id, name)` of every method in the spec.");
    o.line("pub const ALL_METHODS: &[(u16, u16, &str)] = &[");
    for m in spec.methods() {
        o.line(format!(
            "    ({}, {}, {:?}),",
            m.class_id,
            m.id,
            m.full_name()
        ));
    }
    o.line("];");
    o.line("");
}

fn gen_reply_codes(o: &mut Out, spec: &Spec) {
    let codes: Vec<&Constant> = spec
        .constants
        .iter()
        .filter(|k| !k.is_frame_constant())
        .collect();
    o.line("/// Reply codes (`connection.close` / `channel.close` / `basic.return`).");
    o.line("pub mod reply_code {");
    for k in &codes {
        let class = match k.class.as_deref() {
            Some("soft-error") => " Soft error (channel level).",
            Some("hard-error") => " Hard error (connection level).",
            _ => "",
        };
        o.line(format!("    /// `{}`.{class}", k.name));
        o.line(format!(
            "    pub const {}: u16 = {};",
            const_ident(&k.name),
            k.value
        ));
    }
    o.line("");
    o.line("    /// RabbitMQ's spelling of a reply code's name (`\"NOT_FOUND\"`); `\"UNKNOWN\"` for a code not in the spec.");
    o.line("    pub fn name(code: u16) -> &'static str {");
    o.line("        match code {");
    for k in &codes {
        o.line(format!(
            "            {} => {:?},",
            const_ident(&k.name),
            const_ident(&k.name)
        ));
    }
    o.line("            _ => \"UNKNOWN\",");
    o.line("        }");
    o.line("    }");
    o.line("");
    o.line("    /// The code for a name as spelled by [`name`] (`\"NOT_FOUND\"` -> 404).");
    o.line("    pub fn from_name(name: &str) -> Option<u16> {");
    o.line("        match name {");
    for k in &codes {
        o.line(format!(
            "            {:?} => Some({}),",
            const_ident(&k.name),
            const_ident(&k.name)
        ));
    }
    o.line("            _ => None,");
    o.line("        }");
    o.line("    }");
    o.line("");
    let hard: Vec<String> = codes
        .iter()
        .filter(|k| k.class.as_deref() == Some("hard-error"))
        .map(|k| const_ident(&k.name))
        .collect();
    let soft: Vec<String> = codes
        .iter()
        .filter(|k| k.class.as_deref() == Some("soft-error"))
        .map(|k| const_ident(&k.name))
        .collect();
    o.line(
        "    /// `true` for connection-level (hard) errors. Codes not in the spec count as hard,",
    );
    o.line("    /// like RabbitMQ, which maps unknown codes to `INTERNAL_ERROR`.");
    o.line("    pub fn is_hard_error(code: u16) -> bool {");
    o.line(format!(
        "        !matches!(code, REPLY_SUCCESS | {})",
        soft.join(" | ")
    ));
    o.line("    }");
    o.line("");
    o.line("    /// `true` for channel-level (soft) errors.");
    o.line("    pub fn is_soft_error(code: u16) -> bool {");
    o.line(format!("        matches!(code, {})", soft.join(" | ")));
    o.line("    }");
    o.line("");
    o.line("    /// Every hard-error code in the spec.");
    o.line(format!(
        "    pub const HARD_ERRORS: &[u16] = &[{}];",
        hard.join(", ")
    ));
    o.line("    /// Every soft-error code in the spec.");
    o.line(format!(
        "    pub const SOFT_ERRORS: &[u16] = &[{}];",
        soft.join(", ")
    ));
    o.line("}");
    o.line("");
}

fn read_expr(ty: Ty) -> &'static str {
    match ty {
        Ty::Octet => "r.u8()?",
        Ty::Short => "r.u16()?",
        Ty::Long => "r.u32()?",
        Ty::LongLong | Ty::Timestamp => "r.u64()?",
        Ty::ShortStr => "r.shortstr()?",
        Ty::LongStr => "r.longstr()?",
        Ty::Table => "r.table()?",
        Ty::Bit => "(r.u8()? & 0x01) != 0",
    }
}

fn write_stmt(a: &Arg) -> String {
    let f = &a.field;
    match a.ty {
        Ty::Octet => format!("out.put_u8(self.{f});"),
        Ty::Short => format!("out.put_u16(self.{f});"),
        Ty::Long => format!("out.put_u32(self.{f});"),
        Ty::LongLong | Ty::Timestamp => format!("out.put_u64(self.{f});"),
        Ty::ShortStr => format!("codec::put_shortstr(out, self.{f}.as_bytes())?;"),
        Ty::LongStr => format!("codec::put_longstr(out, &self.{f})?;"),
        Ty::Table => format!("codec::put_table(out, &self.{f})?;"),
        Ty::Bit => format!("out.put_u8(u8::from(self.{f}));"),
    }
}

fn gen_method_struct(o: &mut Out, m: &MethodDef) {
    let ident = m.ident();
    let mut traits = Vec::new();
    if m.synchronous {
        traits.push("synchronous");
    }
    if m.content {
        traits.push("carries content");
    }
    let traits = if traits.is_empty() {
        String::new()
    } else {
        format!(", {}", traits.join(", "))
    };
    o.line(format!(
        "/// `{}` ({}/{}{traits}).",
        m.full_name(),
        m.class_id,
        m.id
    ));
    o.line("#[derive(Clone, Debug, PartialEq, Default)]");
    if m.args.is_empty() {
        o.line(format!("pub struct {ident};"));
    } else {
        o.line(format!("pub struct {ident} {{"));
        for a in &m.args {
            let dom = match &a.domain {
                Some(d) if d != a.ty.amqp() => format!("{} (domain `{d}`)", a.ty.amqp()),
                _ => a.ty.amqp().to_string(),
            };
            let def = match &a.default {
                Some(v) => format!(" Spec default: {}.", default_doc(v)),
                None => String::new(),
            };
            o.line(format!("    /// `{}`: {dom}.{def}", a.spec_name));
            o.line(format!("    pub {}: {},", a.field, a.ty.rust()));
        }
        o.line("}");
    }
    o.line("");
    o.line(format!("impl {ident} {{"));
    o.line(format!("    pub const CLASS_ID: u16 = {};", m.class_id));
    o.line(format!("    pub const METHOD_ID: u16 = {};", m.id));
    o.line(format!(
        "    pub const NAME: &'static str = {:?};",
        m.full_name()
    ));
    o.line(format!("    pub const HAS_CONTENT: bool = {};", m.content));
    o.line(format!(
        "    pub const SYNCHRONOUS: bool = {};",
        m.synchronous
    ));
    o.line("");

    let items = layout(&m.args);
    // decode
    let r = if items.is_empty() { "_r" } else { "r" };
    o.line(format!(
        "    fn decode_args({r}: &mut Reader<'_>) -> Result<Self, WireError> {{"
    ));
    let mut bit_group = 0;
    for item in &items {
        match item {
            Item::Field(a) => o.line(format!("        let {} = {};", a.field, read_expr(a.ty))),
            Item::Bits(bits) => {
                let var = format!("bits{bit_group}");
                bit_group += 1;
                o.line(format!("        let {var} = r.u8()?;"));
                for (i, a) in bits.iter().enumerate() {
                    o.line(format!(
                        "        let {} = ({var} & 0x{:02x}) != 0;",
                        a.field,
                        1u32 << i
                    ));
                }
            }
        }
    }
    if m.args.is_empty() {
        o.line("        Ok(Self)");
    } else {
        let fields: Vec<&str> = m.args.iter().map(|a| a.field.as_str()).collect();
        o.line(format!("        Ok(Self {{ {} }})", fields.join(", ")));
    }
    o.line("    }");
    o.line("");

    // encode
    let out = if items.is_empty() { "_out" } else { "out" };
    o.line(format!(
        "    fn encode_args(&self, {out}: &mut BytesMut) -> Result<(), WireError> {{"
    ));
    for item in &items {
        match item {
            Item::Field(a) => o.line(format!("        {}", write_stmt(a))),
            Item::Bits(bits) => {
                let parts: Vec<String> = bits
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        if i == 0 {
                            format!("u8::from(self.{})", a.field)
                        } else {
                            format!("(u8::from(self.{}) << {i})", a.field)
                        }
                    })
                    .collect();
                o.line(format!("        out.put_u8({});", parts.join(" | ")));
            }
        }
    }
    o.line("        Ok(())");
    o.line("    }");
    o.line("");

    // size
    let mut fixed = 0usize;
    let mut dynamic = Vec::new();
    for item in &items {
        match item {
            Item::Bits(_) => fixed += 1,
            Item::Field(a) => match a.ty {
                Ty::Octet => fixed += 1,
                Ty::Short => fixed += 2,
                Ty::Long => fixed += 4,
                Ty::LongLong | Ty::Timestamp => fixed += 8,
                Ty::Bit => fixed += 1,
                Ty::ShortStr => dynamic.push(format!("codec::shortstr_size(&self.{})", a.field)),
                Ty::LongStr => dynamic.push(format!("codec::longstr_size(&self.{})", a.field)),
                Ty::Table => dynamic.push(format!("self.{}.encoded_size()", a.field)),
            },
        }
    }
    let mut terms = Vec::new();
    if fixed > 0 || dynamic.is_empty() {
        terms.push(fixed.to_string());
    }
    terms.extend(dynamic);
    o.line("    /// Size of the arguments on the wire.");
    o.line("    pub fn args_size(&self) -> usize {");
    o.line(format!("        {}", terms.join(" + ")));
    o.line("    }");
    o.line("}");
    o.line("");
    o.line(format!("impl From<{ident}> for Method {{"));
    o.line(format!("    fn from(m: {ident}) -> Method {{"));
    o.line(format!("        Method::{ident}(m)"));
    o.line("    }");
    o.line("}");
    o.line("");
}

fn gen_method_enum(o: &mut Out, spec: &Spec) {
    o.line("/// Every method of AMQP 0-9-1 (with RabbitMQ's extensions).");
    o.line("#[derive(Clone, Debug, PartialEq)]");
    o.line("pub enum Method {");
    for m in spec.methods() {
        o.line(format!("    /// `{}`", m.full_name()));
        o.line(format!("    {0}({0}),", m.ident()));
    }
    o.line("}");
    o.line("");
    o.line("impl Method {");

    let simple = |o: &mut Out, doc: &str, sig: &str, f: &dyn Fn(&MethodDef) -> String| {
        o.line(format!("    /// {doc}"));
        o.line(format!("    pub fn {sig} {{"));
        o.line("        match self {");
        for m in spec.methods() {
            o.line(format!("            Method::{}(_) => {},", m.ident(), f(m)));
        }
        o.line("        }");
        o.line("    }");
        o.line("");
    };
    simple(o, "The class id.", "class_id(&self) -> u16", &|m| {
        m.class_id.to_string()
    });
    simple(
        o,
        "The method id within the class.",
        "method_id(&self) -> u16",
        &|m| m.id.to_string(),
    );
    simple(
        o,
        "`\"class.method\"` as in the spec, e.g. `\"connection.start-ok\"`.",
        "name(&self) -> &'static str",
        &|m| format!("{:?}", m.full_name()),
    );
    simple(
        o,
        "`true` for the methods followed by a content header and body frames.",
        "has_content(&self) -> bool",
        &|m| m.content.to_string(),
    );
    simple(
        o,
        "The spec's `synchronous` flag: the method is a request that expects a reply \
         (unless `nowait` is set, see [`Method::expects_reply`]).",
        "is_synchronous_request(&self) -> bool",
        &|m| m.synchronous.to_string(),
    );

    o.line("    /// The `nowait` flag for methods that have one, `false` otherwise.");
    o.line("    pub fn nowait(&self) -> bool {");
    o.line("        match self {");
    for m in spec.methods().filter(|m| m.has_nowait()) {
        o.line(format!("            Method::{}(m) => m.nowait,", m.ident()));
    }
    o.line("            _ => false,");
    o.line("        }");
    o.line("    }");
    o.line("");
    o.line("    /// `true` if the peer must answer this method (synchronous and no `nowait`),");
    o.line("    /// like RabbitMQ's `is_method_synchronous/1`.");
    o.line("    pub fn expects_reply(&self) -> bool {");
    o.line("        self.is_synchronous_request() && !self.nowait()");
    o.line("    }");
    o.line("");

    o.line(
        "    /// Decodes a method frame payload (class id, method id, arguments). The arguments",
    );
    o.line("    /// must span the whole payload. Strings and tables share `payload`'s buffer.");
    o.line("    pub fn decode(payload: &Bytes) -> Result<Method, WireError> {");
    o.line("        let mut r = Reader::new(payload, \"method frame\");");
    o.line("        let class_id = r.u16()?;");
    o.line("        let method_id = r.u16()?;");
    o.line("        let method = match (class_id, method_id) {");
    for m in spec.methods() {
        o.line(format!("            ({}, {}) => {{", m.class_id, m.id));
        o.line(format!(
            "                r.set_context({}::NAME);",
            m.ident()
        ));
        o.line(format!(
            "                Method::{0}({0}::decode_args(&mut r)?)",
            m.ident()
        ));
        o.line("            }");
    }
    let class_ids: Vec<String> = spec.classes.iter().map(|c| c.id.to_string()).collect();
    o.line(format!(
        "            ({}, _) => return Err(WireError::UnknownMethod {{ class_id, method_id }}),",
        class_ids.join(" | ")
    ));
    o.line("            _ => return Err(WireError::UnknownClass { class_id, method_id }),");
    o.line("        };");
    o.line("        r.finish()?;");
    o.line("        Ok(method)");
    o.line("    }");
    o.line("");
    o.line("    /// Encodes class id + method id + arguments (no frame header). If a short string");
    o.line("    /// is longer than 255 bytes (only possible through the unchecked `From` impls of");
    o.line("    /// [`ShortString`]), nothing is written; see [`Method::try_encode`].");
    o.line("    pub fn encode(&self, out: &mut BytesMut) {");
    o.line("        let result = self.try_encode(out);");
    o.line("        debug_assert!(result.is_ok(), \"Method::encode: {result:?}\");");
    o.line("    }");
    o.line("");
    o.line("    /// Encodes class id + method id + arguments; on error `out` is left unchanged.");
    o.line("    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {");
    o.line("        codec::atomically(out, |out| {");
    o.line("            out.reserve(self.encoded_size());");
    o.line("            out.put_u16(self.class_id());");
    o.line("            out.put_u16(self.method_id());");
    o.line("            match self {");
    for m in spec.methods() {
        o.line(format!(
            "                Method::{}(m) => m.encode_args(out),",
            m.ident()
        ));
    }
    o.line("            }");
    o.line("        })");
    o.line("    }");
    o.line("");
    o.line("    /// Size of the method frame payload (4 octets of ids + arguments).");
    o.line("    pub fn encoded_size(&self) -> usize {");
    o.line("        4 + match self {");
    for m in spec.methods() {
        o.line(format!(
            "            Method::{}(m) => m.args_size(),",
            m.ident()
        ));
    }
    o.line("        }");
    o.line("    }");
    o.line("}");
    o.line("");
}

// ---- generated tests ------------------------------------------------------------------------

fn sample_expr(a: &Arg, index: usize, bit_index: usize) -> String {
    let name = &a.spec_name;
    match a.ty {
        Ty::Octet => format!("sample_u8(seed, {index})"),
        Ty::Short => format!("sample_u16(seed, {index})"),
        Ty::Long => format!("sample_u32(seed, {index})"),
        Ty::LongLong | Ty::Timestamp => format!("sample_u64(seed, {index})"),
        Ty::Bit if bit_index == 0 => "seed & 1 == 1".to_string(),
        Ty::Bit => format!("(seed >> {bit_index}) & 1 == 1"),
        Ty::ShortStr => format!("sample_shortstr(seed, {name:?})"),
        Ty::LongStr => format!("sample_longstr(seed, {name:?})"),
        Ty::Table => format!("sample_table(seed, {name:?})"),
    }
}

fn gen_tests(o: &mut Out, spec: &Spec) {
    let count = spec.methods().count();
    o.line("#[cfg(test)]");
    o.line("#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]");
    o.line("pub(crate) mod tests {");
    o.line("    use super::*;");
    o.line("    use crate::table::FieldValue;");
    o.line("");
    o.line(format!(
        "    pub(crate) const METHOD_COUNT: usize = {count};"
    ));
    o.line("");
    o.line("    fn sample_u8(seed: u64, i: u64) -> u8 {");
    o.line("        (seed.wrapping_mul(37).wrapping_add(i * 11 + 1) % 251) as u8 + 1");
    o.line("    }");
    o.line("    fn sample_u16(seed: u64, i: u64) -> u16 {");
    o.line("        (seed.wrapping_mul(7919).wrapping_add(i * 257 + 0x1234) % 65521) as u16 + 1");
    o.line("    }");
    o.line("    fn sample_u32(seed: u64, i: u64) -> u32 {");
    o.line("        (seed.wrapping_mul(2_654_435_761).wrapping_add(i + 0x8000_0001) % 4_294_967_291) as u32 + 1");
    o.line("    }");
    o.line("    fn sample_u64(seed: u64, i: u64) -> u64 {");
    o.line("        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i + 1) | (1 << 63)");
    o.line("    }");
    o.line("    fn sample_shortstr(seed: u64, name: &str) -> ShortString {");
    o.line("        match seed % 5 {");
    o.line("            0 => ShortString::default(),");
    o.line("            1 => ShortString::try_from_string(\"z\".repeat(255)).unwrap(),");
    o.line("            _ => ShortString::try_from_string(format!(\"{name}-{seed}-\\u{e9}\")).unwrap(),");
    o.line("        }");
    o.line("    }");
    o.line("    fn sample_longstr(seed: u64, name: &str) -> LongString {");
    o.line("        match seed % 4 {");
    o.line("            0 => LongString::default(),");
    o.line("            _ => {");
    o.line("                let mut v = format!(\"{name}-{seed}\").into_bytes();");
    o.line("                v.extend_from_slice(&[0, 0xff, 0xfe]);");
    o.line("                v.resize(v.len() + (seed as usize % 3) * 300, b'.');");
    o.line("                LongString::from(v)");
    o.line("            }");
    o.line("        }");
    o.line("    }");
    o.line("    fn sample_table(seed: u64, name: &str) -> FieldTable {");
    o.line("        let mut t = FieldTable::new();");
    o.line("        if seed % 3 == 0 {");
    o.line("            return t;");
    o.line("        }");
    o.line("        t.insert(\"seed\", FieldValue::LongLongUInt(seed));");
    o.line("        t.insert(\"name\", FieldValue::from(name));");
    o.line("        let mut inner = FieldTable::new();");
    o.line("        inner.insert(\"flag\", FieldValue::Bool(seed % 2 == 0));");
    o.line("        t.insert(\"inner\", FieldValue::Table(inner));");
    o.line("        t.insert(\"list\", FieldValue::Array(vec![FieldValue::LongInt(-1), FieldValue::Void]));");
    o.line("        t");
    o.line("    }");
    o.line("");
    o.line(
        "    /// Every method, with field values derived from `seed`; the k-th bit argument of a",
    );
    o.line("    /// method is bit k of `seed`, so seeds 0..256 cover every combination of bits.");
    o.line("    pub(crate) fn sample_methods(seed: u64) -> Vec<Method> {");
    o.line("        vec![");
    for m in spec.methods() {
        if m.args.is_empty() {
            o.line(format!("            Method::{0}({0}),", m.ident()));
            continue;
        }
        o.line(format!(
            "            Method::{}({} {{",
            m.ident(),
            m.ident()
        ));
        let mut bit_index = 0;
        for (i, a) in m.args.iter().enumerate() {
            o.line(format!(
                "                {}: {},",
                a.field,
                sample_expr(a, i, bit_index)
            ));
            if a.ty == Ty::Bit {
                bit_index += 1;
            }
        }
        o.line("            }),");
    }
    o.line("        ]");
    o.line("    }");
    o.line("");
    o.line("    #[test]");
    o.line("    fn every_method_roundtrips() {");
    o.line("        for seed in 0..256 {");
    o.line("            let methods = sample_methods(seed);");
    o.line("            assert_eq!(methods.len(), METHOD_COUNT);");
    o.line("            for m in methods {");
    o.line("                let mut out = BytesMut::new();");
    o.line("                m.try_encode(&mut out).unwrap();");
    o.line("                assert_eq!(out.len(), m.encoded_size(), \"{}\", m.name());");
    o.line("                assert_eq!(u16::from_be_bytes([out[0], out[1]]), m.class_id());");
    o.line("                assert_eq!(u16::from_be_bytes([out[2], out[3]]), m.method_id());");
    o.line("                let decoded = Method::decode(&out.freeze()).unwrap();");
    o.line("                assert_eq!(decoded, m, \"seed {seed}\");");
    o.line("            }");
    o.line("        }");
    o.line("    }");
    o.line("");
    o.line("    #[test]");
    o.line("    fn every_method_rejects_truncation_and_trailing_bytes() {");
    o.line("        for m in sample_methods(3) {");
    o.line("            let mut out = BytesMut::new();");
    o.line("            m.encode(&mut out);");
    o.line("            let full = out.clone().freeze();");
    o.line("            for cut in 0..full.len() {");
    o.line("                assert!(Method::decode(&full.slice(..cut)).is_err(), \"{} cut at {cut}\", m.name());");
    o.line("            }");
    o.line("            out.extend_from_slice(&[0]);");
    o.line("            assert!(matches!(Method::decode(&out.freeze()), Err(WireError::TrailingBytes { .. })), \"{}\", m.name());");
    o.line("        }");
    o.line("    }");
    o.line("");
    o.line("    #[test]");
    o.line("    fn metadata_is_consistent() {");
    o.line("        let methods = sample_methods(1);");
    o.line("        assert_eq!(ALL_METHODS.len(), methods.len());");
    o.line("        for (m, (class_id, method_id, name)) in methods.iter().zip(ALL_METHODS) {");
    o.line("            assert_eq!(m.class_id(), *class_id);");
    o.line("            assert_eq!(m.method_id(), *method_id);");
    o.line("            assert_eq!(m.name(), *name);");
    o.line("            assert_eq!(method_name(*class_id, *method_id), Some(*name));");
    o.line("            assert!(name.starts_with(class_name(*class_id).unwrap()));");
    o.line("            assert!(!m.expects_reply() || m.is_synchronous_request());");
    o.line("        }");
    o.line("    }");
    o.line("}");
}
