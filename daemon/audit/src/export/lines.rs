//! One record as one exported line, in each format, and back: what an export writes and what
//! its verifier parses (every byte must be what this renders, so a change is caught).

use crate::merkle::Hash;
use crate::record::{parse_hash, Phase, Record, FIELDS};

use super::Format;

const CEF_VENDOR: &str = "CEF:0|appl|appld";
const SD_ID: &str = "appl@32473";

/// The CSV header line (without newline).
pub fn csv_header() -> String {
    let mut h = FIELDS.join(",");
    h.push_str(",leaf");
    h
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn camel(field: &str) -> String {
    let mut out = String::from("appl");
    for part in field.split('_') {
        let mut c = part.chars();
        if let Some(f) = c.next() {
            out.push(f.to_ascii_uppercase());
            out.extend(c);
        }
    }
    out
}

fn cef_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn sd_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

fn severity(r: &Record) -> (u8, u8) {
    // (CEF severity 0-10, syslog severity 0-7)
    if r.action == crate::record::Action::AuthDenied {
        (7, 4)
    } else if r.status.is_some_and(|s| s != 0) {
        (5, 5)
    } else {
        (3, 6)
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Admitted => "admitted",
        Phase::Completed => "completed",
        Phase::Event => "event",
    }
}

/// Renders one export line (with its trailing newline).
pub fn render_line(format: Format, r: &Record, leaf: &Hash) -> String {
    let leaf_hex = hex::encode(leaf);
    match format {
        Format::Jsonl => {
            let mut s = String::from_utf8(r.canonical_bytes()).expect("serde_json writes UTF-8");
            s.pop(); // the closing brace
            s.push_str(&format!(",\"leaf\":\"{leaf_hex}\"}}\n"));
            s
        }
        Format::Csv => {
            let mut cols: Vec<String> = r
                .flat()
                .into_iter()
                .map(|(_, v)| csv_field(v.as_deref().unwrap_or("")))
                .collect();
            cols.push(leaf_hex);
            let mut s = cols.join(",");
            s.push('\n');
            s
        }
        Format::Cef => {
            let action = r.action.name();
            let (sev, _) = severity(r);
            let mut s = format!(
                "{CEF_VENDOR}|{}|{action}|{action} {}|{sev}|rt={} suser={} act={action}",
                env!("CARGO_PKG_VERSION"),
                phase_name(r.phase),
                r.ts.unix_millis(),
                cef_escape(r.actor.as_str()),
            );
            for (k, v) in r.flat() {
                if let Some(v) = v {
                    s.push_str(&format!(" {}={}", camel(k), cef_escape(&v)));
                }
            }
            s.push_str(&format!(" applLeaf={leaf_hex}\n"));
            s
        }
        Format::Syslog => {
            let (_, sev) = severity(r);
            let pri = 10 * 8 + u32::from(sev); // facility 10: authpriv
            let mut s = format!("<{pri}>1 {} - appld - audit [{SD_ID}", r.ts);
            for (k, v) in r.flat() {
                if let Some(v) = v {
                    s.push_str(&format!(" {k}=\"{}\"", sd_escape(&v)));
                }
            }
            s.push_str(&format!(
                " leaf=\"{leaf_hex}\"] {} {}\n",
                r.action.name(),
                phase_name(r.phase)
            ));
            s
        }
    }
}

fn unescape(s: &str, set: &[char]) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\\' {
            match it.next() {
                Some('n') if set.contains(&'n') => out.push('\n'),
                Some('r') if set.contains(&'r') => out.push('\r'),
                Some(e) if set.contains(&e) => out.push(e),
                other => return Err(format!("bad escape \\{other:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn split_leaf(mut pairs: Vec<(String, String)>) -> Result<(Record, Hash), String> {
    let pos = pairs
        .iter()
        .position(|(k, _)| k == "leaf")
        .ok_or("no leaf hash")?;
    let (_, leaf) = pairs.remove(pos);
    let leaf = parse_hash(&leaf)?;
    let r = Record::from_flat(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    Ok((r, leaf))
}

/// Parses one line (without its newline) of an export.
pub fn parse_line(format: Format, line: &str) -> Result<(Record, Hash), String> {
    let (r, leaf) = match format {
        Format::Jsonl => {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|e| e.to_string())?;
            let leaf = match v.remove("leaf") {
                Some(serde_json::Value::String(s)) => parse_hash(&s)?,
                _ => return Err("no leaf hash".into()),
            };
            let r: Record =
                serde_json::from_value(serde_json::Value::Object(v)).map_err(|e| e.to_string())?;
            (r, leaf)
        }
        Format::Csv => {
            let mut cols = Vec::new();
            let mut cur = String::new();
            let mut chars = line.chars().peekable();
            let mut quoted = false;
            let mut at_start = true;
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (false, '"') if at_start => quoted = true,
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        cur.push('"');
                    }
                    (true, '"') => {
                        quoted = false;
                        if !matches!(chars.peek(), None | Some(',')) {
                            return Err("text after a closing quote".into());
                        }
                    }
                    (false, ',') => {
                        cols.push(std::mem::take(&mut cur));
                        at_start = true;
                        continue;
                    }
                    (_, c) => cur.push(c),
                }
                at_start = false;
            }
            if quoted {
                return Err("unterminated quote".into());
            }
            cols.push(cur);
            let names: Vec<&str> = FIELDS.iter().copied().chain(["leaf"]).collect();
            if cols.len() != names.len() {
                return Err(format!("{} columns, expected {}", cols.len(), names.len()));
            }
            let pairs = names
                .iter()
                .zip(cols)
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| ((*k).to_owned(), v))
                .collect();
            split_leaf(pairs)?
        }
        Format::Cef => {
            let mut parts = line.splitn(8, '|');
            let mut header = Vec::new();
            for _ in 0..7 {
                header.push(parts.next().ok_or("short CEF header")?);
            }
            let ext = parts.next().ok_or("no CEF extension")?;
            let mut pairs = Vec::new();
            for tok in ext.split(' ') {
                let (k, v) = tok.split_once('=').ok_or("extension without '='")?;
                if let Some(field) = k.strip_prefix("appl") {
                    let name = if field == "Leaf" {
                        "leaf".to_owned()
                    } else {
                        FIELDS
                            .iter()
                            .find(|f| camel(f) == k)
                            .ok_or_else(|| format!("unknown key {k}"))?
                            .to_string()
                    };
                    pairs.push((name, unescape(v, &['\\', '=', 'n', 'r'])?));
                }
            }
            split_leaf(pairs)?
        }
        Format::Syslog => {
            let open = format!("[{SD_ID} ");
            let start = line.find(&open).ok_or("no appl structured data")? + open.len();
            let mut rest = &line[start..];
            let mut pairs = Vec::new();
            loop {
                let eq = rest.find("=\"").ok_or("malformed SD-PARAM")?;
                let name = rest[..eq].to_owned();
                let body = &rest[eq + 2..];
                let mut end = None;
                let mut esc = false;
                for (i, c) in body.char_indices() {
                    match (esc, c) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated SD-PARAM value")?;
                pairs.push((name, unescape(&body[..end], &['\\', '"', ']'])?));
                rest = &body[end + 1..];
                if let Some(r) = rest.strip_prefix(' ') {
                    rest = r;
                } else if rest.starts_with(']') {
                    break;
                } else {
                    return Err("malformed structured data".into());
                }
            }
            split_leaf(pairs)?
        }
    };
    Ok((r, leaf))
}
