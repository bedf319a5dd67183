//! The journal's text format: JSON lines.
//!
//! Line 1, the header: `{"evalfleet_journal": 1, "step": "step1", "fingerprint": "<sha256>",
//! "job": {"step": ..., "model": ..., ...}}` (the fingerprint's named parts, readable).
//!
//! Every other line, one accepted result: `{"task": "step1", "item": "7", "kind": "generate",
//! "result": "<base64>"}`. Task, item and kind are in clear for people and tools; `result` is the
//! standard base64 of the protobuf encoding of an `ItemResult` holding only the outcome. One
//! encoding for every kind of result (generate, embed, choice, reward, and any added later)
//! round-trips exactly, floats included, with no per-kind conversion to keep in step.
//!
//! Or (format 2) a timing line, `{"task": "step1", "elapsed_s": 12.5}`: the task's generation
//! time so far, over every run of the job, up to its latest result written above it (see
//! [`super::writer`]). A resumed run adds the last one to its own time, so `predict_runtime`
//! covers the whole job. Format-1 journals (no timing lines) are still read.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use evalfleet_proto::v1 as pb;
use pb::item_result::Outcome;
use prost::Message;
use serde::{Deserialize, Serialize};

use super::fingerprint::Fingerprint;

/// The format version in the header.
pub const FORMAT: u32 = 2;
/// The oldest format this version reads (format 1 has no timing lines).
const OLDEST_FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub evalfleet_journal: u32,
    pub step: String,
    pub fingerprint: String,
    /// The fingerprint's parts, name → value, in order.
    pub job: serde_json::Map<String, serde_json::Value>,
}

impl Header {
    pub fn new(step: &str, fp: &Fingerprint) -> Self {
        Header {
            evalfleet_journal: FORMAT,
            step: step.to_string(),
            fingerprint: fp.hash(),
            job: fp
                .parts
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        }
    }

    /// The fingerprint parts as recorded.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            parts: self
                .job
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
        }
    }

    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a header always serializes");
        line.push('\n');
        line
    }
}

/// One result line.
#[derive(Debug, Serialize, Deserialize)]
struct ResultLine {
    task: String,
    item: String,
    kind: String,
    result: String,
}

/// One timing line.
#[derive(Debug, Serialize, Deserialize)]
struct ElapsedLine {
    task: String,
    elapsed_s: f64,
}

/// A result read back from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub task: String,
    pub item: String,
    pub outcome: Outcome,
}

