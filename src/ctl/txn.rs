//! `ondisk ctl txn`: a transaction written the way `etcdctl txn` reads one, so a script written
//! for one works with the other: comparisons, a blank line, the success operations, a blank line,
//! the failure operations.

use std::io;
use std::io::Read;
use std::io::Write;

use crate::api;
use crate::api::Compare;
use crate::api::CompareResult;
use crate::api::CompareTarget;
use crate::api::RequestOp;
use crate::api::ResponseOp;
use crate::api::TxnRequest;

use super::print_json;
use super::Client;
use super::CtlError;
use super::Result;

/// The input format, for `ondisk ctl txn -h`.
pub(super) const FORMAT: &str = "\
Input (stdin), three sections separated by blank lines:
  comparisons, one per line:   TARGET(\"KEY\") OP OPERAND
      TARGET: value, version, create, mod, lease     OP: =, !=, >, <
      e.g.  value(\"k\") = \"v\"   version(\"k\") > 3   create(\"k\") = 0   mod(\"k\") < 9
  success operations, run if every comparison holds, one per line:
      put KEY VALUE     del KEY [END]     get KEY [END]     (END: up to END; --prefix: under KEY)
  failure operations, run otherwise, in the same form.
Words with spaces go in double quotes (with \\\" \\\\ \\n \\t \\xHH escapes).

Example:
  printf 'create(\"job\") = 0\\n\\nput job mine\\n\\nget job\\n' | ondisk ctl txn";

/// Reads a transaction from stdin, runs it and prints its outcome.
pub(super) fn run(client: &Client, json: bool) -> Result<()> {
    let mut input = Vec::new();
    io::stdin().lock().read_to_end(&mut input)?;
    let input = String::from_utf8(input)
        .map_err(|_| CtlError::Input("the transaction on stdin is not UTF-8".into()))?;
    let request = parse(&input).map_err(CtlError::Input)?;
    let answer: api::TxnResponse = client.send_json("POST", api::http::TXN, &request)?;
    if json {
        return print_json(&answer);
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{}",
        if answer.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    )?;
    for response in &answer.responses {
        writeln!(out)?;
        print_response(&mut out, response)?;
    }
    Ok(out.flush()?)
}

/// One operation's result, as `etcdctl txn` prints it: `OK` for a put, the count deleted for a
/// delete, each key and value on its own line for a get.
fn print_response(out: &mut impl Write, response: &ResponseOp) -> io::Result<()> {
    match response {
        ResponseOp::Put(_) => writeln!(out, "OK"),
        ResponseOp::DeleteRange(delete) => writeln!(out, "{}", delete.deleted),
        ResponseOp::Range(range) => {
            for kv in &range.kvs {
                out.write_all(&kv.key)?;
                out.write_all(b"\n")?;
                out.write_all(&kv.value)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        ResponseOp::Txn(inner) => {
            for response in &inner.responses {
                print_response(out, response)?;
            }
            Ok(())
        }
    }
}

/// The transaction `input` describes; an error names the line (from 1) and what is wrong.
pub(super) fn parse(input: &str) -> Result<TxnRequest, String> {
    let mut request = TxnRequest::default();
    let mut section = 0;
    for (number, line) in input.lines().enumerate().map(|(i, line)| (i + 1, line)) {
        let at = |reason: String| format!("txn input line {number}: {reason}");
        if line.trim().is_empty() {
            // Each blank line ends a section, so an empty one is just a blank line.
            section += 1;
            continue;
        }
        match section {
            0 => request.compare.push(parse_compare(line).map_err(at)?),
            1 => request.success.push(parse_op(line).map_err(at)?),
            2 => request.failure.push(parse_op(line).map_err(at)?),
            _ => {
                return Err(at(
                    "unexpected line after the failure operations (a transaction has three \
                     sections: comparisons, success operations, failure operations)"
                        .into(),
                ))
            }
        }
    }
    Ok(request)
}

/// `TARGET("KEY") OP OPERAND`.
fn parse_compare(line: &str) -> Result<Compare, String> {
    let line = line.trim();
    let open = line
        .find('(')
        .ok_or("a comparison looks like value(\"key\") = \"v\"")?;
    let close = line
        .rfind(')')
        .filter(|close| *close > open)
        .ok_or("missing ) after the comparison's key")?;
    let target = line[..open].trim();
    let key = single_word(&line[open + 1..close])?;
    let rest = words(&line[close + 1..])?;
    let [op, operand] = rest.as_slice() else {
        return Err(format!(
            "expected an operator and an operand after {target}(...), as in = \"v\" or > 3"
        ));
    };
    let result = match op.as_slice() {
        b"=" | b"==" => CompareResult::Equal,
        b"!=" => CompareResult::NotEqual,
        b">" => CompareResult::Greater,
        b"<" => CompareResult::Less,
        other => {
            return Err(format!(
                "unknown operator {:?} (=, !=, >, <)",
                String::from_utf8_lossy(other)
            ))
        }
    };
    let number = || -> Result<i64, String> {
        std::str::from_utf8(operand)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                format!(
                    "{target} compares with a number, not {:?}",
                    String::from_utf8_lossy(operand)
                )
            })
    };
    let target = match target {
        "value" | "val" => CompareTarget::Value(operand.clone()),
        "version" | "ver" => CompareTarget::Version(number()?),
        "create" | "c" => CompareTarget::CreateRevision(number()?),
        "mod" | "m" => CompareTarget::ModRevision(number()?),
        "lease" => CompareTarget::Lease(number()?),
        other => {
            return Err(format!(
                "unknown comparison target {other:?} (value, version, create, mod, lease)"
            ))
        }
    };
    Ok(Compare {
        key,
        range_end: Vec::new(),
        target,
        result,
    })
}

/// `put KEY VALUE`, `del KEY [END]`, `get KEY [END]` (or `--prefix` for everything under KEY).
fn parse_op(line: &str) -> Result<RequestOp, String> {
    let mut words = words(line)?;
    let prefix = words.iter().any(|word| word == b"--prefix");
    words.retain(|word| word != b"--prefix");
    let (op, args) = words.split_first().ok_or("empty operation")?;
    let range = |args: &[Vec<u8>]| -> Result<(Vec<u8>, Vec<u8>), String> {
        match (args, prefix) {
            ([key], false) => Ok((key.clone(), Vec::new())),
            ([key], true) => Ok((key.clone(), api::prefix_end(key))),
            ([key, end], false) => Ok((key.clone(), end.clone())),
            _ => Err("expected KEY, KEY END or KEY --prefix".into()),
        }
    };
    match op.as_slice() {
        b"put" => match args {
            [key, value] if !prefix => Ok(RequestOp::Put(api::PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..api::PutRequest::default()
            })),
            _ => Err("put takes a KEY and a VALUE".into()),
        },
        b"del" | b"delete" => {
            let (key, range_end) = range(args)?;
            Ok(RequestOp::DeleteRange(api::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: false,
            }))
        }
        b"get" => {
            let (key, range_end) = range(args)?;
            Ok(RequestOp::Range(api::RangeRequest {
                key,
                range_end,
                ..api::RangeRequest::default()
            }))
        }
        other => Err(format!(
            "unknown operation {:?} (put, del, get)",
            String::from_utf8_lossy(other)
        )),
    }
}

/// Exactly one word (a comparison's key).
fn single_word(text: &str) -> Result<Vec<u8>, String> {
    let mut found = words(text)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        _ => Err(format!("expected one key in ({text})")),
    }
}

