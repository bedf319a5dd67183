//! Sub-step 1's chat messages (docs/FIDELITY.md §4.2: official CharacterEval `get_response.py`
//! semantics; docs/FIDELITY.md, decision 3: the final turn is kept as the last user message, and
//! the role system text has no stray indentation).
//!
//! The context is split on `'\n'`; each line's speaker is the text before its first full-width
//! colon `：` and its words the rest. The messages are: user = the role system text (profile
//! `str(dict)` and the instruction), assistant = the opening reply, then for each of the role's
//! turns after the first line the (preceding turn, role turn) pair, and finally the last turn as
//! the user query. Other speakers' turns that do not precede a role turn are dropped, as CE
//! drops them.

use super::data::Profiles;
use super::{Record, Step4Error, get_str};

/// One chat message (`role` is `user` or `assistant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// One turn of a dialogue context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn<'a> {
    /// The speaker: the line up to its first `：` (the whole line without one).
    pub from: &'a str,
    /// The words: everything after the first `：` (empty without one).
    pub value: &'a str,
}

/// Splits a context into turns (`line.split("：")[0]` and `"：".join(line.split("：")[1:])`).
pub fn split_context(context: &str) -> Vec<Turn<'_>> {
    context
        .split('\n')
        .map(|line| match line.split_once('：') {
            Some((from, value)) => Turn { from, value },
            None => Turn {
                from: line,
                value: "",
            },
        })
        .collect()
}

/// The first user message: the profile, then the instruction (CE's text, unindented).
pub fn role_system(profile_text: &str, role: &str) -> String {
    format!("{profile_text}\n现在请你扮演一个角色扮演专家。请你根据上述信息扮演{role}进行对话。\n")
}

/// Builds the messages of a dialogue record. Errors name the record (`record_no`, 0-based) when
/// it lacks `role` or `context`, its role has no profile, or CE's asserts fail
/// ([`dialogue_messages`]).
pub fn record_messages(
    record: &Record,
    record_no: usize,
    profiles: &Profiles,
) -> Result<Vec<Message>, String> {
    let field = |key: &str| {
        get_str(record, key).ok_or_else(|| format!("record {record_no}: no string `{key}`"))
    };
    let (role, context) = (field("role")?, field("context")?);
    let profile = profiles
        .text(role, record_no)
        .map_err(|e: Step4Error| e.to_string())?;
    dialogue_messages(&role_system(profile, role), role, context)
        .map_err(|m| format!("record {record_no} (role {role}): {m}"))
}

/// The messages of one dialogue. Errors where CE's asserts fail: two consecutive role turns,
/// or a context ending with the role's own turn (there would be nothing to reply to).
pub fn dialogue_messages(system: &str, role: &str, context: &str) -> Result<Vec<Message>, String> {
    let turns = split_context(context);
    let user = |content: String| Message {
        role: "user",
        content,
    };
    let assistant = |content: String| Message {
        role: "assistant",
        content,
    };
    let first = &turns[0];
    let opening = if first.from == role {
        format!("好的！现在我来扮演{role}。我首先发话：{}", first.value)
    } else {
        format!("好的！现在我来扮演{role}。")
    };
    let mut messages = vec![user(system.to_owned()), assistant(opening)];
    for (i, pair) in turns.windows(2).enumerate() {
        let (before, turn) = (&pair[0], &pair[1]);
        if turn.from != role {
            continue;
        }
        if before.from == role {
            return Err(format!(
                "context lines {} and {} are both the role's",
                i + 1,
                i + 2
            ));
        }
        messages.push(user(format!("{}：{}", before.from, before.value)));
        messages.push(assistant(format!("{role}：{}", turn.value)));
    }
    let last = &turns[turns.len() - 1];
    if last.from == role {
        return Err("the context ends with the role's own turn".into());
    }
    messages.push(user(format!("{}：{}", last.from, last.value)));
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_later_colons_and_lines_without_one() {
        let turns = split_context("甲：一：二\n无冒号\n乙：");
        assert_eq!(
            turns,
            [
                Turn {
                    from: "甲",
                    value: "一：二"
                },
                Turn {
                    from: "无冒号",
                    value: ""
                },
                Turn {
                    from: "乙",
                    value: ""
                },
            ]
        );
    }

    #[test]
    fn messages_follow_ce_with_the_query_kept() {
        let m = dialogue_messages("S", "甲", "甲：你好\n乙：嗯\n丙：啊\n甲：走\n乙：去哪").unwrap();
        let got: Vec<(&str, &str)> = m.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            got,
            [
                ("user", "S"),
                ("assistant", "好的！现在我来扮演甲。我首先发话：你好"),
                ("user", "丙：啊"),
                ("assistant", "甲：走"),
                ("user", "乙：去哪"),
            ]
        );
        let m = dialogue_messages("S", "甲", "乙：嗯").unwrap();
        assert_eq!(m[1].content, "好的！现在我来扮演甲。");
        assert_eq!(m[2].content, "乙：嗯");
    }

    #[test]
    fn ce_asserts_are_errors() {
        let err = dialogue_messages("S", "甲", "乙：a\n甲：b\n甲：c\n乙：d").unwrap_err();
        assert!(err.contains("lines 2 and 3"), "{err}");
        assert!(dialogue_messages("S", "甲", "乙：a\n甲：b").is_err());
    }

    #[test]
    fn role_system_is_unindented() {
        assert_eq!(
            role_system("{'a': 'b'}", "甲"),
            "{'a': 'b'}\n现在请你扮演一个角色扮演专家。请你根据上述信息扮演甲进行对话。\n"
        );
    }
}