/// Appends the line of one accepted result to `out`.
pub fn push_result(out: &mut Vec<u8>, task: &str, result: &pb::ItemResult) {
    let Some(outcome) = &result.outcome else {
        return;
    };
    let only_outcome = pb::ItemResult {
        lease_id: 0,
        item_id: String::new(),
        outcome: Some(outcome.clone()),
    };
    let line = ResultLine {
        task: task.to_string(),
        item: result.item_id.clone(),
        kind: kind(outcome).to_string(),
        result: STANDARD.encode(only_outcome.encode_to_vec()),
    };
    // Strings and a base64 text: serializing cannot fail.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// Appends the timing line of task `task`: `elapsed` of generation over every run so far.
pub fn push_elapsed(out: &mut Vec<u8>, task: &str, elapsed: std::time::Duration) {
    let line = ElapsedLine {
        task: task.to_string(),
        elapsed_s: elapsed.as_secs_f64(),
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

/// One line after the header.
enum Line {
    Result(Entry),
    Elapsed(String, f64),
}

/// Parses a result or a timing line (without its newline).
fn parse_line(line: &[u8]) -> Result<Line, String> {
    if let Ok(t) = serde_json::from_slice::<ElapsedLine>(line) {
        if !(t.elapsed_s.is_finite() && t.elapsed_s >= 0.0) {
            return Err(format!(
                "task {:?}: elapsed_s {} is not a duration",
                t.task, t.elapsed_s
            ));
        }
        return Ok(Line::Elapsed(t.task, t.elapsed_s));
    }
    parse_result(line).map(Line::Result)
}

/// Parses one result line (without its newline); the error says what is wrong.
pub fn parse_result(line: &[u8]) -> Result<Entry, String> {
    let line: ResultLine =
        serde_json::from_slice(line).map_err(|e| format!("not a result: {e}"))?;
    let bytes = STANDARD
        .decode(&line.result)
        .map_err(|e| format!("item {:?}: result is not base64: {e}", line.item))?;
    let decoded = pb::ItemResult::decode(bytes.as_slice())
        .map_err(|e| format!("item {:?}: result is not an ItemResult: {e}", line.item))?;
    match decoded.outcome {
        Some(Outcome::Error(_)) | None => Err(format!(
            "item {:?}: a journal keeps results, not errors",
            line.item
        )),
        Some(outcome) => Ok(Entry {
            task: line.task,
            item: line.item,
            outcome,
        }),
    }
}

fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Generate(_) => "generate",
        Outcome::Error(_) => "error",
        Outcome::Embed(_) => "embed",
        Outcome::Choice(_) => "choice",
        Outcome::Reward(_) => "reward",
    }
}

/// What a journal file holds.
#[derive(Debug)]
pub struct Contents {
    pub header: Header,
    pub entries: Vec<Entry>,
    /// Each task's largest timing line: its generation time over every earlier run.
    pub elapsed: std::collections::BTreeMap<String, std::time::Duration>,
    /// Length of the valid prefix; bytes after it are a torn tail to cut before appending.
    pub valid_len: u64,
}

/// Parses a whole journal. A last line without its newline (a write cut by a crash or power
/// loss), or trailing lines none of which parse (a zero-filled block after a power cut), are a
/// torn tail: left out of `entries` and of `valid_len`. A bad line followed by good ones is real
/// damage and an error naming its line number.
pub fn parse(bytes: &[u8]) -> Result<Contents, String> {
    let header_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("line 1: no complete header line")?;
    let header: Header = serde_json::from_slice(&bytes[..header_end])
        .map_err(|e| format!("line 1: not an evalfleet journal header: {e}"))?;
    if !(OLDEST_FORMAT..=FORMAT).contains(&header.evalfleet_journal) {
        return Err(format!(
            "line 1: journal format {} (this evalfleet reads formats {OLDEST_FORMAT} to {FORMAT})",
            header.evalfleet_journal
        ));
    }
    let mut entries = Vec::new();
    let mut elapsed = std::collections::BTreeMap::new();
    let mut offset = header_end + 1;
    let mut first_bad: Option<(usize, usize, String)> = None;
    for (n, line) in bytes[offset..].split_inclusive(|&b| b == b'\n').enumerate() {
        let line_no = n + 2;
        let complete = line.ends_with(b"\n");
        let parsed = if complete {
            parse_line(&line[..line.len() - 1])
        } else {
            Err("cut off (no newline)".to_string())
        };
        match (parsed, &first_bad) {
            (Ok(parsed), None) => {
                match parsed {
                    Line::Result(entry) => entries.push(entry),
                    Line::Elapsed(task, secs) => {
                        let secs = std::time::Duration::from_secs_f64(secs);
                        let e = elapsed.entry(task).or_default();
                        *e = secs.max(*e);
                    }
                }
                offset += line.len();
            }
            (Ok(_), Some((bad_line, _, why))) => {
                return Err(format!("line {bad_line}: {why} (and later lines are fine)"));
            }
            (Err(why), None) => first_bad = Some((line_no, offset, why)),
            (Err(_), Some(_)) => {}
        }
    }
    Ok(Contents {
        header,
        entries,
        elapsed,
        valid_len: offset as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(item: &str, predict: &str) -> pb::ItemResult {
        pb::ItemResult {
            lease_id: 9,
            item_id: item.into(),
            outcome: Some(Outcome::Generate(pb::GenerateResult {
                predict: predict.into(),
                new_tokens: 3,
                ..Default::default()
            })),
        }
    }

    fn journal(results: &[pb::ItemResult]) -> Vec<u8> {
        let fp = Fingerprint {
            parts: vec![("step".into(), "step1".into())],
        };
        let mut out = Header::new("step1", &fp).to_line().into_bytes();
        for r in results {
            push_result(&mut out, "step1", r);
        }
        out
    }

    #[test]
    fn results_of_every_kind_round_trip() {
        let embed = pb::ItemResult {
            lease_id: 1,
            item_id: "e".into(),
            outcome: Some(Outcome::Embed(pb::EmbedResult { score: 0.1 + 0.2 })),
        };
        let choice = pb::ItemResult {
            lease_id: 1,
            item_id: "c".into(),
            outcome: Some(Outcome::Choice(pb::ChoiceResult {
                probabilities: vec![0.25, f32::MIN_POSITIVE, 0.7],
                prompt_tokens: 12,
            })),
        };
        let bytes = journal(&[
            generate("0", "héllo \"x\"\n"),
            embed.clone(),
            choice.clone(),
        ]);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""task":"step1","item":"0","kind":"generate""#),
            "{text}"
        );
        let c = parse(&bytes).unwrap();
        assert_eq!(c.valid_len, bytes.len() as u64);
        assert_eq!(c.header.step, "step1");
        assert_eq!(c.entries.len(), 3);
        assert_eq!(
            c.entries[0].outcome,
            generate("0", "héllo \"x\"\n").outcome.unwrap()
        );
        assert_eq!(
            (c.entries[1].item.as_str(), &c.entries[1].outcome),
            ("e", &embed.outcome.unwrap())
        );
        assert_eq!(c.entries[2].outcome, choice.outcome.unwrap());
    }

    #[test]
    fn timing_lines_keep_each_tasks_largest_and_format_1_is_still_read() {
        use std::time::Duration;
        let mut bytes = journal(&[generate("0", "a")]);
        push_elapsed(&mut bytes, "step1", Duration::from_millis(2500));
        push_elapsed(&mut bytes, "step2", Duration::from_millis(700));
        // Written out of order by two threads: the largest counts.
        push_elapsed(&mut bytes, "step1", Duration::from_millis(2400));
        bytes.extend(
            journal(&[generate("1", "b")])
                .split(|&b| b == b'\n')
                .nth(1)
                .unwrap(),
        );
        bytes.push(b'\n');
        let c = parse(&bytes).unwrap();
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.elapsed["step1"], Duration::from_millis(2500));
        assert_eq!(c.elapsed["step2"], Duration::from_millis(700));
        assert!(
            String::from_utf8_lossy(&bytes).contains(r#"{"task":"step1","elapsed_s":2.5}"#),
            "{}",
            String::from_utf8_lossy(&bytes)
        );

        let text = String::from_utf8(bytes).unwrap();
        let old = text.replacen(r#""evalfleet_journal":2"#, r#""evalfleet_journal":1"#, 1);
        assert_eq!(parse(old.as_bytes()).unwrap().entries.len(), 2);
        let future = text.replacen(r#""evalfleet_journal":2"#, r#""evalfleet_journal":3"#, 1);
        let err = parse(future.as_bytes()).unwrap_err();
        assert!(err.contains("journal format 3"), "{err}");
        let negative = text.replacen(r#""elapsed_s":0.7"#, r#""elapsed_s":-1.0"#, 1);
        let err = parse(negative.as_bytes()).unwrap_err();
        assert!(err.contains("is not a duration"), "{err}");
    }

    #[test]
    fn a_torn_tail_is_left_out_and_damage_inside_is_an_error() {
        let whole = journal(&[generate("0", "a"), generate("1", "b")]);
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"task":"step1","item":"2","kind":"gen"#);
        let c = parse(&torn).unwrap();
        assert_eq!(c.entries.len(), 2);
        assert_eq!(c.valid_len, whole.len() as u64);

        // Zeros after a power cut, even with a newline among them.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0, 0, b'\n', 0, 0]);
        assert_eq!(parse(&zeros).unwrap().valid_len, whole.len() as u64);

        // A damaged line 2 followed by a good line 3.
        let text = String::from_utf8(whole).unwrap();
        let damaged = text.replacen(r#""item":"0""#, r#""item":0"#, 1);
        let err = parse(damaged.as_bytes()).unwrap_err();
        assert!(err.starts_with("line 2: not a result"), "{err}");

        let err = parse(b"{\"evalfleet_journal\": 1").unwrap_err();
        assert!(err.contains("no complete header"), "{err}");
        let err = parse(b"hello\n").unwrap_err();
        assert!(err.contains("not an evalfleet journal"), "{err}");
    }

    #[test]
    fn errors_are_not_results() {
        let error = pb::ItemResult {
            lease_id: 1,
            item_id: "3".into(),
            outcome: Some(Outcome::Error(pb::ItemError::default())),
        };
        let mut line = Vec::new();
        push_result(&mut line, "t", &error);
        let err = parse_result(&line[..line.len() - 1]).unwrap_err();
        assert!(err.contains("not errors"), "{err}");
    }
}