/// Splits `text` into words at whitespace; a word in double quotes may hold spaces and the escapes
/// \" \\ \n \t \xHH (any byte).
fn words(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = Vec::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted word is not closed".into()),
                    Some('"') => break,
                    Some('\\') => word.push(escape(&mut chars)?),
                    Some(c) => word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err("a quoted word must be followed by a space".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// The byte an escape after `\` stands for.
fn escape(chars: &mut impl Iterator<Item = char>) -> Result<u8, String> {
    match chars.next() {
        Some('"') => Ok(b'"'),
        Some('\\') => Ok(b'\\'),
        Some('n') => Ok(b'\n'),
        Some('t') => Ok(b'\t'),
        Some('x') => {
            let hex: String = chars.take(2).collect();
            u8::from_str_radix(&hex, 16).map_err(|_| format!("\\x{hex} is not a hex byte"))
        }
        Some(other) => Err(format!("unknown escape \\{other}")),
        None => Err("a quoted word ends with \\".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdctls_form_reads_into_a_txn() {
        let txn = parse(
            "value(\"a\") = \"x y\"\nversion(\"b\") > 3\ncreate(\"c\") = \"0\"\n\n\
             put a \"new\\tvalue\"\ndel b\n\nget c\ndel p --prefix\n",
        )
        .unwrap();
        assert_eq!(txn.compare.len(), 3);
        assert_eq!(txn.compare[0].target, CompareTarget::Value(b"x y".to_vec()));
        assert_eq!(txn.compare[1].result, CompareResult::Greater);
        assert_eq!(txn.compare[2].target, CompareTarget::CreateRevision(0));
        assert!(matches!(&txn.success[0], RequestOp::Put(p) if p.value == b"new\tvalue"));
        assert!(matches!(&txn.failure[1], RequestOp::DeleteRange(d) if d.range_end == b"q"));
    }

    #[test]
    fn an_empty_section_is_a_blank_line() {
        let txn = parse("\nput a 1\n").unwrap();
        assert!(txn.compare.is_empty() && txn.success.len() == 1 && txn.failure.is_empty());
        let txn = parse("\n\nput a 1\n\n\n").unwrap();
        assert!(txn.success.is_empty() && txn.failure.len() == 1);
    }

    #[test]
    fn errors_name_the_line() {
        for (input, line) in [
            ("size(\"a\") = 1\n", 1),
            ("value(\"a\") = 1\n\nput a\n", 3),
            ("\n\nfrob x\n", 3),
            ("version(\"a\") > x\n", 1),
            ("\nput a \"open\n", 2),
            ("\n\n\nput a b\n", 4),
        ] {
            let error = parse(input).unwrap_err();
            assert!(
                error.starts_with(&format!("txn input line {line}: ")),
                "{input:?}: {error}"
            );
        }
    }
}
